// Epoch-based reclamation across processes: a process stopped inside an operation holds
// retired tables back (never a use-after-free) without stopping anyone else; a process killed
// inside an operation holds nothing back once its slot is cleared.
#include <gtest/gtest.h>

#include <csignal>
#include <unordered_map>
#include <vector>

#include "mp_util.hpp"

namespace shmap::test::mp {
namespace {

constexpr std::uint64_t kChurnBase = 1ULL << 40;
std::uint64_t base_value(std::uint64_t k) { return k * 3 + 1; }
std::uint64_t churn_value(std::uint64_t k) { return k ^ 0x5555'aaaa'5555'aaaaULL; }

struct WalkShared {
  std::atomic<int> in_callback{0};
  std::atomic<std::uint64_t> visited{0};
};

class EpochTest : public MpTest {
 protected:
  const std::uint64_t base_keys_ = 2000;

  /// Creates the map with the base keys (which nobody changes afterwards).
  Map make_map(const std::string& name) {
    Map m = Map::create(name, {.initial_capacity = 8});
    for (std::uint64_t k = 0; k < base_keys_; ++k) m.insert(k, base_value(k));
    return m;
  }

  /// A child that walks the map and, at the first entry, stops itself (stop=true) or spins
  /// forever (stop=false) while pinned. Every value it is given must be one the key held;
  /// every base key must be visited exactly once.
  pid_t start_walker(const std::string& name, WalkShared* sh, bool stop) {
    const std::uint64_t n = base_keys_;
    return fork_child([=]() -> bool {
      Map c = Map::open(name);
      std::vector<int> seen(n, 0);
      std::uint64_t bad = 0;
      c.for_each([&](std::uint64_t k, std::uint64_t v) {
        if (sh->in_callback.exchange(1) == 0) {
          if (stop) {
            ::raise(SIGSTOP);
          } else {
            for (;;) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
        }
        sh->visited.fetch_add(1, std::memory_order_relaxed);
        if (k < n) {
          ++seen[k];
          if (v != base_value(k)) {
            ++bad;
            std::fprintf(stderr, "walker: key %llu has value %llu (want %llu)\n",
                         (unsigned long long)k, (unsigned long long)v,
                         (unsigned long long)base_value(k));
          }
        } else if (k >= kChurnBase && k < kChurnBase + (1ULL << 32)) {
          if (v != churn_value(k)) {
            ++bad;
            std::fprintf(stderr, "walker: churn key %llu has value %llu (freed memory?)\n",
                         (unsigned long long)k, (unsigned long long)v);
          }
        } else {
          ++bad;
          std::fprintf(stderr, "walker: key %llu never existed (freed memory?)\n",
                       (unsigned long long)k);
        }
      });
      CHILD_CHECK(bad == 0, "%llu bad entries during the walk", (unsigned long long)bad);
      for (std::uint64_t k = 0; k < n; ++k) {
        CHILD_CHECK(seen[k] == 1, "base key %llu visited %d times (present for the whole walk)",
                    (unsigned long long)k, seen[k]);
      }
      for (std::uint64_t k = 0; k < n; k += 7) {
        CHILD_CHECK(c.find(k) == base_value(k), "find(%llu) after the walk", (unsigned long long)k);
      }
      return true;
    });
  }

  /// Grows the map by `churn` keys and shrinks it back, `cycles` times: many resizes, each
  /// retiring a table. The base keys must stay readable throughout.
  void drive_resizes(Map& m, int cycles, std::uint64_t churn) {
    for (int c = 0; c < cycles; ++c) {
      for (std::uint64_t i = 0; i < churn; ++i) {
        ASSERT_TRUE(m.insert(kChurnBase + i, churn_value(kChurnBase + i)));
      }
      for (std::uint64_t k = 0; k < base_keys_; k += 13) ASSERT_EQ(m.find(k), base_value(k));
      for (std::uint64_t i = 0; i < churn; ++i) ASSERT_TRUE(m.erase(kChurnBase + i));
      // More erasures at the low size: the map checks for a shrink every so many erasures,
      // and the writes after them finish the migration.
      for (std::uint64_t i = 0; i < 300; ++i) {
        m.insert_or_assign(kChurnBase - 1, 0);
        ASSERT_TRUE(m.erase(kChurnBase - 1));
      }
    }
  }
};

// Item 4: a child stopped (SIGSTOP) inside a for_each callback.
TEST_F(EpochTest, StoppedReaderHoldsMemoryBackButSeesNoFreedMemory) {
  ScopedName name("stopped");
  Shared<WalkShared> sh;
  Map m = make_map(name);
  const pid_t pid = start_walker(name, sh.get(), true);
  ASSERT_GT(pid, 0);
  ChildResult ended;
  ASSERT_TRUE(wait_stopped(pid, seconds(30 * kSlow), &ended))
      << "walker did not stop inside its callback: " << ended.describe();
  ASSERT_EQ(sh->in_callback.load(), 1);

  const auto st0 = m.stats();
  drive_resizes(m, 3, 20000 / kScale);
  if (HasFatalFailure()) return;
  const auto st1 = m.stats();
  EXPECT_GE(st1.resizes, st0.resizes + 4) << "the churn should have resized the map";
  EXPECT_GT(st1.retired_pending, 0u) << "a pinned (stopped) reader must hold retired tables back";
  bool found_pinned = false;
  for (const auto& r : m.readers()) {
    if (r.pid == pid) {
      EXPECT_TRUE(r.alive) << "a stopped process is alive";
      EXPECT_GE(r.pinned_lanes, 1u);
      found_pinned = true;
    }
  }
  EXPECT_TRUE(found_pinned) << "readers() does not show the stopped walker";
  m.compact();  // must neither wait for the stopped process nor free what it may still see
  EXPECT_GT(m.stats().retired_pending, 0u) << "compact() freed tables a pinned reader can see";
  EXPECT_EQ(m.size(), base_keys_);

  ASSERT_EQ(::kill(pid, SIGCONT), 0);
  const auto r = wait_for(pid, seconds(60 * kSlow));
  EXPECT_TRUE(r.ok()) << "walker " << r.describe();
  EXPECT_GE(sh->visited.load(), base_keys_);

  m.compact();
  const auto st2 = m.stats();
  EXPECT_EQ(st2.retired_pending, 0u) << "nothing pins the retired tables any more";
  EXPECT_GT(st2.tables_freed, st1.tables_freed);
  EXPECT_EQ(st2.handles_in_use, 1u);
  const auto report = m.check();
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
}

// More resizes (over 64: the retired list was once a fixed 64 entries) while a reader is
// stopped: writers must not wait for the stopped process. The resizing runs in a child so that
// a hang is a failure.
TEST_F(EpochTest, StoppedReaderDoesNotBlockManyResizes) {
  ScopedName name("stoppedmany");
  Shared<WalkShared> sh;
  Map m = make_map(name);
  const pid_t walker = start_walker(name, sh.get(), true);
  ASSERT_GT(walker, 0);
  ASSERT_TRUE(wait_stopped(walker, seconds(30 * kSlow))) << "walker did not stop";

  const auto resizes0 = m.stats().resizes;
  const std::size_t bytes0 = m.stats().allocated_bytes;
  const auto driver = run_child(
      [&]() -> bool {
        Map d = Map::open(name);
        const std::uint64_t r0 = d.stats().resizes;
        for (int c = 0; c < 400 && d.stats().resizes - r0 <= 80; ++c) {
          for (std::uint64_t i = 0; i < 30000 / kScale; ++i) {
            CHILD_CHECK(d.insert(kChurnBase + i, churn_value(kChurnBase + i)), "insert");
          }
          for (std::uint64_t k = 0; k < 2000; k += 11) {
            CHILD_CHECK(d.find(k) == base_value(k), "base key %llu", (unsigned long long)k);
          }
          for (std::uint64_t i = 0; i < 30000 / kScale; ++i) {
            CHILD_CHECK(d.erase(kChurnBase + i), "erase");
          }
          for (int i = 0; i < 300; ++i) {
            d.insert_or_assign(kChurnBase - 1, 0);
            CHILD_CHECK(d.erase(kChurnBase - 1), "erase");
          }
        }
        d.compact();
        return true;
      },
      seconds(60 * kSlow));
  EXPECT_TRUE(driver.ok()) << "the resizing process " << driver.describe()
                           << " while a reader was stopped";
  const auto st = m.stats();
  std::fprintf(stderr, "[ info     ] %llu resizes, %zu retired pending, %llu tables freed\n",
               (unsigned long long)(st.resizes - resizes0), st.retired_pending,
               (unsigned long long)st.tables_freed);
  EXPECT_GT(st.resizes - resizes0, 64u) << "the driver should have resized more than 64 times";
  EXPECT_EQ(m.size(), base_keys_);

  ASSERT_EQ(::kill(walker, SIGCONT), 0);
  const auto r = wait_for(walker, seconds(60 * kSlow));
  EXPECT_TRUE(r.ok()) << "walker " << r.describe();
  m.compact();
  const auto end = m.stats();
  EXPECT_EQ(end.retired_pending, 0u);
  // Every table retired while the reader was stopped is given back once it resumed, even those
  // beyond the first 64 (which a fixed-size retired list used to leak).
  std::fprintf(stderr, "[ info     ] allocated %zu bytes before, %zu after\n", bytes0,
               end.allocated_bytes);
  EXPECT_LE(end.allocated_bytes, bytes0 + (std::size_t{1} << 20))
      << "tables retired while a reader was stopped were leaked";
}

// Item 5: a child killed (SIGKILL) while pinned inside for_each, stopped or running.
class KilledPinned : public EpochTest, public ::testing::WithParamInterface<bool> {};

TEST_P(KilledPinned, DoesNotBlockReclamationOnceCleared) {
  const bool stopped = GetParam();
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("killedpinned");
  Shared<WalkShared> sh;
  Map m = make_map(name);
  const pid_t pid = start_walker(name, sh.get(), stopped);
  ASSERT_GT(pid, 0);
  if (stopped) {
    ASSERT_TRUE(wait_stopped(pid, seconds(30 * kSlow))) << "walker did not stop";
  } else {
    ASSERT_TRUE(wait_until([&] { return sh->in_callback.load() == 1; }, seconds(30 * kSlow)))
        << "walker never reached its callback";
  }
  drive_resizes(m, 2, 10000 / kScale);
  if (HasFatalFailure()) return;
  EXPECT_GT(m.stats().retired_pending, 0u) << "the pinned walker holds tables back";

  std::this_thread::sleep_for(std::chrono::microseconds(rng.below(2000)));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  const auto r = wait_for(pid, seconds(10 * kSlow));
  EXPECT_EQ(r.signal, SIGKILL) << r.describe();

  // More resizes after the death, then clear its slot and compact: nothing may stay pending.
  drive_resizes(m, 1, 10000 / kScale);
  if (HasFatalFailure()) return;
  const std::size_t cleared = m.clear_stale_handles();
  EXPECT_LE(cleared, 1u);
  EXPECT_EQ(m.stats().handles_in_use, 1u) << "the dead walker's slot is still owned";
  m.compact();
  const auto st = m.stats();
  EXPECT_EQ(st.retired_pending, 0u) << "a dead pinned process still blocks reclamation";
  EXPECT_EQ(st.tables, 1u);
  EXPECT_EQ(m.size(), base_keys_);
  for (std::uint64_t k = 0; k < base_keys_; ++k) ASSERT_EQ(m.find(k), base_value(k));
  const auto report = m.check();
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
}

INSTANTIATE_TEST_SUITE_P(MpEpoch, KilledPinned, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Stopped" : "Running"; });

}  // namespace
}  // namespace shmap::test::mp
