// StringMap across real processes: the SIGKILL loop of the typed maps (kill_loop.hpp) on
// string keys of 1..60 bytes and checksummed string values of 40..1600 bytes; exact update()
// counters from several processes while another process grows and shrinks the map from
// capacity 8, once with real hashes and once with every key hashed to one of a few values (so
// that records holding several keys are replaced under contention); and the same with struct
// values under string keys (TypedMap<std::string, V>).
//
// Every value names its key and version and ends with a checksum of the bytes before it: a
// torn value, a record reused while a reader still read it, or another key's value is caught
// by whoever reads it. Seeds are printed; replay with SHMAP_TEST_SEED=<n>. SHMAP_SOAK=N runs N
// times more rounds.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kill_loop.hpp"
#include "mp_util.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"

namespace shmap::test::mp {
namespace {

using victims::fnv;
using victims::mix;
using victims::Report;

/// The string key of the kill loop's uint64 key k: its digits, then k % 50 filler bytes.
std::string skey(std::uint64_t k) { return std::to_string(k) + std::string(k % 50, '/'); }
std::uint64_t key_of(std::string_view s) {
  std::uint64_t k = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') break;
    k = k * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return k;
}

/// A string value that names its key and version: "k=<key> v=<version> " + filler of a length
/// that depends on both + " sum=<16 hex digits>" (FNV-1a of everything before " sum=").
struct SVal {
  std::string s;

  static SVal make(std::uint64_t k, std::uint64_t ver) {
    std::string s = "k=" + std::to_string(k) + " v=" + std::to_string(ver) + " ";
    std::uint64_t x = mix(k * 131 + ver);
    // One value in 16 takes a large record (4 KiB .. 196 KiB), the rest small ones.
    const std::size_t fill = x % 16 == 0 ? 4000 + (x >> 8) % 196000 : 8 + x % 1560;
    for (std::size_t i = 0; i < fill; ++i) {
      if (i % 8 == 0) x = mix(x);
      s += static_cast<char>('a' + (x >> (8 * (i % 8))) % 26);
    }
    char sum[32];
    std::snprintf(sum, sizeof sum, " sum=%016" PRIx64, fnv(s.data(), s.size()));
    return SVal{s + sum};
  }
  std::uint64_t field(const char* name) const {
    const std::size_t at = s.find(name);
    return at == std::string::npos ? UINT64_MAX : key_of(std::string_view(s).substr(at + 2));
  }
  std::uint64_t key() const { return s.rfind("k=", 0) == 0 ? field("k=") : UINT64_MAX; }
  std::uint64_t version() const {
    return field(" v=") == UINT64_MAX ? 0 : key_of(s.substr(s.find(" v=") + 3));
  }
  std::string verify(std::uint64_t k) const {
    const std::size_t at = s.rfind(" sum=");
    char want[32];
    if (at != std::string::npos)
      std::snprintf(want, sizeof want, " sum=%016" PRIx64, fnv(s.data(), at));
    if (at == std::string::npos || s.compare(at, std::string::npos, want) != 0) {
      return "torn value under key " + std::to_string(k) + " (" + std::to_string(s.size()) +
             " bytes, checksum mismatch)";
    }
    if (key() != k)
      return "the value of key " + std::to_string(key()) + " under key " + std::to_string(k);
    if (s != make(k, version()).s) return "fill mismatch under key " + std::to_string(k);
    return {};
  }
};

/// A StringMap seen as uint64 -> V (the kill loop's interface), its keys made by Keys:
/// Keys::key(k) the string of uint64 key k, Keys::back(s) the uint64 key of a string (a key
/// no one wrote gives one whose check fails).
template <class V, class Keys>
class StringsAs {
 public:
  static StringsAs create(const std::string& n, const Options& o) {
    return StringsAs(StringMap::create(n, o));
  }
  static StringsAs open(const std::string& n) { return StringsAs(StringMap::open(n)); }
  std::optional<V> find(std::uint64_t k) const {
    auto v = m_.find(Keys::key(k));
    if (!v) return std::nullopt;
    return V{std::move(*v)};
  }
  bool insert(std::uint64_t k, const V& v) { return m_.insert(Keys::key(k), v.s); }
  bool insert_or_assign(std::uint64_t k, const V& v) {
    return m_.insert_or_assign(Keys::key(k), v.s);
  }
  bool erase(std::uint64_t k) { return m_.erase(Keys::key(k)); }
  bool compare_exchange(std::uint64_t k, const V& e, const V& d) {
    return m_.compare_exchange(Keys::key(k), e.s, d.s);
  }
  template <class F>
  bool update(std::uint64_t k, F&& f) {
    return m_.update(Keys::key(k), [&f](std::string& s) {
      V v{s};
      f(v);
      s = std::move(v.s);
    });
  }
  template <class F>
  void for_each(F&& f) const {
    m_.for_each(
        [&f](std::string_view k, std::string_view v) { f(Keys::back(k), V{std::string(v)}); });
  }
  /// Entries of a short key whose value has up to 7 bytes: inline, no record (entry_list.hpp).
  std::uint64_t entries_without_record() const {
    std::uint64_t n = 0;
    m_.for_each([&n](std::string_view k, std::string_view v) {
      const bool short_key = k.size() <= 7 || (k.size() == 8 && k[7] == 0);
      n += short_key && v.size() <= 7;
    });
    return n;
  }
  std::size_t size() const { return m_.size(); }
  Stats stats() const { return m_.stats(); }
  CheckReport check(RecordStats* rs) const { return m_.check(rs); }
  void compact() { m_.compact(); }

