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

#include "kill_loop.hpp"
#include "mp_util.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::test::mp {
namespace {

using namespace victims;  // NOLINT(google-build-using-namespace): the shared kill loop

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

class TypedKillTest : public TypedMpTest {
 protected:
  unsigned watchdog_seconds() const override { return 200; }
};

TEST_F(TypedKillTest, KilledWritersOf64ByteValuesLoseNothingAndTearNothing) {
  kill_loop<Rec<64>, TypedMap<std::uint64_t, Rec<64>>>((kSanitized ? 4 : 12) * soak(), "Rec<64>");
}
TEST_F(TypedKillTest, KilledWritersOf137ByteValuesLoseNothingAndTearNothing) {
  kill_loop<Rec<137>, TypedMap<std::uint64_t, Rec<137>>>((kSanitized ? 4 : 12) * soak(),
                                                         "Rec<137>");
}
TEST_F(TypedKillTest, KilledWritersOf300ByteValuesLoseNothingAndTearNothing) {
  kill_loop<Rec<300>, TypedMap<std::uint64_t, Rec<300>>>((kSanitized ? 4 : 12) * soak(),
                                                         "Rec<300>");
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
