// TypedMap across real processes: exact update() counters from several processes, a SIGKILL
// loop on writers of checksummed record values (64 to 300 bytes) through growth and shrink
// with reader processes checking every value they see, and small-key churn from capacity 8 with
// struct values, checked exactly against per-key ownership.
//
// Every value carries its key, a version and a checksum over its own bytes: a torn value (a mix
// of two writes), a record reused while a reader still copied it, or a record of another key
// is caught by whoever reads it. Seeds are printed; replay with SHMAP_TEST_SEED=<n>.
// SHMAP_SOAK=N runs N times more rounds.
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "mp_util.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::test::mp {
namespace {

std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::uint64_t fnv(const void* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

/// A value of N bytes (alignment 1, no padding: every byte is checksummed) that names its key
/// and version and ends with a checksum over the bytes before it.
template <std::size_t N>
struct Rec {
  static_assert(N >= 32);
  unsigned char b[N];

  std::uint64_t word(std::size_t at) const {
    std::uint64_t w;
    std::memcpy(&w, b + at, 8);
    return w;
  }
  std::uint64_t key() const { return word(0); }
  std::uint64_t version() const { return word(8); }  // 0 never stored
  std::uint64_t sum() const { return word(N - 8); }

  static Rec make(std::uint64_t k, std::uint64_t ver) {
    Rec r;
    std::memcpy(r.b, &k, 8);
    std::memcpy(r.b + 8, &ver, 8);
    std::uint64_t s = mix(k * 31 + ver);
    for (std::size_t i = 16; i < N - 8; ++i) {
      if (i % 8 == 0) s = mix(s);
      r.b[i] = static_cast<unsigned char>(s >> (8 * (i % 8)));
    }
    const std::uint64_t sum = fnv(r.b, N - 8);
    std::memcpy(r.b + N - 8, &sum, 8);
    return r;
  }
  /// "" if whole and of key k.
  std::string verify(std::uint64_t k) const {
    if (sum() != fnv(b, N - 8)) {
      return "torn value under key " + std::to_string(k) + " (checksum mismatch; key field " +
             std::to_string(key()) + ", version " + std::to_string(version()) + ")";
    }
    if (key() != k) {
      return "the value of key " + std::to_string(key()) + " (version " +
             std::to_string(version()) + ") under key " + std::to_string(k);
    }
    if (std::memcmp(b, make(key(), version()).b, N) != 0) return "fill mismatch";
    return {};
  }
};
static_assert(sizeof(Rec<48>) == 48 && sizeof(Rec<64>) == 64 && sizeof(Rec<137>) == 137 &&
              sizeof(Rec<300>) == 300);

/// Errors a child reports through shared memory (the first message is kept).
struct Report {
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> checks{0};
  char first[512] = {};
  void fail(const std::string& what) {
    if (errors.fetch_add(1) == 0) {
      std::snprintf(first, sizeof(first), "pid %d: %s", static_cast<int>(::getpid()), what.c_str());
    }
  }
};

// ---------------------------------------------------------------------------------------------
// (a) update() counters from several processes.

struct Counter {
  std::uint64_t total;
  std::uint64_t by_proc[8];
  std::uint64_t sum;
  std::uint64_t compute() const { return fnv(this, offsetof(Counter, sum)); }
  std::string verify() const {
    if (sum != compute()) return "torn counter";
    std::uint64_t s = 0;
    for (const auto b : by_proc) s += b;
    return s == total ? std::string() : "counter total != sum of parts";
  }
};

class TypedMpTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 150; }
};

