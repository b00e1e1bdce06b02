// The SIGKILL loop of the typed and string maps' multi-process tests, for any map M of
// uint64 keys whose values V can name their key and version and check themselves:
//   V::make(key, version), v.key(), v.version(), v.verify(key) -> "" if whole and of key;
//   M::create(name, options), M::open(name), find, insert, insert_or_assign, erase, update,
//   compare_exchange, for_each, size, check(&RecordStats), compact, stats.
// Victims run a deterministic script against their own keys and are SIGKILLed at random
// moments (often mid-migration); the parent checks every acknowledged write after each kill
// and at the end, reader processes check every value they see, a churner keeps resizing.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "mp_util.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::test::mp::victims {

inline std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline std::uint64_t fnv(const void* p, std::size_t n) {
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

/// The live records a map of `entries` entries should hold: one each, unless M keeps some
/// entries without a record (a string map's short entries) and says how many do not.
template <class M>
std::uint64_t records_of(const M& m, std::uint64_t entries) {
  if constexpr (requires { m.entries_without_record(); }) {
    return entries - m.entries_without_record();
  } else {
    return entries;
  }
}

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
inline std::uint64_t victim_base(std::int64_t v) { return std::uint64_t(100 + v) << 40; }
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

template <class V, class M>
void kill_loop(int rounds, const char* label) {
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
  EXPECT_EQ(rs.live, records_of(fresh, expect_size));
  EXPECT_EQ(report.live_entries, expect_size);
  std::fprintf(stderr,
               "[ info     ] %s: %d victims killed (%d during a migration), %llu churn "
               "cycles, %llu reads; before compact: %zu leaked, %zu retired, %zu free, %zu live "
               "(ok=%d); after: %zu leaked, %zu retired, %zu free, %zu live, %zu slabs\n",
               label, killed, in_migration, (unsigned long long)sh->churn_cycles.load(),
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
  EXPECT_EQ(rs.live, records_of(fresh, expect_size));
}

}  // namespace shmap::test::mp::victims
