// Map::find's inline path (fast_path.hpp, find_front): each thread caches the view of the
// table it last looked up in and uses it while current_table still names that table with the
// same capacity. These tests attack that cache -- a table freed and another made at the same
// offset, a lookup nested in a Session's pin, threads past the exclusive lanes -- and each
// fails if the check that guards it is left out.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <future>
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

// Grows and shrinks m from its smallest tables: each round inserts 8 + (up to max_extra) fresh
// keys and erases them again (a table shrinks every 256th erase).
void churn(Map& m, int rounds, std::uint64_t max_extra, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int round = 0; round < rounds; ++round) {
    const std::uint64_t n = 8 + rng() % max_extra;
    const std::uint64_t base = 1'000'000 + static_cast<std::uint64_t>(round) * 1'000;
    for (std::uint64_t k = base; k < base + n; ++k) m.insert(k, k);
    for (std::uint64_t k = base; k < base + n; ++k) m.erase(k);
  }
}

// Reader threads that look up keys 1..2 * stable at random until stopped: keys up to `stable`
// must read value_of(k), the others must be absent. Counts the wrong answers. Every third
// reader uses find(k), every third find(k, value) (which must leave `value` alone on a miss),
// and every third a Map::Session's find(k, value), renewed every 64 lookups.
class StableReaders {
 public:
  StableReaders(const Map& map, std::uint64_t stable, int count, std::uint64_t seed) {
    for (int r = 0; r < count; ++r) {
      threads_.emplace_back(
          [this, &map, stable, form = r % 3, s = seed + static_cast<std::uint64_t>(r)] {
            std::mt19937_64 rng(s);
            std::uint64_t n = 0;
            std::optional<Map::Session> session;
            while (!stop_.load(std::memory_order_relaxed)) {
              const std::uint64_t k = 1 + rng() % (stable * 2);
              std::optional<std::uint64_t> v;
              if (form == 0) {
                v = map.find(k);
              } else {
                constexpr std::uint64_t kUntouched = 0xdeadbeefdeadbeefull;
                std::uint64_t out = kUntouched;
                if (form == 2 && n % 64 == 0) {
                  session.reset();
                  session.emplace(map);
                }
                const bool found = form == 1 ? map.find(k, out) : session->find(k, out);
                if (found) v = out;
                if (!found && out != kUntouched) wrong_.fetch_add(1, std::memory_order_relaxed);
              }
              if (k <= stable ? v != value_of(k) : v.has_value()) {
                wrong_.fetch_add(1, std::memory_order_relaxed);
              }
              ++n;
            }
            lookups_.fetch_add(n, std::memory_order_relaxed);
          });
    }
  }
  ~StableReaders() { stop(); }
  StableReaders(const StableReaders&) = delete;
  StableReaders& operator=(const StableReaders&) = delete;
  void stop() {
    stop_.store(true);
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  std::uint64_t wrong() const { return wrong_.load(); }
  std::uint64_t lookups() const { return lookups_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> wrong_{0}, lookups_{0};
  std::vector<std::thread> threads_;
};

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

// A Session destroyed on a thread that did not make it must not end that thread's pins: its
// nesting count would wrap and its later operations would run unpinned.
TEST(FindFront, ASessionDestroyedOnAnotherThreadLeavesThatThreadsPinsWorking) {
  ScopedName name("foreign");
  Map map = Map::create(name, {.initial_capacity = 64});
  map.insert(7, 70);
  std::optional<Map::Session> s;
  s.emplace(map);
  ASSERT_EQ(s->find(7), 70u);
  std::thread other([&] {
    ASSERT_EQ(map.find(7), 70u);  // this thread's lane exists and is unpinned again
    s.reset();
    MapImpl& m = map.impl();
    m.pin();
    EXPECT_NE(m.my_lane().pin.load(), 0u) << "the foreign destructor broke this thread's pins";
    m.unpin();
    EXPECT_EQ(m.my_lane().pin.load(), 0u);
    EXPECT_EQ(map.find(7), 70u);
  });
  other.join();
  EXPECT_EQ(map.find(7), 70u);
  EXPECT_EQ(map.find(8), std::nullopt);
}

// Threads past the exclusive lanes, and threads whose cached views go stale while others
// resize: every answer is the one value the key can have, or absent for keys never inserted.
TEST(FindFront, ManyThreadsThroughTinyTableChurnReadOnlyTheirKeysValues) {
  ScopedName name("threads");
  Map map = Map::create(name, {.initial_capacity = 8});
  constexpr std::uint64_t kStable = 32;
  for (std::uint64_t k = 1; k <= kStable; ++k) map.insert(k, value_of(k));
  StableReaders readers(map, kStable, 40, 0);  // past the 15 exclusive lanes of the Map's slot
  churn(map, 300, 600, 7);
  const std::uint64_t resizes = map.stats().resizes;
  readers.stop();
  EXPECT_EQ(readers.wrong(), 0u) << "of " << readers.lookups() << " lookups";
  EXPECT_GT(resizes, 100u) << "the writer did not churn the table";
  for (std::uint64_t k = 1; k <= kStable; ++k) EXPECT_EQ(map.find(k), value_of(k));
}

// ---- From the adversarial review of the inline path (each attacks a case of its own) ----

struct TableId {
  std::uint64_t off, cap, created;
  bool operator==(const TableId&) const = default;
};
TableId current_id(const MapImpl& m) {
  const std::uint64_t off = m.header().current_table.load();
  const TableHeader* t = m.table(off);
  return {off, t->capacity, t->created_epoch};
}

// The case the commit's tests do not pin down: another table at the cached view's offset with
// the *same* capacity (another incarnation: another created epoch). The view is then used for
// it; every answer must be that table's. Churned through a second Map of the same segment, so
// that the reading Map's cached view is never refreshed by its own writes.
TEST(FindFrontReview, ViewIsUsedForANewTableOfTheSameCapacityAndAnswersExactly) {
  if (!light_pins_enabled()) GTEST_SKIP() << "no membarrier: Map::find always calls in";
  ScopedName name("incarnation");
  Map reader = Map::create(name, {.initial_capacity = 8});
  Map writer = Map::open(name);
  const FastFront& front = *reader.impl().fast_front();
  for (std::uint64_t k = 1; k <= 5; ++k) writer.insert(k, value_of(k));
  std::mt19937_64 rng(1);
  int reused_same_capacity = 0;
  for (int round = 0; round < 3000 && reused_same_capacity < 30; ++round) {
    // Cache the current table's view (the slow path runs if the inline one cannot answer).
    for (std::uint64_t k = 1; k <= 5; ++k) ASSERT_EQ(reader.find(k), value_of(k));
    std::uint64_t v = 0;
    if (find_front(front, 1, &v) == Fast::slow) continue;  // a migration state: next round
    const TableId cached = current_id(reader.impl());
    const std::uint64_t n = 8 + rng() % 200;
    const std::uint64_t base = 1'000'000 + static_cast<std::uint64_t>(round) * 1'000;
    for (std::uint64_t k = base; k < base + n; ++k) writer.insert(k, value_of(k));
    for (std::uint64_t k = base; k < base + n; k += 2) writer.erase(k);
    writer.compact();
    const TableId now = current_id(reader.impl());
    const bool reused =
        now.off == cached.off && now.cap == cached.cap && now.created != cached.created;
    // Inline answers only (the slow path would mask a wrong view): present, erased, never
    // inserted.
    int inline_answers = 0;
    for (std::uint64_t k = base; k < base + n; ++k) {
      const Fast r = find_front(front, k, &v);
      if (r == Fast::slow) continue;
      ++inline_answers;
      if ((k - base) % 2 == 0) {
        ASSERT_EQ(r, Fast::miss) << "erased key " << k << " round " << round;
      } else {
        ASSERT_EQ(r, Fast::hit) << "key " << k << " round " << round;
        ASSERT_EQ(v, value_of(k));
      }
    }
    for (std::uint64_t k = 1; k <= 5; ++k) {
      const Fast r = find_front(front, k, &v);
      if (r == Fast::slow) continue;
      ++inline_answers;
      ASSERT_EQ(r, Fast::hit) << "stable key " << k << " round " << round;
      ASSERT_EQ(v, value_of(k));
    }
    if (reused && inline_answers > 0) ++reused_same_capacity;
    for (std::uint64_t k = base; k < base + n; ++k) writer.erase(k);
  }
  RecordProperty("reused_same_capacity", reused_same_capacity);
  EXPECT_GT(reused_same_capacity, 0)
      << "no table of the same capacity was made at the cached view's offset";
}

// A for_each callback runs under the walk's pin: a find in it must not end that pin.
TEST(FindFrontReview, FindInAForEachCallbackLeavesTheWalksPin) {
  ScopedName name("walk");
  Map map = Map::create(name, {.initial_capacity = 64});
  for (std::uint64_t k = 1; k <= 20; ++k) map.insert(k, value_of(k));
  ASSERT_EQ(map.find(1), value_of(1));  // cache the view
  int unpinned = 0, wrong = 0, visited = 0;
  map.for_each([&](std::uint64_t k, std::uint64_t v) {
    ++visited;
    if (map.find(k) != v) ++wrong;
    if (map.find(k + 1000).has_value()) ++wrong;
    if (map.impl().my_lane().pin.load() == 0) ++unpinned;
  });
  EXPECT_EQ(visited, 20);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(unpinned, 0) << "a find inside for_each ended the walk's pin";
  EXPECT_EQ(map.impl().my_lane().pin.load(), 0u);
}

// A thread number handed on to a new thread with the old thread's view still cached, the
// table churned meanwhile: the new thread's answers are exact.
TEST(FindFrontReview, AThreadNumberReusedWithAStaleViewAnswersExactly) {
  if (!light_pins_enabled()) GTEST_SKIP() << "no membarrier: Map::find always calls in";
  ScopedName name("reuse-number");
  Map map = Map::create(name, {.initial_capacity = 8});
  for (std::uint64_t k = 1; k <= 6; ++k) map.insert(k, value_of(k));
  std::mt19937_64 rng(3);
  int reused_numbers = 0;
  for (int round = 0; round < 60; ++round) {
    // A thread with an exclusive lane caches a view and exits; the next thread made takes its
    // number (freed numbers are reused last-in first-out). Threads that get a higher number
    // (earlier tests leave many freed) are held until then, so that theirs are not reused.
    std::size_t first = SIZE_MAX, second = SIZE_MAX;
    std::atomic<bool> release{false};
    std::vector<std::thread> held;
    while (first == SIZE_MAX && held.size() < 512) {
      std::promise<std::size_t> number;
      std::future<std::size_t> got = number.get_future();
      std::thread t([&, number = std::move(number)]() mutable {
        const std::size_t n = thread_number();
        number.set_value(n);
        if (n < FastFront::kFrontLanes) {
          for (std::uint64_t k = 1; k <= 6; ++k) EXPECT_EQ(map.find(k), value_of(k));
          return;
        }
        while (!release.load()) std::this_thread::yield();
      });
      const std::size_t n = got.get();
      if (n < FastFront::kFrontLanes) {
        t.join();
        first = n;
      } else {
        held.push_back(std::move(t));
      }
    }
    const std::uint64_t n = 16 + rng() % 500;
    const std::uint64_t base = 1'000'000 + static_cast<std::uint64_t>(round) * 1'000;
    for (std::uint64_t k = base; k < base + n; ++k) map.insert(k, value_of(k));
    for (std::uint64_t k = base; k < base + n; ++k) map.erase(k);
    if (round % 2 == 0) map.compact();
    std::thread([&] {
      (void)thread_number();
      second = t_thread_number;
      std::uint64_t v = 0;
      for (std::uint64_t k = 1; k <= 6; ++k) {
        const Fast r = find_front(*map.impl().fast_front(), k, &v);
        if (r == Fast::slow) continue;
        EXPECT_EQ(r, Fast::hit);
        EXPECT_EQ(v, value_of(k));
      }
      for (std::uint64_t k = base; k < base + n; k += 3) {
        EXPECT_NE(find_front(*map.impl().fast_front(), k, &v), Fast::hit) << k;
        EXPECT_EQ(map.find(k), std::nullopt);
      }
    }).join();
    release.store(true);
    for (auto& t : held) t.join();
    reused_numbers += first == second && first < FastFront::kFrontLanes;
  }
  EXPECT_GT(reused_numbers, 0) << "no thread number was handed on";
}

// Threads 15 and later share no exclusive lane: find_front must refuse them before it
// touches any lane (and Map::find still answers through the extra lanes).
TEST(FindFrontReview, ThreadsPastTheExclusiveLanesNeverTakeIt) {
  ScopedName name("extra");
  Map map = Map::create(name, {.initial_capacity = 64});
  for (std::uint64_t k = 1; k <= 10; ++k) map.insert(k, value_of(k));
  const FastFront* front = map.impl().fast_front();
  constexpr int kThreads = 24;
  std::barrier sync(kThreads);
  std::atomic<int> wrong{0}, past{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      const std::size_t t = thread_number();
      sync.arrive_and_wait();  // all alive at once: numbers up to kThreads - 1 at least
      for (std::uint64_t k = 1; k <= 10; ++k) {
        if (map.find(k) != value_of(k)) ++wrong;
      }
      if (t >= FastFront::kFrontLanes) {
        ++past;
        if (front != nullptr) {
          std::uint64_t v = 0;
          if (find_front(*front, 1, &v) != Fast::slow) ++wrong;
        }
      }
      sync.arrive_and_wait();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(past.load(), 0);
}

// A moved Map carries its inline path along; the moved-from one has none; move assignment
// over a Map of another segment answers from the new segment only.
TEST(FindFrontReview, MovesCarryTheFront) {
  ScopedName a_name("move-a"), b_name("move-b");
  Map a = Map::create(a_name, {.initial_capacity = 64});
  Map b = Map::create(b_name, {.initial_capacity = 64});
  a.insert(1, 10);
  b.insert(1, 20);
  ASSERT_EQ(a.find(1), 10u);
  ASSERT_EQ(b.find(1), 20u);
  Map c(std::move(a));
  EXPECT_EQ(c.find(1), 10u);
  b = std::move(c);
  EXPECT_EQ(b.find(1), 10u);
  EXPECT_EQ(b.find(2), std::nullopt);
  b = std::move(b);  // NOLINT: self-move keeps the map
  EXPECT_EQ(b.find(1), 10u);
}

// Readers with cached views in this process while another process churns tiny tables (the
// reclaimer's membarrier and lane scan run in that process).
TEST(FindFrontReview, CachedViewsSurviveAnotherProcessChurning) {
  ScopedName name("xproc");
  Map map = Map::create(name, {.initial_capacity = 8});
  constexpr std::uint64_t kStable = 24;
  for (std::uint64_t k = 1; k <= kStable; ++k) map.insert(k, value_of(k));
  StableReaders readers(map, kStable, 2, 100);
  const pid_t pid = test::spawn([&]() -> bool {
    Map w = Map::open(name);
    churn(w, 4000, 400, 9);
    return w.stats().resizes > 50;
  });
  const int code = test::wait_child(pid);
  readers.stop();
  EXPECT_EQ(code, 0);
  EXPECT_EQ(readers.wrong(), 0u) << "of " << readers.lookups();
  RecordProperty("lookups", static_cast<int>(readers.lookups() / 1000));
}

}  // namespace
}  // namespace shmap::detail