 private:
  explicit StringsAs(StringMap m) : m_(std::move(m)) {}
  StringMap m_;
};

/// The keys of the first kill loop: digits and filler (skey), 1..60 bytes.
struct DigitKeys {
  static std::string key(std::uint64_t k) { return skey(k); }
  static std::uint64_t back(std::string_view s) {
    return skey(key_of(s)) == s ? key_of(s) : UINT64_MAX;
  }
};
using Strings = StringsAs<SVal, DigitKeys>;

/// The kill loop's uint64 keys (victims', the churner's, the reuse pass's) as a 22-bit id,
/// and back; a key outside those ranges aborts (the parent sees SIGABRT).
std::uint64_t short_id(std::uint64_t k) {
  const std::uint64_t top = k >> 40, low = k & ((std::uint64_t{1} << 40) - 1);
  if (k >> 56 == 7 && (k & ((std::uint64_t{1} << 56) - 1)) < (1u << 22)) {
    return 1u << 22 | (k & ((1u << 22) - 1));  // the churner's
  }
  if (k >> 62 == 1 && (k & ((std::uint64_t{1} << 62) - 1)) < (1u << 22)) {
    return 2u << 22 | (k & ((1u << 22) - 1));  // the reuse pass's
  }
  if (top >= 100 && top < 100 + 1024 && low < 4096) return (top - 100) << 12 | low;  // a victim's
  std::abort();
}
std::uint64_t short_key_of(std::uint64_t id) {
  switch (id >> 22) {
    case 1:
      return (std::uint64_t{7} << 56) + (id & ((1u << 22) - 1));
    case 2:
      return (std::uint64_t{1} << 62) + (id & ((1u << 22) - 1));
    default:
      return (100 + (id >> 12)) << 40 | (id & 4095);
  }
}
/// A key of 3..8 bytes (every one short enough to be its own bucket word: an 8-byte one ends
/// in 0): the id's 3 bytes, then id % 6 zero bytes.
std::string short_key(std::uint64_t k) {
  const std::uint64_t id = short_id(k);
  std::string s(3 + id % 6, '\0');
  std::memcpy(s.data(), &id, 3);
  return s;
}
std::uint64_t key_of_short(std::string_view s) {
  std::uint64_t id = 0;
  if (s.size() < 3) return UINT64_MAX;
  std::memcpy(&id, s.data(), 3);
  return short_key(short_key_of(id)) == s ? short_key_of(id) : UINT64_MAX;
}

/// A value that is, by its key and version, either 7 bytes (an inline entry under a short
/// key: id, version and a checksum byte) or an SVal (a record): a key's writes go back and
/// forth between the two, and a reader checks whichever it sees.
struct MVal {
  std::string s;

