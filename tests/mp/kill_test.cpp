// SIGKILL at random moments: writer processes are killed mid-stream, again and again, while
// other processes keep growing and shrinking the map. Every acknowledged write must survive
// (and later migrations), the map must stay usable, the dead processes' handle slots must be
// reclaimable, and no surviving process may hang.
#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "script.hpp"

namespace shmap::test::mp {
namespace {

struct Writer {
  std::atomic<std::uint64_t> acks{0};  // operations acknowledged (returned) so far
  std::atomic<int> started{0};         // 1 before Map::open, 2 once open
  std::atomic<int> failed{0};          // a return value contradicted the model
  std::atomic<int> open_error{0};      // Errc of a failed Map::open
};

struct KillShared {
  std::atomic<bool> stop{false};
};

// Runs a script forever (or until stop): each operation, once it returns, is acknowledged in
// shared memory. A wrong return value is recorded and ends the child with failure.
bool run_writer(const std::string& name, std::uint64_t seed, std::uint64_t base,
                std::uint64_t universe, std::uint64_t period, Writer* w,
                const std::atomic<bool>* stop, bool self_check) {
  w->started.store(1, std::memory_order_release);
  std::optional<Map> opened;
  try {
    opened.emplace(Map::open(name));
  } catch (const Error& e) {
    w->open_error.store(static_cast<int>(e.code()));
    std::fprintf(stderr, "writer %d: open failed: %s\n", ::getpid(), e.what());
    return false;
  }
  Map& m = *opened;
  w->started.store(2, std::memory_order_release);
  Script s(seed, base, period, universe);
  std::string why;
  while (stop == nullptr || !stop->load(std::memory_order_acquire)) {
    const Op op = s.next();
    if (!Script::execute(m, op, &why)) {
      w->failed.store(1);
      std::fprintf(stderr, "writer %d (seed %llu): op %llu: %s\n", ::getpid(),
                   (unsigned long long)seed, (unsigned long long)s.done(), why.c_str());
      return false;
    }
    s.apply(op);
    // Release: the parent that sees this count may rely on the operation having returned.
    w->acks.store(s.done(), std::memory_order_release);
  }
  if (self_check) {
    for (std::uint64_t i = 0; i < s.used(); ++i) {
      CHILD_CHECK(m.find(s.key(i)) == s.get_index(i), "writer self-check: key %llu",
                  (unsigned long long)s.key(i));
    }
  }
  return true;
}

// Drives resizes without pause: fills its range and empties it again, checking every result.
bool run_churner(const std::string& name, std::uint64_t base, Writer* w,
                 const std::atomic<bool>* stop) {
  Map m = Map::open(name);
  const std::uint64_t n = 100000 / kScale;
  while (!stop->load(std::memory_order_acquire)) {
    for (std::uint64_t i = 0; i < n; ++i) {
      CHILD_CHECK(m.insert(base + i, i ^ base), "churn insert %llu", (unsigned long long)i);
    }
    for (std::uint64_t i = 0; i < n; ++i) {
      CHILD_CHECK(m.find(base + i) == (i ^ base), "churn find %llu", (unsigned long long)i);
    }
    for (std::uint64_t i = 0; i < n; ++i) {
      CHILD_CHECK(m.erase(base + i), "churn erase %llu", (unsigned long long)i);
    }
    w->acks.fetch_add(1, std::memory_order_release);
  }
  return true;
}

class KillTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 200; }
};