TEST_F(TypedMpTest, UpdateCountersAreExactAcrossProcesses) {
  const std::uint64_t seed = test_seed();
  ScopedName name("tcount");
  using M = TypedMap<std::uint64_t, Counter>;
  auto m = M::create(name, {.initial_capacity = 8});
  Counter zero{};
  zero.sum = zero.compute();
  ASSERT_TRUE(m.insert(1, zero));
  constexpr int kProcs = 4;
  const std::uint64_t per = 5000 * soak() / kScale;
  Shared<Report> rep;
  Shared<std::atomic<bool>> stop(false);
  SharedArray<std::atomic<std::uint64_t>> creates(kProcs);
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto c = M::open(name);
      if (!gate.wait()) return false;
      Rng rng(seed + p);
      for (std::uint64_t i = 0; i < per; ++i) {
        // Key 1 exists; key 2 is created by the first upsert of any process.
        const bool ok = c.update(1, [p](Counter& v) {
          ++v.total;
          ++v.by_proc[p];
          v.sum = v.compute();
        });
        CHILD_CHECK(ok, "update of key 1 found it absent at %llu", (unsigned long long)i);
        const bool made = c.upsert(
            2,
            [p] {
              Counter v{};
              v.total = 1;
              v.by_proc[p] = 1;
              v.sum = v.compute();
              return v;
            },
            [p](Counter& v) {
              ++v.total;
              ++v.by_proc[p];
              v.sum = v.compute();
            });
        if (made) creates[p].fetch_add(1);
        if (rng.chance(10)) {
          const auto v = c.find(1 + rng.below(2));
          CHILD_CHECK(v.has_value(), "a counter vanished");
          CHILD_CHECK(v->verify().empty(), "%s", v->verify().c_str());
        }
      }
      return true;
    }));
  }
  // A churner process grows and shrinks the map under the counters the whole time.
  const pid_t churner = fork_child([&] {
    auto c = M::open(name);
    if (!gate.wait()) return false;
    Counter v{};
    v.sum = v.compute();
    while (!stop->load()) {
      for (std::uint64_t k = 100; k < 2100; ++k) CHILD_CHECK(c.insert(k, v), "churn insert");
      for (std::uint64_t k = 100; k < 2100; ++k) CHILD_CHECK(c.erase(k), "churn erase");
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
  for (const std::uint64_t k : {1, 2}) {
    const auto v = m.find(k);
    ASSERT_TRUE(v.has_value()) << k;
    EXPECT_EQ(v->verify(), "") << k;
    EXPECT_EQ(v->total, kProcs * per)
        << "key " << k << ": lost or doubled updates (seed " << seed << ")";
    for (int p = 0; p < kProcs; ++p) EXPECT_EQ(v->by_proc[p], per) << "key " << k << " proc " << p;
  }
  std::uint64_t made = 0;
  for (int p = 0; p < kProcs; ++p) made += creates[p].load();
  EXPECT_EQ(made, 1u) << "upsert created key 2 more than once";
  EXPECT_GT(m.stats().resizes, resizes0 + 4) << "the churner did not resize the map";
  EXPECT_EQ(m.size(), 2u);
  RecordStats rs;
  const auto report = m.check(&rs);
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 2u);
}

// ---------------------------------------------------------------------------------------------
// (b) SIGKILL loop.

/// One scripted writer's operation: from the model of its own keys, deterministic in the seed.
struct TOp {
  enum Kind { kInsert, kAssign, kErase, kUpdate, kCas, kStaleCas } kind;
  std::uint64_t index;
  std::uint64_t version;   // of the value written (op number + 1)
  std::uint64_t expected;  // cas: version expected
  bool want;               // the predicted return value
};

class TScript {
 public:
  TScript(std::uint64_t seed, std::uint64_t universe, std::uint64_t period)
      : rng_(seed), universe_(universe), period_(period), ver_(universe, 0) {}
  TOp next() {
    TOp op{};
    op.index = rng_.below(universe_);
    op.version = done_ + 1;
    const std::uint64_t cur = ver_[op.index];
    const bool shrinking = (done_ / period_) % 2 == 1;
    const std::uint64_t s = rng_.below(100);
    if (cur == 0) {
      op.kind = s < (shrinking ? 20u : 80u) ? (s % 2 ? kInsertK : kAssignK)
                : s < 90                    ? TOp::kUpdate
                : s < 95                    ? TOp::kErase
                                            : TOp::kCas;
    } else {
      op.kind = s < (shrinking ? 70u : 10u)   ? TOp::kErase
                : s < (shrinking ? 76u : 25u) ? TOp::kInsert
                : s < (shrinking ? 84u : 50u) ? TOp::kAssign
                : s < (shrinking ? 92u : 75u) ? TOp::kUpdate
                : s < (shrinking ? 97u : 95u) ? TOp::kCas
                                              : TOp::kStaleCas;
    }
    switch (op.kind) {
      case TOp::kInsert:
      case TOp::kAssign:
        op.want = cur == 0;
        break;
      case TOp::kErase:
      case TOp::kUpdate:
      case TOp::kCas:
        op.want = cur != 0;
        op.expected = cur;
        break;
      case TOp::kStaleCas:
        op.want = false;
        op.expected = cur + 1000000;  // a version never written
        break;
    }
    return op;
  }
  void apply(const TOp& op) {
    std::uint64_t& cur = ver_[op.index];
    switch (op.kind) {
      case TOp::kInsert:
        if (cur == 0) cur = op.version;
        break;
      case TOp::kAssign:
        cur = op.version;
        break;
      case TOp::kErase:
        cur = 0;
        break;
      case TOp::kUpdate:
      case TOp::kCas:
        if (cur != 0) cur = op.version;
        break;
      case TOp::kStaleCas:
        break;
    }
    ++done_;
  }
  std::uint64_t version(std::uint64_t index) const { return ver_[index]; }
  std::uint64_t done() const { return done_; }
  std::uint64_t universe() const { return universe_; }

 private:
  static constexpr TOp::Kind kInsertK = TOp::kInsert;
  static constexpr TOp::Kind kAssignK = TOp::kAssign;
  Rng rng_;
  std::uint64_t universe_, period_;
  std::uint64_t done_ = 0;
  std::vector<std::uint64_t> ver_;  // 0: absent
};

template <class V, class M>
bool run_op(M& m, std::uint64_t key, const TOp& op) {
  const V val = V::make(key, op.version);
  switch (op.kind) {
    case TOp::kInsert:
      return m.insert(key, val);
    case TOp::kAssign:
      return m.insert_or_assign(key, val);
    case TOp::kErase:
      return m.erase(key);
    case TOp::kUpdate: {
      const std::uint64_t ver = op.version;
      return m.update(key, [key, ver](V& v) {
        // f may run more than once; it depends only on its argument (checked) and constants.
        if (v.key() != key) std::abort();  // another key's record: the parent sees SIGABRT
        v = V::make(key, ver);
      });
    }
    case TOp::kCas:
    case TOp::kStaleCas:
      return m.compare_exchange(key, V::make(key, op.expected), val);
  }
  return false;
}

struct Victim {
  std::atomic<std::uint64_t> acks{0};
  std::atomic<int> started{0};
  std::atomic<int> failed{0};
};

struct KillShared {
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> victims_started{0};  // readers read victims [0, this)
  std::atomic<std::uint64_t> churn_cycles{0};
  Report readers;
  Report writers;
};

constexpr std::uint64_t kUniverse = 120;
constexpr std::uint64_t kPeriod = 300;
std::uint64_t victim_base(std::int64_t v) { return std::uint64_t(100 + v) << 40; }
constexpr std::uint64_t kChurnBase = std::uint64_t{7} << 56;
constexpr std::uint64_t kChurnKeys = 2000;

/// Parent side: m against victim v's script after `acked` operations, the next one maybe done.
template <class V, class M>
std::string verify_victim(const M& m, std::uint64_t seed, std::int64_t v, std::uint64_t acked,
                          std::uint64_t* present) {
  TScript before(seed, kUniverse, kPeriod);
  for (std::uint64_t i = 0; i < acked; ++i) before.apply(before.next());
  TScript after = before;
  const TOp pending = after.next();
  after.apply(pending);
  *present = 0;
  for (std::uint64_t i = 0; i < kUniverse; ++i) {
    const std::uint64_t k = victim_base(v) + i;
    const auto got = m.find(k);
    if (got) {
      ++*present;
      if (auto e = got->verify(k); !e.empty()) return "key " + std::to_string(i) + ": " + e;
    }
    const std::uint64_t have = got ? got->version() : 0;
    if (have == before.version(i)) continue;
    if (pending.index == i && have == after.version(i)) continue;
    return "key index " + std::to_string(i) + ": holds version " + std::to_string(have) +
           ", acknowledged state says " + std::to_string(before.version(i)) +
           (pending.index == i ? " (or " + std::to_string(after.version(i)) + " in flight)"
                               : std::string()) +
           " after " + std::to_string(acked) + " acknowledged operations";
  }
  return {};
}

template <std::size_t N>
void kill_loop(int rounds) {
  using V = Rec<N>;
  using M = TypedMap<std::uint64_t, V>;
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("tkill");
  constexpr int kVictimsPerRound = 2;
  const int kVictims = rounds * kVictimsPerRound;
  auto vseed = [&](std::int64_t v) { return seed * 31 + 0x1000 * std::uint64_t(v + 1); };
  Shared<KillShared> sh;
  SharedArray<Victim> victims(kVictims);
  auto m = M::create(name, {.initial_capacity = 8});

  // Readers: every value they see of a victim's or the churner's key is whole, of that key,
  // and never older than one they saw before.
  auto reader = [&](int r) {
    auto c = M::open(name);
    Rng x(seed ^ (0x777 + r));
    std::unordered_map<std::uint64_t, std::uint64_t> last;
    std::uint64_t n = 0;
    while (!sh->stop.load(std::memory_order_acquire)) {
      const std::int64_t started = sh->victims_started.load(std::memory_order_acquire);
      if (++n % 512 == 0) {
        c.for_each([&](const std::uint64_t& k, const V& v) {
          if (auto e = v.verify(k); !e.empty()) sh->readers.fail("for_each: " + e);
        });
        continue;
      }
      std::uint64_t k;
      if (started > 0 && x.chance(70)) {
        const std::int64_t v =
            started - 1 - static_cast<std::int64_t>(x.below(std::min<std::uint64_t>(started, 4)));
        k = victim_base(v) + x.below(kUniverse);
      } else {
        k = kChurnBase + x.below(kChurnKeys);
      }
      const auto got = c.find(k);
      sh->readers.checks.fetch_add(1, std::memory_order_relaxed);
      if (!got) continue;
      if (auto e = got->verify(k); !e.empty()) {
        sh->readers.fail("find: " + e);
        continue;
      }
      if (k < kChurnBase) {  // victims' versions only grow per key
        auto& l = last[k];
        if (got->version() < l) {
          sh->readers.fail("find: key " + std::to_string(k) + " went back from version " +
                           std::to_string(l) + " to " + std::to_string(got->version()));
        }
        l = got->version();
      }
    }
    return true;
  };
  // Churner: fills kChurnKeys keys and empties them again, so resizes (and record reuse) never
  // stop.
  auto churner = [&] {
    auto c = M::open(name);
    for (std::uint64_t cycle = 1; !sh->stop.load(std::memory_order_acquire); ++cycle) {
      for (std::uint64_t i = 0; i < kChurnKeys; ++i) {
        if (!c.insert(kChurnBase + i, V::make(kChurnBase + i, cycle))) {
          sh->writers.fail("churn insert found a key present");
          return false;
        }
      }
      for (std::uint64_t i = 0; i < kChurnKeys; i += 3) {
        c.update(kChurnBase + i, [&](V& v) { v = V::make(kChurnBase + i, cycle + 1); });
      }
      for (std::uint64_t i = 0; i < kChurnKeys; ++i) {
        const auto v = c.find(kChurnBase + i);
        if (!v || !v->verify(kChurnBase + i).empty()) {
          sh->writers.fail("churn: own key lost or damaged");
          return false;
        }
      }
      for (std::uint64_t i = 0; i < kChurnKeys; ++i) {
        if (!c.erase(kChurnBase + i)) {
          sh->writers.fail("churn erase found a key absent");
          return false;
        }
      }
      sh->churn_cycles.fetch_add(1, std::memory_order_release);
    }
    return true;
  };
  std::vector<pid_t> helpers;
  helpers.push_back(fork_child([&] { return reader(0); }));
  helpers.push_back(fork_child([&] { return reader(1); }));
  helpers.push_back(fork_child(churner));
  for (const pid_t p : helpers) ASSERT_GT(p, 0);

  std::vector<std::uint64_t> acks(kVictims, 0);
  int killed = 0, in_migration = 0;
  for (int round = 0; round < rounds && !::testing::Test::HasFailure(); ++round) {
    pid_t pids[kVictimsPerRound];
    for (int j = 0; j < kVictimsPerRound; ++j) {
      const int v = round * kVictimsPerRound + j;
      pids[j] = fork_child([&, v] {
        Victim& w = victims[v];
        w.started.store(1);
        auto c = M::open(name);
        w.started.store(2);
        TScript s(vseed(v), kUniverse, kPeriod);
        for (;;) {
          const TOp op = s.next();
          const bool got = run_op<V>(c, victim_base(v) + op.index, op);
          if (got != op.want) {
            w.failed.store(1);
            sh->writers.fail("victim " + std::to_string(v) + ": op " + std::to_string(s.done()) +
                             " (kind " + std::to_string(op.kind) + ") returned " +
                             (got ? "true" : "false"));
            return false;
          }
          s.apply(op);
          w.acks.store(s.done(), std::memory_order_release);
        }
      });
      ASSERT_GT(pids[j], 0);
    }
    sh->victims_started.store((round + 1) * kVictimsPerRound, std::memory_order_release);
    for (int j = 0; j < kVictimsPerRound; ++j) {
      const int v = round * kVictimsPerRound + j;
      Victim& w = victims[v];
      if (rng.chance(15)) {
        ASSERT_TRUE(wait_until([&] { return w.started.load() >= 1; }, seconds(30 * kSlow)));
        std::this_thread::sleep_for(std::chrono::microseconds(rng.below(2000)));
      } else {
        const std::uint64_t threshold = 1 + rng.below(2500 / kScale);
        ASSERT_TRUE(wait_until([&] { return w.acks.load() >= threshold || w.failed.load(); },
                               seconds(30 * kSlow)))
            << "victim " << v << " stuck at " << w.acks.load() << " of " << threshold
            << " operations: a writer hung (seed " << seed << ")";
        if (rng.chance(40)) {
          wait_until([&] { return m.stats().tables > 1; }, milliseconds(200));
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(rng.below(800)));
        }
      }
      if (m.stats().tables > 1) ++in_migration;
      ::kill(pids[j], SIGKILL);
      const auto r = wait_for(pids[j], seconds(10 * kSlow));
      EXPECT_EQ(w.failed.load(), 0)
          << "victim " << v << " saw a wrong result (seed " << seed << "): " << sh->writers.first;
      EXPECT_EQ(r.signal, SIGKILL)
          << "victim " << v << " " << r.describe() << " (seed " << seed << ")";
      ++killed;
      acks[v] = w.acks.load();
      std::uint64_t present = 0;
      const std::string diff = verify_victim<V>(m, vseed(v), v, acks[v], &present);
      EXPECT_EQ(diff, "") << "victim " << v << " right after its kill (seed " << seed << ")";
    }
  }
  // Let the churner finish a cycle after the last kill, then stop everyone.
  const std::uint64_t mark = sh->churn_cycles.load();
  EXPECT_TRUE(wait_until([&] { return sh->churn_cycles.load() > mark; }, seconds(30 * kSlow)))
      << "the churner stopped making progress: hung (seed " << seed << ")";
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t p : helpers) {
    const auto r = wait_for(p, seconds(30 * kSlow));
    EXPECT_TRUE(r.ok()) << "helper " << p << " " << r.describe() << " (seed " << seed << ")";
  }
  EXPECT_EQ(sh->readers.errors.load(), 0u)
      << "readers saw bad values (seed " << seed << "): " << sh->readers.first;
  EXPECT_EQ(sh->writers.errors.load(), 0u)
      << "writers saw wrong results (seed " << seed << "): " << sh->writers.first;
  EXPECT_GT(sh->readers.checks.load(), 1000u) << "the readers hardly read";

  // Every acknowledged write of every victim, after all later migrations.
  std::uint64_t expect_size = 0;
  for (int v = 0; v < killed; ++v) {
    std::uint64_t present = 0;
    EXPECT_EQ(verify_victim<V>(m, vseed(v), v, acks[v], &present), "")
        << "victim " << v << " at the end (seed " << seed << ")";
    expect_size += present;
  }
  // A fresh attachment frees the dead processes' slots (and applies their pending size
  // records): size() is exact again.
  auto fresh = M::open(name);
  std::uint64_t walked = 0;
  fresh.for_each([&](const std::uint64_t& k, const V& v) {
    ++walked;
    EXPECT_EQ(v.verify(k), "");
  });
  EXPECT_EQ(walked, expect_size) << "for_each count (seed " << seed << ")";
  EXPECT_EQ(fresh.size(), expect_size) << "size() drifted (seed " << seed << ")";

  RecordStats before;
  const auto r0 = fresh.check(&before);
  fresh.compact();
  RecordStats rs;
  const auto report = fresh.check(&rs);
  EXPECT_TRUE(report.ok) << "after compact (seed " << seed
                         << "): " << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u) << "compact() left leaked records (seed " << seed << ")";
  EXPECT_EQ(rs.live, expect_size);
  EXPECT_EQ(report.live_entries, expect_size);
  std::fprintf(stderr,
               "[ info     ] Rec<%zu>: %d victims killed (%d during a migration), %llu churn "
               "cycles, %llu reads; before compact: %zu leaked, %zu retired, %zu free, %zu live "
               "(ok=%d); after: %zu leaked, %zu retired, %zu free, %zu live, %zu slabs\n",
               N, killed, in_migration, (unsigned long long)sh->churn_cycles.load(),
               (unsigned long long)sh->readers.checks.load(), before.leaked, before.retired,
               before.free, before.live, r0.ok ? 1 : 0, rs.leaked, rs.retired, rs.free, rs.live,
               rs.slabs);

  // The recovered records are usable: churn through all of them and check every value.
  const std::uint64_t more = 20000 / kScale;
  const std::uint64_t fresh_base = std::uint64_t{1} << 62;
  for (int pass = 0; pass < 3; ++pass) {
    for (std::uint64_t i = 0; i < more; ++i) {
      fresh.insert_or_assign(fresh_base + i, V::make(fresh_base + i, pass + 1));
    }
    for (std::uint64_t i = 0; i < more; ++i) {
      const auto v = fresh.find(fresh_base + i);
      ASSERT_TRUE(v.has_value());
      ASSERT_EQ(v->verify(fresh_base + i), "") << "pass " << pass << " (seed " << seed << ")";
      ASSERT_EQ(v->version(), std::uint64_t(pass) + 1);
    }
  }
  for (std::uint64_t i = 0; i < more; ++i) ASSERT_TRUE(fresh.erase(fresh_base + i));
  for (int v = 0; v < killed; ++v) {
    std::uint64_t present = 0;
    EXPECT_EQ(verify_victim<V>(fresh, vseed(v), v, acks[v], &present), "")
        << "victim " << v << " after compact and reuse (seed " << seed << ")";
  }
  const auto last = fresh.check(&rs);
  EXPECT_TRUE(last.ok) << (last.problems.empty() ? "" : last.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, expect_size);
}