  static bool inline_form(std::uint64_t k, std::uint64_t ver) { return mix(k * 977 + ver) % 2; }
  static MVal make(std::uint64_t k, std::uint64_t ver) {
    if (!inline_form(k, ver)) return MVal{SVal::make(k, ver).s};
    const std::uint64_t id = short_id(k), v = ver & 0xffffff;
    std::string s(7, '\0');
    std::memcpy(s.data(), &id, 3);
    std::memcpy(s.data() + 3, &v, 3);
    s[6] = static_cast<char>(fnv(s.data(), 6));
    return MVal{s};
  }
  std::uint64_t key() const {
    if (s.size() != 7) return SVal{s}.key();
    std::uint64_t id = 0;
    std::memcpy(&id, s.data(), 3);
    return short_key_of(id);
  }
  std::uint64_t version() const {
    if (s.size() != 7) return SVal{s}.version();
    std::uint64_t v = 0;
    std::memcpy(&v, s.data() + 3, 3);
    return v;
  }
  std::string verify(std::uint64_t k) const {
    if (s.size() != 7) return SVal{s}.verify(k);
    if (static_cast<char>(fnv(s.data(), 6)) != s[6]) {
      return "torn 7-byte value under key " + std::to_string(k);
    }
    if (key() != k)
      return "the 7-byte value of key " + std::to_string(key()) + " under key " + std::to_string(k);
    if (s != make(k, version()).s) return "a 7-byte value its version would not make";
    return {};
  }
};

/// The keys of the second: 3..8 bytes, every one short (short_key).
struct ShortKeys {
  static std::string key(std::uint64_t k) { return short_key(k); }
  static std::uint64_t back(std::string_view s) { return key_of_short(s); }
};
/// Its entries are inline or in records as their values say.
using ShortStrings = StringsAs<MVal, ShortKeys>;

class StringKillTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 200; }
};

TEST_F(StringKillTest, KilledWritersOfStringValuesLoseNothingAndTearNothing) {
  victims::kill_loop<SVal, Strings>((kSanitized ? 4 : 12) * soak(), "strings");
}

TEST_F(StringKillTest, KilledWritersOfShortEntriesLoseNothingAndTearNothing) {
  // Short keys whose values go back and forth between 7 bytes (inline in the bucket) and
  // records: every write replaces an inline entry with a record, a record with an inline
  // entry, or one of either with its like.
  victims::kill_loop<MVal, ShortStrings>((kSanitized ? 4 : 12) * soak(), "short strings");
}

/// Makes every key hash to one of `n` values in this process and the children it forks.
struct Colliding {
  explicit Colliding(std::uint64_t n) {
    buckets = n;
    StringMap::hash_for_test = [](std::string_view k) { return fnv(k.data(), k.size()) % buckets; };
  }
  ~Colliding() { StringMap::hash_for_test = nullptr; }
  static inline std::uint64_t buckets = 1;
};

void counters_across_processes(bool collide) {
  std::optional<Colliding> c;
  if (collide) c.emplace(128);  // ~12 keys a record; the table still resizes
  const std::uint64_t seed = test_seed();
  ScopedName name(collide ? "scount-coll" : "scount");
  auto m = StringMap::create(name, {.initial_capacity = 8});
  constexpr int kProcs = 4, kCounters = 5;
  for (int i = 0; i < kCounters; ++i) ASSERT_TRUE(m.insert("counter:" + std::to_string(i), "0"));
  const std::uint64_t per = 20000 * soak() / kScale;
  Shared<Report> rep;
  Shared<std::atomic<bool>> stop(false);
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto s = StringMap::open(name);
      if (!gate.wait()) return false;
      Rng rng(seed + p);
      for (std::uint64_t i = 0; i < per; ++i) {
        const std::string k = "counter:" + std::to_string(rng.below(kCounters));
        const bool ok = s.update(k, [](std::string& v) { v = std::to_string(std::stoull(v) + 1); });
        CHILD_CHECK(ok, "update found %s absent", k.c_str());
      }
      return true;
    }));
  }
  const pid_t churner = fork_child([&] {
    auto s = StringMap::open(name);
    if (!gate.wait()) return false;
    while (!stop->load()) {
      for (int i = 0; i < 1500; ++i)
        CHILD_CHECK(s.insert("churn:" + std::to_string(i), std::string(i % 90, 'c')),
                    "churn insert");
      for (int i = 0; i < 1500; ++i)
        CHILD_CHECK(s.erase("churn:" + std::to_string(i)), "churn erase");
    }
    return true;
  });
  const std::uint64_t resizes0 = m.stats().resizes;
  gate.release();
  for (int p = 0; p < kProcs; ++p) {
    const auto r = wait_for(pids[p], seconds(90 * kSlow * soak()));
    EXPECT_TRUE(r.ok()) << "counter process " << p << " " << r.describe() << " (seed " << seed
                        << ")";
  }
  stop->store(true);
  const auto rc = wait_for(churner, seconds(30 * kSlow));
  EXPECT_TRUE(rc.ok()) << "churner " << rc.describe();
  std::uint64_t total = 0;
  for (int i = 0; i < kCounters; ++i)
    total += std::stoull(m.find("counter:" + std::to_string(i)).value_or("0"));
  EXPECT_EQ(total, kProcs * per) << "lost or doubled increments (seed " << seed << ")";
  EXPECT_GT(m.stats().resizes, resizes0 + 2) << "the churner did not resize the map";
  EXPECT_EQ(m.size(), std::size_t{kCounters});
  RecordStats rs;
  const auto report = m.check(&rs);
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
}