TEST_F(KillTest, KilledWritersLoseNoAcknowledgedWrite) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("kill");
  constexpr int kWorkers = 2;
  const int kRounds = (kSanitized ? 16 : 50) * soak();
  constexpr int kVictimsPerRound = 2;
  const int kVictims = kRounds * kVictimsPerRound;
  const std::uint64_t worker_period = 4000 / kScale;
  // Victims grow and shrink too, so that their keys do not pile up and hide the churn.
  const std::uint64_t kVictimPeriod = 500;
  const std::uint64_t kVictimUniverse = 200;
  const std::uint64_t kWorkerUniverse = 20000 / kScale;
  Shared<KillShared> sh;
  SharedArray<Writer> workers(kWorkers);
  SharedArray<Writer> victims(kVictims);
  auto worker_seed = [&](int i) { return seed ^ (0xabcdef12345ULL * std::uint64_t(i + 1)); };
  auto worker_base = [](int i) { return std::uint64_t(i + 1) << 40; };
  auto victim_seed = [&](int v) { return seed + 0x1000 * std::uint64_t(v + 1); };
  auto victim_base = [](int v) { return std::uint64_t(100 + v) << 40; };

  Map m = Map::create(name, {.initial_capacity = 8});
  const std::size_t baseline_handles = m.stats().handles_in_use;
  ASSERT_EQ(baseline_handles, 1u);

  // Worker 0 runs a script (growing and shrinking phases); worker 1 churns (fills its range
  // and empties it again) so that resizes, and migrations, are under way at most kill moments.
  std::vector<pid_t> worker_pids;
  worker_pids.push_back(fork_child([&] {
    return run_writer(name, worker_seed(0), worker_base(0), kWorkerUniverse, worker_period,
                      &workers[0], &sh->stop, true);
  }));
  worker_pids.push_back(
      fork_child([&] { return run_churner(name, worker_base(1), &workers[1], &sh->stop); }));
  for (const pid_t p : worker_pids) ASSERT_GT(p, 0);
  const std::uint64_t resizes0 = m.stats().resizes;

  std::vector<std::uint64_t> victim_acks(kVictims, 0);
  int killed = 0;
  int kills_in_migration = 0;
  for (int round = 0; round < kRounds; ++round) {
    pid_t pids[kVictimsPerRound];
    for (int j = 0; j < kVictimsPerRound; ++j) {
      const int v = round * kVictimsPerRound + j;
      pids[j] = fork_child([&, v] {
        return run_writer(name, victim_seed(v), victim_base(v), kVictimUniverse, kVictimPeriod,
                          &victims[v], nullptr, false);
      });
      ASSERT_GT(pids[j], 0);
    }
    for (int j = 0; j < kVictimsPerRound; ++j) {
      const int v = round * kVictimsPerRound + j;
      Writer& w = victims[v];
      // Sync point, then a random moment after it. One victim in four dies around open().
      if (rng.chance(25)) {
        ASSERT_TRUE(wait_until([&] { return w.started.load() >= 1; }, seconds(30 * kSlow)))
            << "victim " << v << " never started";
        std::this_thread::sleep_for(std::chrono::microseconds(rng.below(3000)));
      } else {
        const std::uint64_t threshold = 1 + rng.below(3000 / kScale);
        const bool reached = wait_until(
            [&] {
              return w.acks.load() >= threshold || w.failed.load() != 0 || w.open_error.load() != 0;
            },
            seconds(30 * kSlow));
        ASSERT_TRUE(reached) << "victim " << v << " stuck at " << w.acks.load() << " of "
                             << threshold << " operations: a writer hung (seed " << seed << ")";
        ASSERT_EQ(w.open_error.load(), 0) << "victim " << v << " could not open the map";
        if (rng.chance(50)) {
          // Second sync point: a migration is under way (the victim helps with it on every
          // write). If none starts soon, kill anyway.
          wait_until([&] { return m.stats().tables > 1; }, milliseconds(300));
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(rng.below(1000)));
        }
      }
      if (m.stats().tables > 1) ++kills_in_migration;  // indicative: sampled just before
      ::kill(pids[j], SIGKILL);
      const auto r = wait_for(pids[j], seconds(10 * kSlow));
      EXPECT_EQ(w.failed.load(), 0)
          << "victim " << v << " saw a wrong result (seed " << seed << ")";
      EXPECT_TRUE(r.signal == SIGKILL) << "victim " << v << " " << r.describe();
      ++killed;
      victim_acks[v] = w.acks.load();
      // Check at once, while the workers keep migrating.
      std::uint64_t present = 0;
      const std::string diff = verify_script(m, victim_seed(v), victim_base(v), kVictimPeriod,
                                             kVictimUniverse, victim_acks[v], true, &present);
      EXPECT_EQ(diff, "") << "victim " << v << " (seed " << seed << ")";
    }
    if (HasFailure()) break;
  }

  // Let the workers go on for a while after the last kill, then stop them.
  const std::uint64_t mark = workers[0].acks.load();
  EXPECT_TRUE(wait_until([&] { return workers[0].acks.load() > mark + 1000 / kScale; },
                         seconds(30 * kSlow)))
      << "worker 0 stopped making progress: hung";
  const std::uint64_t resizes_during = m.stats().resizes;
  sh->stop.store(true, std::memory_order_release);
  for (int i = 0; i < kWorkers; ++i) {
    const auto r = wait_for(worker_pids[i], seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "worker " << i << " " << r.describe() << " (seed " << seed << ")";
  }

  // Every acknowledged write of every victim, after all the later migrations.
  std::uint64_t expect_size = 0;
  for (int v = 0; v < kVictims && v < killed; ++v) {
    std::uint64_t present = 0;
    const std::string diff = verify_script(m, victim_seed(v), victim_base(v), kVictimPeriod,
                                           kVictimUniverse, victim_acks[v], true, &present);
    EXPECT_EQ(diff, "") << "victim " << v << " at the end (seed " << seed << ")";
    expect_size += present;
  }
  {
    std::uint64_t present = 0;
    const std::string diff =
        verify_script(m, worker_seed(0), worker_base(0), worker_period, kWorkerUniverse,
                      workers[0].acks.load(), false, &present);
    EXPECT_EQ(diff, "") << "worker 0 (seed " << seed << ")";
    expect_size += present;
  }
  EXPECT_GT(workers[1].acks.load(), 0u) << "the churner never finished a cycle";
  std::uint64_t walked = 0;
  m.for_each([&](std::uint64_t, std::uint64_t) { ++walked; });
  EXPECT_EQ(walked, expect_size);

  // The dead processes' slots: readers() shows them dead; clear_stale_handles() frees exactly
  // those, and the count of slots in use is back to the parent alone.
  std::size_t dead = 0;
  for (const auto& r : m.readers()) dead += r.alive ? 0 : 1;
  const std::size_t in_use = m.stats().handles_in_use;
  EXPECT_LE(dead, static_cast<std::size_t>(killed));
  const std::size_t cleared = m.clear_stale_handles();
  EXPECT_EQ(cleared, dead);
  EXPECT_EQ(in_use - cleared, baseline_handles);
  EXPECT_EQ(m.stats().handles_in_use, baseline_handles);
  for (const auto& r : m.readers()) {
    EXPECT_TRUE(r.alive && r.self) << "slot " << r.slot << " pid " << r.pid;
  }

  // Fully usable: grow and shrink again, and nothing is held back any more.
  const std::uint64_t more = 50000 / kScale;
  for (std::uint64_t i = 0; i < more; ++i) ASSERT_TRUE(m.insert((500ULL << 40) + i, i));
  for (std::uint64_t i = 0; i < more; ++i) ASSERT_EQ(m.find((500ULL << 40) + i), i);
  for (std::uint64_t i = 0; i < more; ++i) ASSERT_TRUE(m.erase((500ULL << 40) + i));
  m.compact();
  // size() is documented exact when no writer is mid-operation: a writer killed mid-operation
  // is never coming back, so once its slot is cleared the count must be exact again.
  EXPECT_EQ(m.size(), expect_size)
      << "size() drifted: a process killed between its bucket update and its size update "
         "(seed "
      << seed << "); the walk counted " << walked;
  const auto st = m.stats();
  EXPECT_EQ(st.retired_pending, 0u) << "dead processes still hold tables back";
  EXPECT_EQ(st.tables, 1u);
  const auto report = m.check();
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  std::fprintf(stderr,
               "[ info     ] %d victims killed (%d while a migration was under way), %llu resizes "
               "during the kills, %llu churn cycles, %zu slots cleared\n",
               killed, kills_in_migration, (unsigned long long)(resizes_during - resizes0),
               (unsigned long long)workers[1].acks.load(), cleared);
  EXPECT_GE(resizes_during - resizes0, 10u)
      << "the map should have been resizing throughout the kills";
}