class TypedKillTest : public TypedMpTest {
 protected:
  unsigned watchdog_seconds() const override { return 200; }
};

TEST_F(TypedKillTest, KilledWritersOf64ByteValuesLoseNothingAndTearNothing) {
  kill_loop<64>((kSanitized ? 4 : 12) * soak());
}
TEST_F(TypedKillTest, KilledWritersOf137ByteValuesLoseNothingAndTearNothing) {
  kill_loop<137>((kSanitized ? 4 : 12) * soak());
}
TEST_F(TypedKillTest, KilledWritersOf300ByteValuesLoseNothingAndTearNothing) {
  kill_loop<300>((kSanitized ? 4 : 12) * soak());
}

// ---------------------------------------------------------------------------------------------
// (c) Small-key churn from capacity 8 with struct values, per-key ownership.

struct Owned {
  std::uint32_t owner;
  std::uint32_t index;
  std::uint64_t version;
  std::uint64_t payload[3];
  std::uint64_t sum;
  static Owned make(std::uint32_t owner, std::uint32_t index, std::uint64_t version) {
    Owned o{};
    o.owner = owner;
    o.index = index;
    o.version = version;
    for (int i = 0; i < 3; ++i) o.payload[i] = mix(version * 3 + i + (std::uint64_t(owner) << 40));
    o.sum = fnv(&o, offsetof(Owned, sum));
    return o;
  }
  bool whole() const { return sum == fnv(this, offsetof(Owned, sum)); }
};
static_assert(sizeof(Owned) == 48);

