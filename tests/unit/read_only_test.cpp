// Read-only attachments (OpenOptions::read_only): no handle slot, nothing written, writes
// refused, and reads that stay right while other processes resize the map under them.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

Map open_ro(const std::string& name) { return Map::open(name, OpenOptions{.read_only = true}); }

using test::code_of;

TEST(ReadOnly, TakesNoSlotAndRefusesWrites) {
  ScopedName name("ro");
  Map rw = Map::create(name, {.max_handles = 1});
  rw.insert_or_assign(1, 10);
  EXPECT_EQ(code_of([&] { Map::open(name); }), Errc::handles_exhausted);
  Map ro = open_ro(name);  // the only slot is taken: a read-only attach needs none
  EXPECT_TRUE(ro.read_only());
  EXPECT_FALSE(rw.read_only());
  EXPECT_EQ(ro.find(1), 10u);
  EXPECT_FALSE(ro.find(2).has_value());
  std::uint64_t v = 5;
  EXPECT_TRUE(ro.find(1, v));
  EXPECT_EQ(v, 10u);
  EXPECT_FALSE(ro.find(2, v));
  EXPECT_EQ(v, 10u) << "a miss leaves the value alone";
  EXPECT_TRUE(ro.contains(1));
  EXPECT_FALSE(ro.contains(2));
  EXPECT_EQ(ro.size(), 1u);
  EXPECT_EQ(ro.stats().handles_in_use, 1u);
  EXPECT_EQ(ro.readers().size(), 1u);
  EXPECT_TRUE(ro.check().ok);
  for (const auto& write : std::vector<std::function<void()>>{
           [&] { ro.insert(2, 2); }, [&] { ro.insert_or_assign(2, 2); }, [&] { ro.erase(1); },
           [&] { ro.compare_exchange(1, 10, 11); }, [&] { ro.fetch_add(1, 1); },
           [&] { ro.compact(); }, [&] { ro.clear_stale_handles(); }}) {
    EXPECT_EQ(code_of(write), Errc::permission_denied);
  }
  EXPECT_EQ(rw.find(1), 10u);
  EXPECT_EQ(rw.size(), 1u);
  EXPECT_EQ(code_of([&] { ro.dump("/tmp/never", {.point_in_time = true}); }),
            Errc::permission_denied);
  EXPECT_EQ(code_of([&] { open_ro("shmap-test-no-such-map"); }), Errc::not_found);
}

TEST(ReadOnly, ManyThreadsShareThePrivateLane) {
  ScopedName name("ro-threads");
  Map rw = Map::create(name);
  for (std::uint64_t k = 0; k < 1000; ++k) rw.insert_or_assign(k, k);
  Map ro = open_ro(name);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 40; ++t) {  // more than a slot's lanes: extra threads need no slot either
    threads.emplace_back([&] {
      for (std::uint64_t k = 0; k < 1000; ++k) {
        if (ro.find(k) != k) bad.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(rw.stats().handles_in_use, 1u);
}

/// A reader in another process, attached read-only, while this one grows and shrinks the map
/// all the time (tables retired and freed under the reader): stable keys are always found with
/// their value, and every walk sees each of them exactly once.
TEST(ReadOnly, ReadsStayRightWhileTheMapResizesUnderThem) {
  ScopedName name("ro-resize");
  constexpr std::uint64_t kStable = 500;
  Map rw = Map::create(name, {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < kStable; ++k) rw.insert_or_assign(k, k * 3);
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    // Keys from 2^32 up: inserted in bursts, then erased, so the table grows and shrinks.
    for (std::uint64_t round = 0; !stop.load(std::memory_order_relaxed); ++round) {
      const std::uint64_t n = 2000 + (round % 5) * 1000;
      for (std::uint64_t i = 0; i < n; ++i) rw.insert_or_assign((1ull << 32) + i, i);
      for (std::uint64_t i = 0; i < n; ++i) rw.erase((1ull << 32) + i);
      rw.compact();
    }
  });
  const pid_t reader = spawn([&] {
    Map ro = open_ro(name);
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    int walks = 0;
    while (std::chrono::steady_clock::now() < end) {
      for (std::uint64_t k = 0; k < kStable; ++k) {
        if (ro.find(k) != k * 3) {
          fprintf(stderr, "key %llu: wrong lookup\n", static_cast<unsigned long long>(k));
          return false;
        }
      }
      std::multiset<std::uint64_t> seen;
      ro.for_each([&](std::uint64_t k, std::uint64_t v) {
        if (k < kStable) {
          seen.insert(k);
          if (v != k * 3) seen.insert(UINT64_MAX);
        }
      });
      if (seen.size() != kStable || seen.count(UINT64_MAX) != 0 ||
          std::set<std::uint64_t>(seen.begin(), seen.end()).size() != kStable) {
        fprintf(stderr, "walk %d saw %zu stable entries\n", walks, seen.size());
        return false;
      }
      ++walks;
    }
    return walks > 0;
  });
  const int rc = wait_child(reader);
  stop = true;
  churn.join();
  EXPECT_EQ(rc, 0);
  EXPECT_GT(rw.stats().tables_freed, 2u) << "tables were freed while the reader read";
}

TEST(ReadOnly, SessionLooksUpThroughTheReadOnlyPath) {
  ScopedName name("ro-session");
  Map rw = Map::create(name, {.initial_capacity = 8});
  Map ro = open_ro(name);
  Map::Session s(ro);
  for (std::uint64_t k = 0; k < 2000; ++k) {
    rw.insert_or_assign(k, k + 1);  // resizes between the lookups
    ASSERT_EQ(s.find(k), k + 1);
    ASSERT_FALSE(s.contains(k + 100000));
  }
  EXPECT_EQ(rw.stats().handles_in_use, 1u);
}

TEST(OpenOrCreate, SaysWhetherItCreated) {
  ScopedName name("ooc");
  bool created = false;
  {
    Map m = Map::open_or_create(name, {.initial_capacity = 64}, &created);
    EXPECT_TRUE(created);
  }
  Map m = Map::open_or_create(name, {.initial_capacity = 4096}, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(m.stats().options.initial_capacity, 64u) << "an existing map keeps its options";
}

}  // namespace
}  // namespace shmap::test