// A burst of processes that open, write a little and get killed, with no survivor in between:
// slots of dead processes are reused by open() when the table of slots is full.
TEST_F(KillTest, DeadSlotsAreReusedWhenSlotsRunOut) {
  ScopedName name("killslots");
  Map m = Map::create(name, {.initial_capacity = 8, .max_handles = 4});
  SharedArray<Writer> w(12);
  for (int v = 0; v < 12; ++v) {
    const pid_t pid = fork_child([&, v] {
      return run_writer(name, 77 + v, std::uint64_t(v + 1) << 40, 1000, 0, &w[v], nullptr, false);
    });
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(wait_until(
        [&] { return w[v].acks.load() >= 50 || w[v].failed.load() || w[v].open_error.load(); },
        seconds(30 * kSlow)))
        << "child " << v << " hung";
    ASSERT_EQ(w[v].open_error.load(), 0)
        << "child " << v << " could not open: the slots of dead processes were not reused";
    ASSERT_EQ(w[v].failed.load(), 0);
    ::kill(pid, SIGKILL);
    const auto r = wait_for(pid, seconds(10 * kSlow));
    ASSERT_EQ(r.signal, SIGKILL) << r.describe();
    std::uint64_t present = 0;
    EXPECT_EQ(verify_script(m, 77 + v, std::uint64_t(v + 1) << 40, 0, 1000, w[v].acks.load(), true,
                            &present),
              "");
  }
  EXPECT_LE(m.stats().handles_in_use, 4u);
  m.clear_stale_handles();
  EXPECT_EQ(m.stats().handles_in_use, 1u);
}

}  // namespace
}  // namespace shmap::test::mp