constexpr int kChurnProcs = 4;
constexpr std::uint32_t kOwnKeys = 10;
std::uint64_t owned_key(int p, std::uint32_t i) { return std::uint64_t(p) * 1000 + i; }

struct ChurnState {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  Report report;
  std::atomic<std::uint64_t> ops[kChurnProcs];
  std::atomic<std::uint64_t> final_version[kChurnProcs][kOwnKeys];  // 0: absent
};

TEST_F(TypedMpTest, SmallKeyChurnFromCapacity8IsExactPerOwner) {
  const std::uint64_t seed = test_seed();
  ScopedName name("tchurn");
  using M = TypedMap<std::uint64_t, Owned>;
  auto m = M::create(name, {.initial_capacity = 8});
  Shared<ChurnState> st;
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kChurnProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto c = M::open(name);
      st->ready.fetch_add(1);
      if (!gate.wait()) return false;
      Rng rng(seed * 7 + p);
      std::vector<std::uint64_t> ver(kOwnKeys, 0);
      std::uint64_t next = 1;
      for (std::uint64_t op = 0; !st->stop.load(std::memory_order_relaxed); ++op) {
        // A burst now and then: 100 extra keys in, then out (grow, then shrink).
        if (op % 500 == 0) {
          const std::uint64_t b = (std::uint64_t(p) + 1) << 32;
          for (std::uint32_t i = 0; i < 100; ++i) {
            CHILD_CHECK(c.insert(b + i, Owned::make(p, i, 1)), "burst insert");
          }
          for (std::uint32_t i = 0; i < 100; ++i) CHILD_CHECK(c.erase(b + i), "burst erase");
        }
        const std::uint32_t i = static_cast<std::uint32_t>(rng.below(kOwnKeys));
        const std::uint64_t k = owned_key(p, i);
        const std::uint64_t v = next++;
        const Owned val = Owned::make(p, i, v);
        switch (rng.below(6)) {
          case 0: {
            const bool got = c.insert(k, val);
            CHILD_CHECK(got == (ver[i] == 0), "insert(%llu) returned %d", (unsigned long long)k,
                        got);
            if (got) ver[i] = v;
            break;
          }
          case 1:
            CHILD_CHECK(c.insert_or_assign(k, val) == (ver[i] == 0), "insert_or_assign");
            ver[i] = v;
            break;
          case 2:
          case 3:
            CHILD_CHECK(c.erase(k) == (ver[i] != 0), "erase(%llu)", (unsigned long long)k);
            ver[i] = 0;
            break;
          case 4: {
            const bool got = c.update(k, [&](Owned& o) { o = val; });
            CHILD_CHECK(got == (ver[i] != 0), "update(%llu)", (unsigned long long)k);
            if (got) ver[i] = v;
            break;
          }
          default: {
            const bool got = c.compare_exchange(k, Owned::make(p, i, ver[i]), val);
            CHILD_CHECK(got == (ver[i] != 0), "compare_exchange(%llu)", (unsigned long long)k);
            if (got) ver[i] = v;
            break;
          }
        }
        // Own key: exactly the model. Another owner's key: whole, and that owner's.
        const auto mine = c.find(k);
        CHILD_CHECK(mine.has_value() == (ver[i] != 0), "find(%llu) presence",
                    (unsigned long long)k);
        if (mine) {
          CHILD_CHECK(mine->whole() && mine->version == ver[i] && mine->owner == unsigned(p),
                      "find(%llu): version %llu, want %llu", (unsigned long long)k,
                      (unsigned long long)mine->version, (unsigned long long)ver[i]);
        }
        const int q = static_cast<int>(rng.below(kChurnProcs));
        const std::uint32_t j = static_cast<std::uint32_t>(rng.below(kOwnKeys));
        if (const auto other = c.find(owned_key(q, j))) {
          CHILD_CHECK(other->whole() && other->owner == unsigned(q) && other->index == j,
                      "another owner's key %llu holds a torn or foreign value",
                      (unsigned long long)owned_key(q, j));
        }
        st->ops[p].store(op + 1, std::memory_order_relaxed);
      }
      for (std::uint32_t i = 0; i < kOwnKeys; ++i) st->final_version[p][i].store(ver[i]);
      return true;
    }));
  }
  ASSERT_TRUE(wait_until([&] { return st->ready.load() == kChurnProcs; }, seconds(30 * kSlow)));
  const std::uint64_t resizes0 = m.stats().resizes;
  gate.release();
  // Run for a while (bounded), long enough for many grow/shrink cycles.
  const auto until = Clock::now() + milliseconds(1500 * soak() / kScale);
  while (Clock::now() < until) {
    bool any_dead = false;
    for (const pid_t p : pids) {
      int status = 0;
      if (::waitpid(p, &status, WNOHANG) == p) {
        any_dead = true;
        EXPECT_TRUE(false) << "churner ended early: " << decode(status).describe() << " (seed "
                           << seed << ")";
        // Reaped here: wait_for below must not wait again.
        forked_children().erase(std::find(forked_children().begin(), forked_children().end(), p));
      }
    }
    if (any_dead) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  st->stop.store(true);
  for (const pid_t p : pids) {
    if (std::find(forked_children().begin(), forked_children().end(), p) ==
        forked_children().end()) {
      continue;
    }
    const auto r = wait_for(p, seconds(30 * kSlow));
    EXPECT_TRUE(r.ok()) << "churner " << r.describe() << " (seed " << seed << ")";
  }
  ASSERT_FALSE(HasFailure());
  std::uint64_t ops = 0;
  for (int p = 0; p < kChurnProcs; ++p) ops += st->ops[p].load();
  const std::uint64_t resizes = m.stats().resizes - resizes0;
  std::fprintf(stderr, "[ info     ] %llu operations, %llu resizes\n", (unsigned long long)ops,
               (unsigned long long)resizes);
  EXPECT_GE(resizes, 20u) << "the map should have grown and shrunk throughout";

  std::uint64_t want_size = 0;
  for (int p = 0; p < kChurnProcs; ++p) {
    for (std::uint32_t i = 0; i < kOwnKeys; ++i) {
      const std::uint64_t want = st->final_version[p][i].load();
      const auto got = m.find(owned_key(p, i));
      if (want == 0) {
        EXPECT_FALSE(got.has_value()) << "owner " << p << " key " << i << " should be absent";
      } else {
        ++want_size;
        ASSERT_TRUE(got.has_value())
            << "owner " << p << " key " << i << " lost (seed " << seed << ")";
        EXPECT_TRUE(got->whole());
        EXPECT_EQ(got->version, want) << "owner " << p << " key " << i;
        EXPECT_EQ(got->owner, unsigned(p));
      }
    }
  }
  std::uint64_t walked = 0;
  m.for_each([&](const std::uint64_t& k, const Owned& o) {
    ++walked;
    EXPECT_TRUE(o.whole());
    EXPECT_EQ(owned_key(o.owner, o.index), k);
    EXPECT_EQ(o.version, st->final_version[o.owner][o.index].load());
  });
  EXPECT_EQ(walked, want_size);
  EXPECT_EQ(m.size(), want_size);
  RecordStats rs;
  const auto report = m.check(&rs);
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, want_size);
  // At most ~440 values are live at once, while millions are replaced: without reuse that is
  // thousands of slabs. Reuse waits for every pinned reader, and on 2 oversubscribed cores a
  // pinned process can be descheduled for a while, so the bound is loose.
  std::fprintf(stderr, "[ info     ] %zu slabs, %zu free, %zu retired, %zu live\n", rs.slabs,
               rs.free, rs.retired, rs.live);
  EXPECT_LE(rs.slabs, 400u) << "records of erased values are not reused";
}

