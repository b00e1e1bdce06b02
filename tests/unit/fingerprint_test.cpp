// Fingerprints (layout.hpp, table.cpp "Fingerprints"): a lookup ends its probe run at the
// first fingerprint 0 without reading that bucket. These tests build, by hand, the states a
// claimer that died (or stalled) between its claim CAS and its fingerprint store leaves
// behind, and check that every writer that passes such a bucket repairs it before a lookup
// could be misled by it -- each test fails if the corresponding write is left out.
#include <gtest/gtest.h>

#include <vector>

#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::detail {
namespace {

using test::ScopedName;

struct Fixture {
  explicit Fixture(std::size_t capacity = 64)
      : map(Map::create(name, {.initial_capacity = capacity})) {}
  ScopedName name{"fp"};
  Map map;
  MapImpl& m = map.impl();

  TableHeader* current() const { return m.table(m.header().current_table.load()); }
  std::uint64_t index_of(TableHeader* t, const Bucket* b) const {
    return static_cast<std::uint64_t>(b - m.buckets(t));
  }
  std::uint8_t fp(TableHeader* t, std::uint64_t i) const { return m.fingerprints(t)[i]; }
  /// n keys (other than `avoid`) whose home in t is `home`.
  std::vector<std::uint64_t> keys_at(TableHeader* t, std::uint64_t home, std::size_t n,
                                     std::uint64_t avoid = 0) const {
    std::vector<std::uint64_t> out;
    for (std::uint64_t k = 1; out.size() < n; ++k) {
      if (k != avoid && m.home(k, t) == home) out.push_back(k);
    }
    return out;
  }
  /// What a claimer that died right after its claim CAS leaves: the bucket CLAIMED for k,
  /// its fingerprint still 0. Returns the bucket's index.
  std::uint64_t dead_claim(TableHeader* t, std::uint64_t k) {
    PinGuard pin(m);
    Bucket* b = m.buckets(t);
    for (std::uint64_t i = m.home(k, t);; i = (i + 1) & (t->capacity - 1)) {
      const Cell c = read_cell(b[i]);
      if (c.state() != kEmpty) continue;
      EXPECT_TRUE(cas128(&b[i].value, c.value, c.meta, k, next_meta(c.meta, kClaimed)));
      EXPECT_EQ(fp(t, i), kFpFree);
      return i;
    }
  }
  /// The fast path's answer for k against the view ft.
  Fast fast(const FastView& ft, std::uint64_t k, std::uint64_t* v) const {
    return find_fast(ft, k, hash_key(k, m.seed()), v);
  }
};

// A key claimed beyond a dead claimer's bucket: its claimer must write that bucket's
// fingerprint first, or the fast path would stop there and miss an acknowledged key.
TEST(Fingerprints, ClaimerBeyondADeadClaimWritesItsFingerprintFirst) {
  Fixture f;
  TableHeader* t = f.current();
  const std::uint64_t home = 17;
  const auto keys = f.keys_at(t, home, 2);
  const std::uint64_t z = f.dead_claim(t, keys[0]);
  ASSERT_EQ(z, home);
  f.map.insert(keys[1], 42);  // lands beyond z
  EXPECT_EQ(f.fp(t, z), fingerprint(hash_key(keys[0], f.m.seed())))
      << "the writer passed the dead claim without writing its fingerprint";
  PinGuard pin(f.m);
  FastView ft;
  ASSERT_TRUE(f.m.fast_table(&ft));
  std::uint64_t v = 0;
  EXPECT_EQ(f.fast(ft, keys[1], &v), Fast::hit);
  EXPECT_EQ(v, 42u);
  // The dead claim itself holds no value: the fast path sends it to the slow path, which
  // answers absent.
  EXPECT_EQ(f.fast(ft, keys[0], &v), Fast::slow);
  EXPECT_FALSE(f.map.find(keys[0]));
}

// A writer of the dead claimer's own key finds the bucket CLAIMED for it and fills it: it must
// write the fingerprint before the value, or the key would be LIVE and invisible to lookups.
TEST(Fingerprints, WriterOfADeadClaimersKeyWritesTheFingerprintBeforeTheValue) {
  Fixture f;
  TableHeader* t = f.current();
  const std::uint64_t k = 5;
  const std::uint64_t z = f.dead_claim(t, k);
  EXPECT_TRUE(f.map.insert(k, 9));  // the claim held no value: a new key
  EXPECT_EQ(f.fp(t, z), fingerprint(hash_key(k, f.m.seed())));
  EXPECT_EQ(f.map.find(k), 9u);
  EXPECT_EQ(f.map.size(), 1u);
  EXPECT_TRUE(f.map.check().ok);
}

// A reader still using the view of a table that has since been replaced (a Session's view,
// or one taken just before the successor was linked) stops at a fingerprint 0. A writer that
// puts a key into the successor first settles it in the older table: that walk must write
// the fingerprints of the dead claims it passes before it seals the run's end -- otherwise
// the old view answers "absent" for a key that is in the map. (Capacity 1024 and home 600:
// the two chunks the write migrates first are buckets 0-127, so the run is settled, not
// migrated.)
TEST(Fingerprints, SettleWritesFingerprintsBeforeItSealsTheRun) {
  Fixture f(1024);
  TableHeader* old = f.current();
  const std::uint64_t home = 600;
  const auto keys = f.keys_at(old, home, 2);
  const std::uint64_t k = keys[1];
  const std::uint64_t z = f.dead_claim(old, keys[0]);
  FastView stale;
  {
    PinGuard pin(f.m);
    ASSERT_TRUE(f.m.fast_table(&stale));
    ASSERT_EQ(stale.older, 0u);
  }
  std::uint64_t v = 0;
  ASSERT_EQ(f.fast(stale, k, &v), Fast::miss);  // true: k is not in the map yet
  PinGuard pin(f.m);  // keeps `old` mapped and unreclaimed for the stale view
  f.m.maybe_resize(old, false, true);
  ASSERT_NE(f.current(), old);
  f.map.insert(k, 7);  // settles k in old (seals its run's end), then writes the successor
  ASSERT_EQ(state_of(f.m.buckets(old)[z].meta), kClaimed) << "moved, not settled";
  EXPECT_EQ(f.fp(old, z), fingerprint(hash_key(keys[0], f.m.seed())));
  EXPECT_EQ(f.fp(old, z + 1), kFpSealing);
  EXPECT_NE(f.fast(stale, k, &v), Fast::miss) << "the stale view misses a key in the map";
  EXPECT_EQ(f.map.find(k), 7u);
}

// The same when migration reaches the dead claim first: moving a CLAIMED bucket writes its
// fingerprint before the bucket says MOVED.
TEST(Fingerprints, MigrationWritesTheFingerprintOfADeadClaimItMoves) {
  Fixture f;
  TableHeader* old = f.current();
  const std::uint64_t home = 40;
  const auto keys = f.keys_at(old, home, 2);
  const std::uint64_t k = keys[1];
  const std::uint64_t z = f.dead_claim(old, keys[0]);
  FastView stale;
  {
    PinGuard pin(f.m);
    ASSERT_TRUE(f.m.fast_table(&stale));
  }
  PinGuard pin(f.m);
  f.m.maybe_resize(old, false, true);
  f.map.insert(k, 7);  // migrates the whole table (one chunk) first
  ASSERT_EQ(state_of(f.m.buckets(old)[z].meta), kMoved);
  EXPECT_EQ(f.fp(old, z), fingerprint(hash_key(keys[0], f.m.seed())));
  std::uint64_t v = 0;
  EXPECT_NE(f.fast(stale, k, &v), Fast::miss) << "the stale view misses a key in the map";
  EXPECT_EQ(f.map.find(k), 7u);
}

// Migration seals an EMPTY bucket by writing fingerprint 1 first: a stale view that reaches
// it goes to the slow path instead of deciding "absent" from the old table.
TEST(Fingerprints, MigrationMarksTheBucketsItSeals) {
  Fixture f;
  TableHeader* old = f.current();
  FastView stale;
  {
    PinGuard pin(f.m);
    ASSERT_TRUE(f.m.fast_table(&stale));
  }
  PinGuard pin(f.m);
  f.m.maybe_resize(old, false, true);
  f.m.finish_migration();
  for (std::uint64_t i = 0; i < old->capacity; ++i) {
    ASSERT_EQ(state_of(f.m.buckets(old)[i].meta), kSealed);
    EXPECT_EQ(f.fp(old, i), kFpSealing) << "bucket " << i;
  }
  f.map.insert(3, 4);
  std::uint64_t v = 0;
  EXPECT_EQ(f.fast(stale, 3, &v), Fast::slow);
  EXPECT_EQ(f.map.find(3), 4u);
}

// Bulk loads (snapshots) write fingerprints too: every loaded key is found by the fast path.
TEST(Fingerprints, BulkLoadedKeysAreFoundByTheFastPath) {
  Fixture f;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> kv;
  for (std::uint64_t i = 0; i < 5000; ++i) kv.emplace_back(i * 7919, i);
  const std::uint64_t t = f.m.build_table(kv.size());
  f.m.bulk_put_many(t, kv.data(), kv.size());
  f.m.publish_replace(t);
  PinGuard pin(f.m);
  FastView ft;
  ASSERT_TRUE(f.m.fast_table(&ft));
  for (const auto& [k, val] : kv) {
    std::uint64_t v = 0;
    ASSERT_EQ(f.fast(ft, k, &v), Fast::hit) << k;
    ASSERT_EQ(v, val);
  }
}

// check() reads every fingerprint against its bucket: a damaged one (which could make
// lookups miss a key) is reported.
TEST(Fingerprints, CheckReportsADamagedFingerprint) {
  Fixture f;
  for (std::uint64_t i = 0; i < 20; ++i) f.map.insert(i, i);
  ASSERT_TRUE(f.map.check().ok);
  TableHeader* t = f.current();
  const ProbeResult r = f.m.probe(t, 11, false);
  ASSERT_EQ(r.kind, Probe::found);
  const std::uint64_t i = f.index_of(t, r.bucket);
  std::uint8_t& byte = f.m.fingerprints(t)[i];
  byte = static_cast<std::uint8_t>(byte == 200 ? 201 : 200);
  const CheckReport rep = f.map.check();
  ASSERT_FALSE(rep.ok);
  EXPECT_NE(rep.problems[0].find("fingerprints that disagree"), std::string::npos)
      << rep.problems[0];
}

}  // namespace
}  // namespace shmap::detail