/// A struct value for TypedMap<std::string, Tally>: per-process counts and their checksum.
struct Tally {
  std::uint64_t total;
  std::uint64_t by_proc[4];
  std::uint64_t sum;
  std::uint64_t compute() const { return fnv(this, offsetof(Tally, sum)); }
};

void struct_counters_across_processes() {
  const std::uint64_t seed = test_seed();
  ScopedName name("stally");
  using M = TypedMap<std::string, Tally>;
  auto m = M::create(name, {.initial_capacity = 8});
  constexpr int kProcs = 4, kKeys = 6;
  auto key = [](std::uint64_t i) {
    return "instrument/" + std::string(i * 7, '.') + std::to_string(i);
  };
  Tally zero{};
  zero.sum = zero.compute();
  for (int i = 0; i < kKeys; ++i) ASSERT_TRUE(m.insert(key(i), zero));
  const std::uint64_t per = 20000 * soak() / kScale;
  Shared<std::atomic<bool>> stop(false);
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto c = M::open(name);
      if (!gate.wait()) return false;
      Rng rng(seed + p);
      for (std::uint64_t i = 0; i < per; ++i) {
        const bool ok = c.update(key(rng.below(kKeys)), [p](Tally& v) {
          ++v.total;
          ++v.by_proc[p];
          v.sum = v.compute();
        });
        CHILD_CHECK(ok, "update found a tally absent");
        if (i % 64 == 0) {
          const auto v = c.find(key(rng.below(kKeys)));
          CHILD_CHECK(v && v->sum == v->compute(), "a torn or missing tally");
        }
      }
      return true;
    }));
  }
  const pid_t churner = fork_child([&] {
    auto c = M::open(name);
    if (!gate.wait()) return false;
    while (!stop->load()) {
      for (int i = 0; i < 1000; ++i)
        CHILD_CHECK(c.insert("tmp/" + std::to_string(i), zero), "churn insert");
      for (int i = 0; i < 1000; ++i)
        CHILD_CHECK(c.erase("tmp/" + std::to_string(i)), "churn erase");
    }
    return true;
  });
  const std::uint64_t resizes0 = m.stats().resizes;
  gate.release();
  for (int p = 0; p < kProcs; ++p) {
    const auto r = wait_for(pids[p], seconds(90 * kSlow * soak()));
    EXPECT_TRUE(r.ok()) << "process " << p << " " << r.describe() << " (seed " << seed << ")";
  }
  stop->store(true);
  EXPECT_TRUE(wait_for(churner, seconds(30 * kSlow)).ok());
  std::uint64_t total = 0, by[kProcs] = {};
  for (int i = 0; i < kKeys; ++i) {
    const auto v = m.find(key(i));
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(v->sum, v->compute()) << "torn tally " << i;
    total += v->total;
    for (int p = 0; p < kProcs; ++p) by[p] += v->by_proc[p];
  }
  EXPECT_EQ(total, kProcs * per) << "lost or doubled updates (seed " << seed << ")";
  for (int p = 0; p < kProcs; ++p) EXPECT_EQ(by[p], per) << p;
  EXPECT_GT(m.stats().resizes, resizes0 + 2) << "the churner did not resize the map";
  EXPECT_EQ(m.size(), std::size_t{kKeys});
  RecordStats rs;
  const auto report = m.check(&rs);
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
}

