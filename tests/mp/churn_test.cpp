// Small-key churn from the smallest capacity, across real processes: each child inserts,
// checks and erases its own few keys in a loop, so the one map grows and shrinks every few
// milliseconds. Before successors could be replaced this made every write in every process
// throw "successor table full during migration" within 0.05 s (issue 6, item 1). Every child
// checks every answer it gets for its own keys; the parent checks the map afterwards. One
// variant also SIGKILLs churners at random moments and checks that size() is exact.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "mp_util.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::test::mp {
namespace {

struct ChurnShared {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> cycles{0};
  std::atomic<int> started{0};
};

// Churns keys [base, base + keys) with `threads` threads until stop; every answer checked.
bool run_churn(const std::string& name, std::uint64_t base, std::uint64_t keys, int threads,
               ChurnShared* sh) {
  Map m = Map::open(name);
  sh->started.fetch_add(1, std::memory_order_release);
  std::atomic<bool> ok{true};
  // A wrong answer is rare (once in hundreds of runs): say where the key is, at once.
  auto wrong = [&](const char* what, std::uint64_t key) {
    std::fprintf(stderr, "child %d: %s %llu\n%s\n", ::getpid(), what, (unsigned long long)key,
                 m.impl().describe_key(key).c_str());
    ok = false;
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      const std::uint64_t b = base + (std::uint64_t(t) << 20);
      try {
        for (std::uint64_t c = 0; !sh->stop.load(std::memory_order_acquire) && ok; ++c) {
          for (std::uint64_t k = 0; k < keys; ++k) {
            if (!m.insert(b + k, c ^ k)) wrong("insert found present", b + k);
          }
          for (std::uint64_t k = 0; k < keys; ++k) {
            if (m.find(b + k) != (c ^ k)) wrong("find wrong for", b + k);
          }
          for (std::uint64_t k = 0; k < keys; ++k) {
            if (!m.erase(b + k)) wrong("erase found absent", b + k);
          }
          sh->cycles.fetch_add(1, std::memory_order_relaxed);
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
        ok = false;
      }
    });
  }
  for (auto& t : ts) t.join();
  return ok;
}

class ChurnTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 180; }
};

struct Shape {
  int procs, threads;
  std::uint64_t keys;
};

void churn_processes(const Shape& s, int ms) {
  ScopedName name("mpchurn");
  Map m = Map::create(name, {.initial_capacity = 8});
  Shared<ChurnShared> sh;
  std::vector<pid_t> pids;
  for (int p = 0; p < s.procs; ++p) {
    pids.push_back(fork_child([&, p] {
      return run_churn(name, std::uint64_t(p + 1) << 40, s.keys, s.threads, sh.get());
    }));
  }
  ASSERT_TRUE(wait_until([&] { return sh->started.load() == s.procs; }, seconds(30 * kSlow)));
  // The parent reads the churners' keys meanwhile: never a wrong value (a value present is
  // one its writer wrote: c ^ k for some cycle c, so it differs from k only in the cycle bits).
  const auto end = Clock::now() + milliseconds(ms * soak());
  std::uint64_t reads = 0;
  while (Clock::now() < end) {
    for (int p = 0; p < s.procs; ++p) {
      const std::uint64_t k = (std::uint64_t(p + 1) << 40) + reads % s.keys;
      if (auto v = m.find(k)) {
        ASSERT_EQ(*v >> 32, 0u) << "a value no writer wrote, key " << k;
      }
      ++reads;
    }
  }
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t pid : pids) {
    const ChildResult r = wait_for(pid, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "churner " << pid << " " << r.describe();
  }
  EXPECT_GT(sh->cycles.load(), 0u);
  EXPECT_TRUE(m.insert(7, 7));
  m.compact();
  EXPECT_EQ(m.size(), 1u);
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::fprintf(stderr, "[ churn    ] %llu cycles, %llu resizes\n",
               (unsigned long long)sh->cycles.load(), (unsigned long long)m.stats().resizes);
}

TEST_F(ChurnTest, ThreeProcessesSixteenKeysEach) { churn_processes({3, 1, 16}, 3000); }

TEST_F(ChurnTest, TwoProcessesOfFourThreadsSixtyFourKeysEach) { churn_processes({2, 4, 64}, 3000); }

TEST_F(ChurnTest, FourProcessesEightKeysEach) { churn_processes({4, 1, 8}, 3000); }

// Churners SIGKILLed at random moments (mid-migration, mid-resize, mid-copy) while others go
// on: no churner that survives ever sees a wrong answer, the map stays writable, and after
// the dead slots are cleared, size() equals what the tables hold.
TEST_F(ChurnTest, ChurnersKilledAtRandomMoments) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("mpchurn-kill");
  Map m = Map::create(name, {.initial_capacity = 8});
  Shared<ChurnShared> steady;
  std::vector<pid_t> steady_pids;
  for (int p = 0; p < 2; ++p) {
    steady_pids.push_back(fork_child(
        [&, p] { return run_churn(name, std::uint64_t(p + 1) << 40, 16, 1, steady.get()); }));
  }
  const int kKills = (kSanitized ? 10 : 40) * soak();
  for (int i = 0; i < kKills; ++i) {
    Shared<ChurnShared> vs;
    const pid_t victim =
        fork_child([&] { return run_churn(name, std::uint64_t(100 + i) << 40, 16, 2, vs.get()); });
    ASSERT_TRUE(wait_until([&] { return vs->cycles.load() > 0; }, seconds(30 * kSlow)));
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(5000)));  // a random moment
    ::kill(victim, SIGKILL);
    const ChildResult r = wait_for(victim, seconds(30));
    EXPECT_EQ(r.signal, SIGKILL) << r.describe();
  }
  steady->stop.store(true, std::memory_order_release);
  for (const pid_t pid : steady_pids) {
    const ChildResult r = wait_for(pid, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "churner " << pid << " " << r.describe();
  }
  m.clear_stale_handles();
  m.compact();
  std::size_t walked = 0;
  m.for_each([&](std::uint64_t, std::uint64_t) { ++walked; });
  EXPECT_EQ(m.size(), walked) << "size() must stay exact across the kills";
  EXPECT_TRUE(m.insert(7, 7));
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::fprintf(stderr, "[ churn    ] %d kills, %llu steady cycles, %llu resizes\n", kKills,
               (unsigned long long)steady->cycles.load(), (unsigned long long)m.stats().resizes);
}

}  // namespace
}  // namespace shmap::test::mp
