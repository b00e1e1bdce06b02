// Fingerprints (layout.hpp, table.cpp "Fingerprints"): a lookup ends its probe run at the
// first fingerprint 0 without reading that bucket. These tests build, by hand, the states a
// claimer that died (or stalled) between its claim CAS and its fingerprint store leaves
// behind, and check that every writer that passes such a bucket repairs it before a lookup
// could be misled by it -- each test fails if the corresponding write is left out.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <optional>
#include <random>
#include <thread>
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
  std::uint64_t state(TableHeader* t, std::uint64_t i) const {
    return state_of(m.bucket(t, i).slot->meta);
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
    for (std::uint64_t i = m.home(k, t);; i = next_bucket(i, t->capacity)) {
      const Cell c = read_cell(*m.bucket(t, i).slot);
      if (c.state() != kEmpty) continue;
      EXPECT_TRUE(
          cas128(&m.bucket(t, i).slot->value, c.value, c.meta, k, next_meta(c.meta, kClaimed)));
      EXPECT_EQ(fp(t, i), kFpFree);
      return i;
    }
  }
  /// The fast path's view of the current table now (kept by a test past its pin, as a
  /// Session keeps it).
  FastView view_now() const {
    PinGuard pin(m);
    FastView v;
    EXPECT_TRUE(m.fast_table(&v));
    return v;
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
  const FastView stale = f.view_now();
  ASSERT_EQ(stale.older, 0u);
  std::uint64_t v = 0;
  ASSERT_EQ(f.fast(stale, k, &v), Fast::miss);  // true: k is not in the map yet
  PinGuard pin(f.m);  // keeps `old` mapped and unreclaimed for the stale view
  f.m.maybe_resize(old, false, true);
  ASSERT_NE(f.current(), old);
  f.map.insert(k, 7);  // settles k in old (seals its run's end), then writes the successor
  ASSERT_EQ(f.state(old, z), kClaimed) << "moved, not settled";
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
  const FastView stale = f.view_now();
  PinGuard pin(f.m);
  f.m.maybe_resize(old, false, true);
  f.map.insert(k, 7);  // migrates the whole table (one chunk) first
  ASSERT_EQ(f.state(old, z), kMoved);
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
  const FastView stale = f.view_now();
  PinGuard pin(f.m);
  f.m.maybe_resize(old, false, true);
  f.m.finish_migration();
  for (std::uint64_t i = 0; i < old->capacity; ++i) {
    ASSERT_EQ(f.state(old, i), kSealed);
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
  const std::uint64_t i = r.bucket.index;
  std::uint8_t& byte = f.m.fingerprints(t)[i];
  byte = static_cast<std::uint8_t>(byte == 200 ? 201 : 200);
  const CheckReport rep = f.map.check();
  ASSERT_FALSE(rep.ok);
  EXPECT_NE(rep.problems[0].find("fingerprints that disagree"), std::string::npos)
      << rep.problems[0];
}

// ---- adversarial (second review of Table v2 step 1) --------------------------------------

// A claim by a writer killed between its claim CAS and its fingerprint store, made as a real
// writer makes it: the walk from k's home writes the fingerprint of every claimed bucket it
// passes whose byte reads 0 (probe() with `writer`), then claims the first EMPTY bucket and
// stops. Returns the bucket's index, or nothing if the run ended SEALED or the table is full.
std::optional<std::uint64_t> killed_claim(MapImpl& m, TableHeader* t, std::uint64_t k) {
  PinGuard pin(m);
  std::uint8_t* fps = m.fingerprints(t);
  const std::uint64_t cap = t->capacity;
  for (std::uint64_t i = m.home(k, t), n = 0; n < cap; i = next_bucket(i, cap), ++n) {
    const Cell c = read_cell(*m.bucket(t, i).slot);
    if (c.state() == kEmpty) {
      if (!cas128(&m.bucket(t, i).slot->value, c.value, c.meta, k, next_meta(c.meta, kClaimed)))
        return {};
      return i;
    }
    if (c.state() == kSealed) return {};
    const std::uint64_t key = c.state() == kClaimed ? c.value : load_acquire(*m.bucket(t, i).key);
    if (fps[i] == kFpFree) fps[i] = fingerprint(hash_key(key, m.seed()));
  }
  return {};
}

// Tables of 8 and 16 buckets: find_fast reads one group of 16 bytes (of which a table of 8 has
// only 8) twice, the second time for the part of the run that wrapped past the last bucket.
// Random layouts crowded at the end of the table (runs that wrap), with killed claims among
// the keys, each looked up by find, find_many and a Session (whose view then goes stale: the
// table is grown away and more keys are written), against a model. A miss decided at the
// wrong byte, or a group read past the table, gives a wrong answer here.
TEST(FingerprintsAdversarial, SmallTablesWrapAroundWithKilledClaims) {
  std::mt19937_64 rng(20261130);
  for (const std::uint64_t cap : {std::uint64_t{8}, std::uint64_t{16}}) {
    for (int trial = 0; trial < 150; ++trial) {
      Fixture f(cap);
      TableHeader* t = f.current();
      std::map<std::uint64_t, std::uint64_t> model;
      std::vector<std::uint64_t> probes;
      // Below the load limit (3/4): real inserts do not resize; killed claims are not counted.
      const std::uint64_t real = 1 + rng() % (cap * 3 / 4 - 1);
      const std::uint64_t dead = rng() % (cap - real);
      std::uint64_t next_key = 1 + rng() % 1000000;
      auto key_near_end = [&] {
        // Homes in the last quarter of the table (wrapping runs), sometimes anywhere.
        const std::uint64_t want_home = rng() % 4 == 0 ? rng() % cap : cap - 1 - rng() % (cap / 4);
        for (;; ++next_key) {
          if (f.m.home(next_key, t) == want_home) return next_key++;
        }
      };
      std::uint64_t r = 0, d = 0;
      while (r < real || d < dead) {
        const std::uint64_t k = key_near_end();
        probes.push_back(k);
        if (r < real && (d == dead || rng() % 2 == 0)) {
          ASSERT_TRUE(f.map.insert(k, k * 3));
          model[k] = k * 3;
          ++r;
        } else {
          ASSERT_TRUE(killed_claim(f.m, t, k).has_value());
          ++d;
        }
      }
      ASSERT_EQ(f.current(), t) << "the layout must stay in one table of " << cap;
      for (int extra = 0; extra < 8; ++extra) probes.push_back(key_near_end());  // absent
      auto verify = [&](const char* when, Map::Session* s) {
        std::vector<std::optional<std::uint64_t>> many(probes.size());
        f.map.find_many(probes, many);
        for (std::size_t i = 0; i < probes.size(); ++i) {
          const std::uint64_t k = probes[i];
          const auto it = model.find(k);
          const std::optional<std::uint64_t> want =
              it == model.end() ? std::nullopt : std::optional<std::uint64_t>(it->second);
          ASSERT_EQ(f.map.find(k), want) << when << ": find, cap " << cap << " trial " << trial
                                         << " key " << k << " home " << f.m.home(k, t);
          ASSERT_EQ(many[i], want) << when << ": find_many, cap " << cap << " trial " << trial;
          ASSERT_EQ(s->find(k), want)
              << when << ": Session::find, cap " << cap << " trial " << trial << " key " << k;
        }
      };
      Map::Session s(f.map);
      (void)s.find(0);  // takes its view of t
      verify("in place", &s);
      // t is replaced and migrated while the session keeps its view of it; keys are erased and
      // new ones written (the new ones homed where t's runs were).
      f.m.maybe_resize(t, false, true);
      for (int i = 0; i < 3; ++i) {
        const std::uint64_t k = key_near_end();
        probes.push_back(k);
        ASSERT_TRUE(f.map.insert(k, k * 3));
        model[k] = k * 3;
      }
      if (!model.empty() && rng() % 2 == 0) {
        const std::uint64_t k = model.begin()->first;
        ASSERT_TRUE(f.map.erase(k));
        model.erase(k);
      }
      verify("after the table was replaced", &s);
      ASSERT_TRUE(f.map.check().ok) << f.map.check().problems[0];
    }
  }
}

// A Session made before a bulk replacement (Map::load, snapshot restore) keeps its view of the
// replaced table. While the replacement is under way -- linked and published, its discard of
// the older table's entries not finished -- Map::find already answers from the new content.
// A Session::find after that must not answer from the old one (the contract: "answers exactly
// as Map::find would"). The replaced table is large so that the discard takes a while.
//
// Fails on 317ae76 (and, by the same code path, before fingerprints): the fast path on the
// stale view ends at a LIVE old entry (hit) or at a 0 fingerprint (miss, older == 0 in the
// view) -- replaced entries are never settled in the older table, only discarded by the
// migration, which publish_replace() runs after the publication.
TEST(FingerprintsAdversarial, SessionNeverAnswersOlderThanFindAcrossABulkReplacement) {
  ScopedName name("fp-replace");
  Map map = Map::create(name, {.initial_capacity = 8});
  MapImpl& m = map.impl();
  constexpr std::uint64_t kOld = 200000, kNew = 1000;
  for (std::uint64_t k = 0; k < kOld; ++k) ASSERT_TRUE(map.insert(k, 1));
  std::vector<std::pair<std::uint64_t, std::uint64_t>> kv;
  for (std::uint64_t k = 0; k < kNew; ++k) kv.emplace_back((std::uint64_t{1} << 40) + k, 2);
  std::atomic<int> phase{0};
  std::atomic<std::uint64_t> stale_old{0}, stale_new{0}, checked{0};
  std::string first;
  std::thread reader([&] {
    Map::Session s(map);
    (void)s.find(0);  // the view: the table holding keys [0, kOld)
    phase = 1;
    std::mt19937_64 r(7);
    while (phase.load() != 3) {
      // An old-only key: once find says absent (replaced), the session must too.
      const std::uint64_t o = r() % kOld;
      if (!map.find(o).has_value()) {
        ++checked;
        if (s.find(o).has_value() && stale_old++ == 0) {
          first = "old key " + std::to_string(o) + ": find absent, then Session::find present";
        }
      }
      // A loaded key: once find sees it, the session must too.
      const std::uint64_t n = (std::uint64_t{1} << 40) + r() % kNew;
      if (map.find(n) == 2u) {
        ++checked;
        if (s.find(n) != 2u && stale_new++ == 0) {
          first = "loaded key " + std::to_string(n) + ": find 2, then Session::find absent";
        }
      }
    }
  });
  while (phase.load() != 1) std::this_thread::yield();
  const std::uint64_t t = m.build_table(kv.size());
  m.bulk_put_many(t, kv.data(), kv.size());
  m.publish_replace(t);
  phase = 3;
  reader.join();
  EXPECT_EQ(map.find(0), std::nullopt);
  EXPECT_EQ(map.find((std::uint64_t{1} << 40) + 1), 2u);
  std::fprintf(stderr, "[ replace  ] %llu lookups compared during the replacement\n",
               (unsigned long long)checked.load());
  EXPECT_EQ(stale_old.load() + stale_new.load(), 0u)
      << stale_old.load() << " old and " << stale_new.load()
      << " new keys answered from the replaced table after find had answered from the new "
         "one; first: "
      << first;
}

// Damaged fingerprints (any byte, padding included) must never crash or hang a lookup, a
// write or check(); lookups may answer wrongly, but then check() must say so.
TEST(FingerprintsAdversarial, DamagedFingerprintsNeverCrashOrHangAndCheckSeesWrongAnswers) {
  std::mt19937_64 rng(99);
  int wrong_trials = 0;
  for (const std::uint64_t cap : {std::uint64_t{8}, std::uint64_t{16}, std::uint64_t{64}}) {
    for (int trial = 0; trial < 60; ++trial) {
      Fixture f(cap);
      TableHeader* t = f.current();
      const std::uint64_t n = 1 + rng() % (cap * 3 / 4 - 1);
      std::map<std::uint64_t, std::uint64_t> model;
      for (std::uint64_t i = 0; i < n; ++i) {
        const std::uint64_t k = rng() % 100000;
        f.map.insert_or_assign(k, k + 1);
        model[k] = k + 1;
      }
      ASSERT_EQ(f.current(), t);
      ASSERT_TRUE(f.map.check().ok);
      std::uint8_t* fps = f.m.fingerprints(t);
      const int hits = 1 + static_cast<int>(rng() % 4);
      for (int h = 0; h < hits; ++h) {
        const std::uint64_t i = rng() % fp_bytes(cap);  // padding of a table of 8 too
        const std::uint64_t pick = rng() % 4;
        fps[i] = pick == 0 ? kFpFree : pick == 1 ? kFpSealing : static_cast<std::uint8_t>(rng());
      }
      const bool check_ok = f.map.check().ok;
      bool wrong = false;
      std::vector<std::uint64_t> ks;
      for (const auto& [k, v] : model) ks.push_back(k);
      for (int i = 0; i < 8; ++i) ks.push_back(100000 + rng() % 100000);  // absent
      std::vector<std::optional<std::uint64_t>> many(ks.size());
      f.map.find_many(ks, many);
      Map::Session s(f.map);
      for (std::size_t i = 0; i < ks.size(); ++i) {
        const auto it = model.find(ks[i]);
        const bool present = it != model.end();
        const std::uint64_t value = present ? it->second : 0;
        auto right = [&](const std::optional<std::uint64_t>& got) {
          return got.has_value() == present && (!present || *got == value);
        };
        wrong |= !right(f.map.find(ks[i])) || !right(many[i]) || !right(s.find(ks[i]));
      }
      if (wrong) {
        ++wrong_trials;
        EXPECT_FALSE(check_ok) << "cap " << cap << " trial " << trial
                               << ": lookups answered wrongly, check() saw nothing";
      }
      // Writes go on (perhaps wrongly placed, never stuck): fill past a resize.
      try {
        for (std::uint64_t i = 0; i < cap * 2; ++i) f.map.insert_or_assign(200000 + i, i);
        for (const auto& [k, v] : model) f.map.erase(k);
      } catch (const Error& e) {
        // A damaged segment may refuse a write; it must not crash or hang.
        EXPECT_EQ(e.code(), Errc::corrupt) << e.what();
      }
      (void)f.map.check();
    }
  }
  std::fprintf(stderr, "[ damage   ] %d trials with wrong answers, each reported by check()\n",
               wrong_trials);
  EXPECT_GT(wrong_trials, 0) << "the damage never mattered: the test checks nothing";
}

}  // namespace
}  // namespace shmap::detail