// ---------------------------------------------------------------------------------------------
// (d) compact() paused past the writer-hold lease.

struct PauseShared {
  std::atomic<std::uint64_t> inserted[2];
  std::atomic<std::uint64_t> compacts{0};
  Report report;
};

// compact() audits the record heap under a point-in-time hold of the writers, which lasts at
// most a lease (2 s): a holder stopped longer (SIGSTOP, a debugger, a VM pause, CPU starvation)
// no longer holds, and writers go on. An audit that resumes after that must not act on what it
// saw before: a block that a writer popped from a free list and published meanwhile is neither
// on a free list nor (in the part of the table already walked) in a bucket, and retiring it as
// "leaked" hands it out again while it is live -- two keys then share one record.
TEST_F(TypedMpTest, CompactStoppedPastTheWriterLeaseRetiresNoLiveRecord) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("tpause");
  using V = Rec<48>;
  using M = TypedMap<std::uint64_t, V>;
  auto m = M::create(name, {.initial_capacity = 8});
  // Many live records and many free ones: the audit's walks take a while.
  const std::uint64_t n = 400000 / kScale;
  const std::uint64_t spare = std::uint64_t{1} << 40;
  for (std::uint64_t k = 0; k < n; ++k) ASSERT_TRUE(m.insert(k, V::make(k, 1)));
  for (std::uint64_t k = 0; k < n; ++k) ASSERT_TRUE(m.insert(spare + k, V::make(spare + k, 1)));
  for (std::uint64_t k = 0; k < n; ++k) ASSERT_TRUE(m.erase(spare + k));
  m.compact();
  Shared<PauseShared> sh;
  std::vector<pid_t> writers;
  for (int w = 0; w < 2; ++w) {
    writers.push_back(fork_child([&, w] {
      auto c = M::open(name);
      Rng r(seed + w);
      const std::uint64_t base = (std::uint64_t(w) + 1) << 48;
      // Fresh keys only: a write that replaced or erased a record the audit saw would make the
      // audit notice the change (a record both live and retired) and give up.
      for (std::uint64_t i = 0;; ++i) {
        CHILD_CHECK(c.insert(base + i, V::make(base + i, 1)), "insert of a fresh key");
        sh->inserted[w].store(i + 1, std::memory_order_release);
        const std::uint64_t j = r.below(i + 1);
        const auto v = c.find(base + j);
        if (!v) {
          sh->report.fail("key " + std::to_string(base + j) + " vanished");
        } else if (auto e = v->verify(base + j); !e.empty()) {
          sh->report.fail(e);
        }
        if (i % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
      return true;
    }));
  }
  const pid_t compactor = fork_child([&] {
    auto c = M::open(name);
    for (;;) {
      try {
        c.compact();
      } catch (const Error&) {
        // A hold that could not be had (timeout) is fine here.
      }
      sh->compacts.fetch_add(1, std::memory_order_release);
    }
    return true;
  });
  ASSERT_TRUE(wait_until([&] { return sh->compacts.load() >= 1; }, seconds(30 * kSlow)));
  const int rounds = 1 + soak() / 2;  // each waits out a 2 s lease
  int round = 0;
  std::string problem;
  for (; round < rounds && problem.empty() && sh->report.errors.load() == 0; ++round) {
    // Sync point: a compact() has just begun (its audit follows its short table work); then
    // a random moment after it.
    const std::uint64_t c1 = sh->compacts.load();
    ASSERT_TRUE(wait_until([&] { return sh->compacts.load() > c1; }, seconds(30 * kSlow)));
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(40000)));
    ::kill(compactor, SIGSTOP);
    ASSERT_TRUE(wait_stopped(compactor, seconds(10)));
    // Past the lease (2 s for tables under 256 MiB): writers go on.
    std::this_thread::sleep_for(milliseconds(2600));
    ::kill(compactor, SIGCONT);
    // Let the resumed compact finish and the writers reuse what it gave back.
    const std::uint64_t c0 = sh->compacts.load();
    ASSERT_TRUE(wait_until([&] { return sh->compacts.load() > c0 + 1; }, seconds(30 * kSlow)));
    RecordStats rs;
    const auto report = m.check(&rs);
    if (!report.ok && !report.problems.empty()) problem = report.problems.front();
  }
  ::kill(compactor, SIGKILL);
  wait_for(compactor, seconds(10));
  for (const pid_t p : writers) {
    ::kill(p, SIGKILL);
    wait_for(p, seconds(10));
  }
  EXPECT_EQ(sh->report.errors.load(), 0u)
      << "after " << round << " pauses of compact() (seed " << seed
      << "): writers read other keys' values: " << sh->report.first;
  EXPECT_EQ(problem, "") << "check() after " << round << " pauses (seed " << seed << ")";
  std::uint64_t bad = 0;
  std::string first;
  for (int w = 0; w < 2; ++w) {
    const std::uint64_t base = (std::uint64_t(w) + 1) << 48;
    const std::uint64_t done = sh->inserted[w].load();
    for (std::uint64_t i = 0; i + 1 < done; ++i) {
      const auto v = m.find(base + i);
      const std::string e = v ? v->verify(base + i) : std::string("missing");
      if (!e.empty() && bad++ == 0) first = "key " + std::to_string(base + i) + ": " + e;
    }
  }
  for (std::uint64_t k = 0; k < n; ++k) {
    const auto v = m.find(k);
    const std::string e = v ? v->verify(k) : std::string("missing");
    if (!e.empty() && bad++ == 0) first = "key " + std::to_string(k) + ": " + e;
  }
  EXPECT_EQ(bad, 0u) << "keys holding another key's value (seed " << seed << "), first: " << first;
}

}  // namespace
}  // namespace shmap::test::mp
