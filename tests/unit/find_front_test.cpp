// Map::find's inline path (fast_path.hpp, find_front): each thread caches the view of the
// table it last looked up in and uses it while current_table still names that table with the
// same capacity. These tests attack that cache -- a table freed and another made at the same
// offset, a lookup nested in a Session's pin, threads past the exclusive lanes -- and each
// fails if the check that guards it is left out.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
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

std::uint64_t value_of(std::uint64_t k) { return k * 0x9E3779B97F4A7C15ull ^ 0x5555; }

TEST(FindFront, TakenByAThreadWithAnExclusiveLane) {
  if (!light_pins_enabled()) GTEST_SKIP() << "no membarrier here: Map::find always calls in";
  ScopedName name("front");
  Map map = Map::create(name, {.initial_capacity = 64});
  ASSERT_NE(map.impl().fast_front(), nullptr);
  map.insert(7, 70);
  ASSERT_EQ(map.find(7), 70u);  // the slow path caches the view
  std::uint64_t v = 0;
  EXPECT_EQ(find_front(*map.impl().fast_front(), 7, &v), Fast::hit);
  EXPECT_EQ(v, 70u);
  EXPECT_EQ(find_front(*map.impl().fast_front(), 8, &v), Fast::miss);
}

// A table that was freed while a thread's view of it stayed cached, and another one made at
// the same offset with another capacity: the cached geometry must not be used for it. The
// map churns from capacity 8 so that tables come and go at reused offsets; the test insists
// that this happened with a different capacity, so that it exercises the check.
TEST(FindFront, NeverUsesACachedViewForAnotherTableAtItsOffset) {
  ScopedName name("reuse");
  Map map = Map::create(name, {.initial_capacity = 8});
  MapImpl& m = map.impl();
  std::vector<std::uint64_t> stable;
  for (std::uint64_t k = 1; k <= 6; ++k) {
    stable.push_back(k);
    map.insert(k, value_of(k));
  }
  std::mt19937_64 rng(42);
  int reused_with_other_capacity = 0;
  for (int round = 0; round < 400 && reused_with_other_capacity < 20; ++round) {
    for (std::uint64_t k : stable) ASSERT_EQ(map.find(k), value_of(k)) << "round " << round;
    const std::uint64_t off = m.header().current_table.load();
    const std::uint64_t cap = m.table(off)->capacity;
    // Grow by a random amount, then erase it all again: the table shrinks every 256th erase.
    const std::uint64_t n = 16 + rng() % 3000;
    const std::uint64_t base = 1'000'000 + static_cast<std::uint64_t>(round) * 10'000;
    for (std::uint64_t k = base; k < base + n; ++k) map.insert(k, value_of(k));
    for (std::uint64_t k = base; k < base + n; ++k) map.erase(k);
    if (round % 3 == 0) map.compact();  // finish migrations, free what is retired
    const std::uint64_t now = m.header().current_table.load();
    if (now == off && m.table(now)->capacity != cap) ++reused_with_other_capacity;
    // Present keys at their values, erased and never-inserted ones absent: a stale geometry
    // reads other buckets (or none) and fails these.
    for (std::uint64_t k : stable) ASSERT_EQ(map.find(k), value_of(k)) << "round " << round;
    for (std::uint64_t k = base; k < base + n; k += 7) ASSERT_EQ(map.find(k), std::nullopt);
    for (std::uint64_t k = 100; k < 164; ++k) ASSERT_EQ(map.find(k), std::nullopt);
  }
  EXPECT_GT(reused_with_other_capacity, 0)
      << "no table was made at a cached table's offset with another capacity: the test did not "
         "exercise the check";
}

// Map::find on a thread that holds a Session must leave the Session's pin in place: the
// inline path's unpin would otherwise end the Session's protection of the tables it reads.
TEST(FindFront, LeavesASessionsPinInPlace) {
  ScopedName name("nested");
  Map map = Map::create(name, {.initial_capacity = 64});
  map.insert(7, 70);
  ASSERT_EQ(map.find(7), 70u);  // caches the view: the inline path would be taken
  Map::Session s(map);
  ASSERT_EQ(s.find(7), 70u);
  ASSERT_NE(map.impl().my_lane().pin.load(), 0u);
  EXPECT_EQ(map.find(7), 70u);
  EXPECT_EQ(map.find(8), std::nullopt);
  EXPECT_NE(map.impl().my_lane().pin.load(), 0u) << "Map::find unpinned the Session's lane";
  EXPECT_EQ(s.find(7), 70u);
}

// Threads past the exclusive lanes, and threads whose cached views go stale while others
// resize: every answer is the one value the key can have, or absent for keys never inserted.
TEST(FindFront, ManyThreadsThroughTinyTableChurnReadOnlyTheirKeysValues) {
  ScopedName name("threads");
  Map map = Map::create(name, {.initial_capacity = 8});
  constexpr std::uint64_t kStable = 32;
  for (std::uint64_t k = 1; k <= kStable; ++k) map.insert(k, value_of(k));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> wrong{0}, lookups{0};
  constexpr int kReaders = 40;  // past the 15 exclusive lanes of the Map's slot
  std::vector<std::thread> threads;
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(r));
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const std::uint64_t k = 1 + rng() % (kStable * 2);
        const auto v = map.find(k);
        const bool ok = k <= kStable ? v == value_of(k) : !v.has_value();
        if (!ok) wrong.fetch_add(1, std::memory_order_relaxed);
        ++n;
      }
      lookups.fetch_add(n, std::memory_order_relaxed);
    });
  }
  std::uint64_t resizes = 0;
  {
    std::mt19937_64 rng(7);
    for (int round = 0; round < 300; ++round) {
      const std::uint64_t n = 8 + rng() % 600;
      const std::uint64_t base = 1'000'000 + static_cast<std::uint64_t>(round) * 1'000;
      for (std::uint64_t k = base; k < base + n; ++k) map.insert(k, k);
      for (std::uint64_t k = base; k < base + n; ++k) map.erase(k);
    }
    resizes = map.stats().resizes;
  }
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0u) << "of " << lookups.load() << " lookups";
  EXPECT_GT(resizes, 100u) << "the writer did not churn the table";
  for (std::uint64_t k = 1; k <= kStable; ++k) EXPECT_EQ(map.find(k), value_of(k));
}

}  // namespace
}  // namespace shmap::detail