/// A counter's value whose length switches across the 7-byte line of short entries
/// (entry_list.hpp) at every increment: odd counts are their digits (inline in the bucket),
/// even ones their digits and "+pad" (a record). Parsed back: the count, or UINT64_MAX if the
/// value is not such a value.
std::string switching(std::uint64_t n) { return std::to_string(n) + (n % 2 == 0 ? "+pad" : ""); }
std::uint64_t switching_count(std::string_view v) {
  const std::uint64_t n = key_of(v);
  return v == switching(n) ? n : UINT64_MAX;
}

void switching_counters_across_processes() {
  // Short keys whose values go between inline entries and records on every update, from
  // several processes, with a churner resizing from capacity 8 and readers in other processes
  // -- read-write (the unpinned fast path) and read-only (validated copies) -- that check each
  // value parses and that no counter ever goes back (a stale read would).
  const std::uint64_t seed = test_seed();
  ScopedName name("sswitch");
  auto m = StringMap::create(name, {.initial_capacity = 8});
  constexpr int kProcs = 3, kCounters = 4;
  auto key = [](std::uint64_t i) { return "c" + std::to_string(i); };
  for (int i = 0; i < kCounters; ++i) ASSERT_TRUE(m.insert(key(i), switching(0)));
  const std::uint64_t per = 100000 * soak() / kScale;
  Shared<std::atomic<bool>> stop(false);
  // Each counter's value some update completed: a read that starts after it must not see less.
  Shared<std::array<std::atomic<std::uint64_t>, kCounters>> floor;
  for (auto& f : *floor) f.store(0);
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto s = StringMap::open(name);
      if (!gate.wait()) return false;
      Rng rng(seed + p);
      for (std::uint64_t i = 0; i < per; ++i) {
        const std::string k = key(rng.below(kCounters));
        bool parsed = true;
        std::uint64_t wrote = 0;
        const bool ok = s.update(k, [&](std::string& v) {
          const std::uint64_t n = switching_count(v);
          parsed = n != UINT64_MAX;
          wrote = n + 1;
          v = switching(wrote);
        });
        auto& f = (*floor)[k[1] - '0'];
        for (std::uint64_t x = f.load(); x < wrote && !f.compare_exchange_weak(x, wrote);) {
        }
        CHILD_CHECK(ok && parsed, "update of %s: found %s", k.c_str(),
                    ok ? "a torn value" : "absent");
      }
      return true;
    }));
  }
  std::vector<pid_t> readers;
  for (const bool ro : {false, true}) {
    readers.push_back(fork_child([&, ro] {
      auto s = StringMap::open(name, {.read_only = ro});
      if (!gate.wait()) return false;
      std::uint64_t last[kCounters] = {};
      while (!stop->load()) {
        for (int i = 0; i < kCounters; ++i) {
          const std::uint64_t lo = (*floor)[i].load();
          const auto v = s.find(key(i));
          CHILD_CHECK(v.has_value(), "%s absent (read-only %d)", key(i).c_str(), ro);
          const std::uint64_t n = switching_count(*v);
          CHILD_CHECK(n != UINT64_MAX, "%s torn: %zu bytes (read-only %d)", key(i).c_str(),
                      v->size(), ro);
          CHILD_CHECK(n >= last[i], "%s went back from %" PRIu64 " to %" PRIu64 " (read-only %d)",
                      key(i).c_str(), last[i], n, ro);
          CHILD_CHECK(n >= lo,
                      "%s read %" PRIu64 " after an update to %" PRIu64 " completed (read-only %d)",
                      key(i).c_str(), n, lo, ro);
          last[i] = n;
        }
      }
      return true;
    }));
  }
  const pid_t churner = fork_child([&] {
    auto s = StringMap::open(name);
    if (!gate.wait()) return false;
    while (!stop->load()) {
      for (int i = 0; i < 1500; ++i)
        CHILD_CHECK(s.insert("t" + std::to_string(i), std::string(i % 12, 'c')), "churn insert");
      for (int i = 0; i < 1500; ++i) CHILD_CHECK(s.erase("t" + std::to_string(i)), "churn erase");
    }
    return true;
  });
  const std::uint64_t resizes0 = m.stats().resizes;
  gate.release();
  for (int p = 0; p < kProcs; ++p) {
    const auto r = wait_for(pids[p], seconds(90 * kSlow * soak()));
    EXPECT_TRUE(r.ok()) << "counter process " << p << " " << r.describe() << " (seed " << seed
                        << ")";
  }
  stop->store(true);
  for (const pid_t r : readers) {
    const auto rr = wait_for(r, seconds(30 * kSlow));
    EXPECT_TRUE(rr.ok()) << "reader " << rr.describe();
  }
  EXPECT_TRUE(wait_for(churner, seconds(30 * kSlow)).ok());
  std::uint64_t total = 0;
  for (int i = 0; i < kCounters; ++i) total += switching_count(m.find(key(i)).value_or(""));
  EXPECT_EQ(total, kProcs * per) << "lost or doubled increments (seed " << seed << ")";
  EXPECT_GT(m.stats().resizes, resizes0 + 2) << "the churner did not resize the map";
  EXPECT_EQ(m.size(), std::size_t{kCounters});
  RecordStats rs;  // not compacted first: compact() would retire a leaked record
  const auto report = m.check(&rs);
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live + rs.inline_entries, std::size_t{kCounters});
}

/// Runs `write` in a child that dies (exit 42, no unwinding) when `hook` first fires.
bool dies_in(void (*&hook)(), const std::function<void()>& write) {
  const ChildResult r = run_child(
      [&] {
        hook = [] { ::_exit(42); };
        write();
        return false;  // the hook never ran
      },
      std::chrono::seconds(30 * kSlow));
  return r.exited && r.code == 42;
}

class StringDeathTest : public MpTest {};

TEST_F(StringDeathTest, AWriterKilledAfterReplacingARecordByAShortEntryLeaksOnlyThatRecord) {
  // Writers die right after the CAS that replaced a record with an inline entry (a value
  // shortened to 7 bytes; a multimap key's second value erased), before they retired the
  // record or counted: the entry reads whole, size() is exact once the dead slot is freed,
  // check() counts the record leaked -- exactly it, the inline entry no record -- and
  // compact() gives it back.
  ScopedName n("die-inline"), mn("die-inline-mm");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  auto mm = StringMultimap::create(mn, {.initial_capacity = 8});
  ASSERT_TRUE(m.insert("k", "a value in a record"));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(m.insert("o" + std::to_string(i), "x"));
  mm.insert("k", "a");
  mm.insert("k", "b");
  mm.insert("j", "c");
  ASSERT_TRUE(dies_in(detail::MapImpl::after_write_cas_for_test, [&] {
    auto c = StringMap::open(n);
    c.insert_or_assign("k", "short");
  }));
  ASSERT_TRUE(dies_in(detail::MapImpl::after_write_cas_for_test, [&] {
    auto c = StringMultimap::open(mn);
    c.erase("k", "b");
  }));
  EXPECT_EQ(m.find("k"), "short");
  EXPECT_EQ(mm.find("k"), std::vector<std::string>{"a"});
  EXPECT_GE(m.clear_stale_handles(), 1u);
  EXPECT_GE(mm.clear_stale_handles(), 1u);
  EXPECT_EQ(m.size(), 21u);
  EXPECT_EQ(mm.size(), 2u) << "the dead writer's -1, applied when its slot was freed";
  RecordStats rs;
  EXPECT_FALSE(m.check(&rs).ok) << "a leaked record";
  EXPECT_EQ(rs.leaked, 1u) << "the record the dead writer replaced and never retired";
  EXPECT_EQ(rs.live, 0u);
  EXPECT_EQ(rs.inline_entries, 21u);
  EXPECT_FALSE(mm.check(&rs).ok) << "a leaked record";
  EXPECT_EQ(rs.leaked, 1u);
  EXPECT_EQ(rs.live, 0u);
  EXPECT_EQ(rs.inline_entries, 2u);
  m.compact();
  mm.compact();
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_TRUE(mm.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(m.size(), 21u);
  EXPECT_EQ(mm.size(), 2u);
}

class StringMpTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 150; }
};

TEST_F(StringMpTest, UpdateCountersAreExactAcrossProcesses) { counters_across_processes(false); }
TEST_F(StringMpTest, UpdateCountersOnCollidingKeysAreExactAcrossProcesses) {
  counters_across_processes(true);
}
TEST_F(StringMpTest, CountersSwitchingBetweenShortEntriesAndRecordsAreExactAndNeverGoBack) {
  switching_counters_across_processes();
}
TEST_F(StringMpTest, StructValuesUnderStringKeysAreExactAcrossProcesses) {
  struct_counters_across_processes();
}

}  // namespace
}  // namespace shmap::test::mp
