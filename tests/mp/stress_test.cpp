// Real child processes hammer one map that starts at 8 buckets, through many growths and
// shrinks, with every operation; each child checks every return value against its own model of
// its key range, and the parent verifies the exact final content afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "mp_util.hpp"

namespace shmap::test::mp {
namespace {

constexpr int kChildren = 4;
constexpr std::uint64_t kCounters = 8;
const int kCycles = 30 * soak();
const std::uint64_t kRange = 16384 / kScale;  // keys per child

std::uint64_t own_key(int child, std::uint64_t i) { return (std::uint64_t(child + 1) << 48) | i; }
std::uint64_t counter_key(std::uint64_t j) { return (0xC0FFEEULL << 40) | j; }

struct StressShared {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> counter_sum[kCounters] = {};
  std::atomic<std::uint64_t> max_capacity{0};
  std::atomic<std::uint64_t> shrinks_seen{0};
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> arrivals{0};  // phase barrier
};

void record_max(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  std::uint64_t cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
}

class StressTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 180; }
};

// One child: cycles of grow (insert its whole range), churn (random operations), shrink (erase
// most of it), with fetch_add on the shared counters throughout.
bool hammer(const std::string& name, int child, std::uint64_t seed, StressShared* sh,
            SharedArray<std::uint64_t>* final_value, SharedArray<std::uint8_t>* final_present) {
  Map m = Map::open(name);
  Rng rng(seed ^ (0x51ed27ULL * std::uint64_t(child + 1)));
  std::vector<std::uint64_t> val(kRange, 0);
  std::vector<std::uint8_t> has(kRange, 0);
  std::uint64_t last_seen[kCounters] = {};
  std::uint64_t last_delta[kCounters] = {};
  std::uint64_t ops = 0;
  std::uint64_t last_capacity = 0;
  sh->ready.fetch_add(1);
  while (!sh->go.load(std::memory_order_acquire)) std::this_thread::yield();

  auto sample_capacity = [&] {
    const std::uint64_t cap = m.stats().capacity;
    record_max(sh->max_capacity, cap);
    if (last_capacity != 0 && cap < last_capacity) sh->shrinks_seen.fetch_add(1);
    last_capacity = cap;
  };
  auto random_value = [&]() -> std::uint64_t {
    switch (rng.below(8)) {
      case 0:
        return 0;
      case 1:
        return ~std::uint64_t{0};
      default:
        return rng.next();
    }
  };
  // A shared counter: fetch_add by everyone; what this child sees must never go backwards.
  auto bump_counter = [&]() -> bool {
    const std::uint64_t j = rng.below(kCounters);
    const std::uint64_t d = 1 + rng.below(1000);
    const std::uint64_t prev = m.fetch_add(counter_key(j), d);
    CHILD_CHECK(prev >= last_seen[j] + last_delta[j],
                "counter %llu went backwards: %llu after %llu + %llu", (unsigned long long)j,
                (unsigned long long)prev, (unsigned long long)last_seen[j],
                (unsigned long long)last_delta[j]);
    last_seen[j] = prev;
    last_delta[j] = d;
    sh->counter_sum[j].fetch_add(d, std::memory_order_relaxed);
    return true;
  };
  // One random operation on own key i, checked against the model.
  auto op = [&](std::uint64_t i, int kind) -> bool {
    const std::uint64_t k = own_key(child, i);
    ++ops;
    if (ops % 16 == 0 && !bump_counter()) return false;
    switch (kind) {
      case 0: {  // find
        const auto v = m.find(k);
        CHILD_CHECK(v.has_value() == bool(has[i]) && (!has[i] || *v == val[i]),
                    "find(%#llx): got %s%llu, model %s%llu", (unsigned long long)k,
                    v ? "" : "absent/", (unsigned long long)v.value_or(0), has[i] ? "" : "absent/",
                    (unsigned long long)val[i]);
        return true;
      }
      case 1: {  // insert
        const std::uint64_t v = random_value();
        const bool r = m.insert(k, v);
        CHILD_CHECK(r == !has[i], "insert(%#llx) returned %d, present=%d", (unsigned long long)k, r,
                    has[i]);
        if (!has[i]) val[i] = v, has[i] = 1;
        return true;
      }
      case 2: {  // insert_or_assign
        const std::uint64_t v = random_value();
        const bool r = m.insert_or_assign(k, v);
        CHILD_CHECK(r == !has[i], "insert_or_assign(%#llx) returned %d, present=%d",
                    (unsigned long long)k, r, has[i]);
        val[i] = v, has[i] = 1;
        return true;
      }
      case 3: {  // erase
        const bool r = m.erase(k);
        CHILD_CHECK(r == bool(has[i]), "erase(%#llx) returned %d, present=%d",
                    (unsigned long long)k, r, has[i]);
        has[i] = 0;
        return true;
      }
      case 4: {  // compare_exchange, matching or not
        const bool match = has[i] && rng.chance(70);
        const std::uint64_t expected = match ? val[i] : (has[i] ? val[i] + 1 : rng.next());
        const std::uint64_t desired = random_value();
        const bool r = m.compare_exchange(k, expected, desired);
        CHILD_CHECK(r == match, "compare_exchange(%#llx) returned %d, want %d",
                    (unsigned long long)k, r, match);
        if (match) val[i] = desired;
        return true;
      }
      default: {  // fetch_add (delta never 0, so an absent key surely becomes present)
        const std::uint64_t d = (rng.next() >> rng.below(64)) | 1;
        const std::uint64_t prev = m.fetch_add(k, d);
        const std::uint64_t want = has[i] ? val[i] : 0;
        CHILD_CHECK(prev == want, "fetch_add(%#llx) returned %llu, want %llu",
                    (unsigned long long)k, (unsigned long long)prev, (unsigned long long)want);
        val[i] = want + d, has[i] = 1;
        return true;
      }
    }
  };

  // Phases are aligned across children, so that all of them shrink at once: the map as a
  // whole then really empties and shrinks, instead of one child's erasures being hidden by
  // another's inserts.
  std::uint64_t barriers = 0;
  auto barrier = [&]() -> bool {
    ++barriers;
    sh->arrivals.fetch_add(1);
    CHILD_CHECK(wait_until([&] { return sh->arrivals.load() >= barriers * kChildren; },
                           seconds(60 * kSlow)),
                "phase barrier %llu: other children never arrived", (unsigned long long)barriers);
    return true;
  };

  std::vector<std::uint64_t> order(kRange);
  std::iota(order.begin(), order.end(), 0);
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    // Grow: every absent key gets a value, by insert, insert_or_assign or fetch_add.
    for (std::uint64_t j = kRange - 1; j > 0; --j) std::swap(order[j], order[rng.below(j + 1)]);
    for (const std::uint64_t i : order) {
      if (!has[i] && !op(i, static_cast<int>(rng.below(3)) == 0 ? 1 : rng.chance(50) ? 2 : 5)) {
        return false;
      }
    }
    sample_capacity();
    // Churn: random operations of every kind on random keys.
    for (std::uint64_t n = 0; n < 2 * kRange; ++n) {
      if (!op(rng.below(kRange), static_cast<int>(rng.below(6)))) return false;
    }
    sample_capacity();
    // Shrink: erase until 1/64 of the range is left.
    for (std::uint64_t j = kRange - 1; j > 0; --j) std::swap(order[j], order[rng.below(j + 1)]);
    std::uint64_t live = static_cast<std::uint64_t>(std::count(has.begin(), has.end(), 1));
    for (const std::uint64_t i : order) {
      if (live <= kRange / 64) break;
      if (has[i]) {
        if (!op(i, 3)) return false;
        --live;
      }
    }
    if (!barrier()) return false;
    // Erase and re-insert the keys left: the map checks for a shrink every so many erasures.
    for (std::uint64_t i = 0, n = 0; i < kRange && n < 300; ++i) {
      if (has[i]) {
        if (!op(i, 3) || !op(i, 1)) return false;
        ++n;
      }
    }
    sample_capacity();
    if (!barrier()) return false;
  }
  // Self-check of the whole range, then publish the model for the parent.
  for (std::uint64_t i = 0; i < kRange; ++i) {
    if (!op(i, 0)) return false;
    (*final_value)[child * kRange + i] = val[i];
    (*final_present)[child * kRange + i] = has[i];
  }
  sh->ops.fetch_add(ops);
  return true;
}

TEST_F(StressTest, ChildrenHammerThroughGrowthAndShrink) {
  const std::uint64_t seed = test_seed();
  ScopedName name("hammer");
  Shared<StressShared> sh;
  SharedArray<std::uint64_t> final_value(kChildren * kRange);
  SharedArray<std::uint8_t> final_present(kChildren * kRange);
  Map m = Map::create(name, {.initial_capacity = 8});
  const std::uint64_t resizes0 = m.stats().resizes;

  std::vector<pid_t> pids;
  for (int c = 0; c < kChildren; ++c) {
    pids.push_back(fork_child(
        [&, c] { return hammer(name, c, seed, sh.get(), &final_value, &final_present); }));
    ASSERT_GT(pids.back(), 0);
  }
  ASSERT_TRUE(wait_until([&] { return sh->ready.load() == kChildren; }, seconds(30 * kSlow)))
      << "children did not attach";
  sh->go.store(true, std::memory_order_release);
  bool all_ok = true;
  for (int c = 0; c < kChildren; ++c) {
    const auto r = wait_for(pids[c], seconds(120 * kSlow));
    EXPECT_TRUE(r.ok()) << "child " << c << " " << r.describe() << " (seed " << seed << ")";
    all_ok = all_ok && r.ok();
  }
  ASSERT_TRUE(all_ok) << "a child failed; see its message above";

  // Exact final content.
  std::unordered_map<std::uint64_t, std::uint64_t> expect;
  for (int c = 0; c < kChildren; ++c) {
    for (std::uint64_t i = 0; i < kRange; ++i) {
      if (final_present[c * kRange + i]) expect[own_key(c, i)] = final_value[c * kRange + i];
    }
  }
  for (std::uint64_t j = 0; j < kCounters; ++j) {
    if (sh->counter_sum[j].load() != 0) expect[counter_key(j)] = sh->counter_sum[j].load();
  }
  for (int c = 0; c < kChildren; ++c) {
    for (std::uint64_t i = 0; i < kRange; ++i) {
      const std::uint64_t k = own_key(c, i);
      const auto it = expect.find(k);
      const auto v = m.find(k);
      if (it == expect.end()) {
        ASSERT_FALSE(v.has_value())
            << "erased key " << std::hex << k << " is back (seed " << std::dec << seed << ")";
      } else {
        ASSERT_EQ(v, it->second) << "key " << std::hex << k << " (seed " << std::dec << seed << ")";
      }
    }
  }
  for (std::uint64_t j = 0; j < kCounters; ++j) {
    EXPECT_EQ(m.find(counter_key(j)).value_or(0), sh->counter_sum[j].load())
        << "shared counter " << j << " lost increments (seed " << seed << ")";
  }
  EXPECT_EQ(m.size(), expect.size()) << "seed " << seed;

  std::unordered_map<std::uint64_t, std::uint64_t> visits;
  std::uint64_t bad_values = 0;
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    ++visits[k];
    const auto it = expect.find(k);
    if (it == expect.end() || it->second != v) ++bad_values;
  });
  EXPECT_EQ(visits.size(), expect.size()) << "for_each visited the wrong set of keys";
  for (const auto& [k, n] : visits) {
    ASSERT_EQ(n, 1u) << "for_each visited key " << std::hex << k << " " << n << " times";
  }
  EXPECT_EQ(bad_values, 0u) << "for_each reported keys/values that are not in the map";

  const auto st = m.stats();
  EXPECT_GT(st.resizes - resizes0, 40u) << "the workload should resize the map many times";
  EXPECT_GT(sh->shrinks_seen.load() + (st.capacity < sh->max_capacity.load() ? 1 : 0), 0u)
      << "the map never shrank (max capacity " << sh->max_capacity.load() << ")";
  m.compact();
  EXPECT_LE(m.stats().capacity * 4, sh->max_capacity.load())
      << "after erasing down to " << expect.size() << " keys and compact()";
  EXPECT_EQ(m.stats().handles_in_use, 1u) << "children closed their handles";
  const auto report = m.check();
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_EQ(report.live_entries, expect.size());
  std::fprintf(stderr,
               "[ info     ] %llu operations, %llu resizes, max capacity %llu, final capacity "
               "%zu, shrinks seen %llu\n",
               (unsigned long long)sh->ops.load(), (unsigned long long)(st.resizes - resizes0),
               (unsigned long long)sh->max_capacity.load(), st.capacity,
               (unsigned long long)sh->shrinks_seen.load());
}

struct CasShared {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
};

// compare_exchange increments of a few hot keys from many processes, while others force
// resizes: no increment may be lost or doubled (a CAS on a migrating bucket must not succeed
// twice or vanish).
TEST_F(StressTest, CompareExchangeCountersThroughResizes) {
  const std::uint64_t seed = test_seed();
  ScopedName name("cas");
  Shared<CasShared> sh;
  constexpr int kIncrementers = 3;
  constexpr int kChurners = 2;
  const std::uint64_t increments = 200000 / kScale;
  constexpr std::uint64_t kHot = 4;
  Map m = Map::create(name, {.initial_capacity = 8});
  for (std::uint64_t j = 0; j < kHot; ++j) ASSERT_TRUE(m.insert(j, 0));

  std::vector<pid_t> incs, churns;
  for (int c = 0; c < kIncrementers; ++c) {
    incs.push_back(fork_child([&, c]() -> bool {
      Map x = Map::open(name);
      Rng rng(seed + 7 * std::uint64_t(c));
      sh->ready.fetch_add(1);
      while (!sh->go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (std::uint64_t n = 0; n < increments; ++n) {
        const std::uint64_t k = rng.below(kHot);
        for (;;) {
          const auto cur = x.find(k);
          CHILD_CHECK(cur.has_value(), "hot key %llu vanished", (unsigned long long)k);
          if (x.compare_exchange(k, *cur, *cur + 1)) break;
        }
      }
      return true;
    }));
  }
  for (int c = 0; c < kChurners; ++c) {
    churns.push_back(fork_child([&, c]() -> bool {
      Map x = Map::open(name);
      const std::uint64_t base = std::uint64_t(c + 1) << 32;
      sh->ready.fetch_add(1);
      while (!sh->go.load(std::memory_order_acquire)) std::this_thread::yield();
      // Grow to a few thousand keys and back, until the incrementers are done.
      while (!sh->stop.load(std::memory_order_acquire)) {
        for (std::uint64_t i = 0; i < 3000 / kScale; ++i) x.insert_or_assign(base + i, i);
        for (std::uint64_t i = 0; i < 3000 / kScale; ++i) x.erase(base + i);
      }
      return true;
    }));
  }
  ASSERT_TRUE(wait_until([&] { return sh->ready.load() == kIncrementers + kChurners; },
                         seconds(30 * kSlow)));
  const std::uint64_t resizes0 = m.stats().resizes;
  sh->go.store(true, std::memory_order_release);
  for (const pid_t p : incs) {
    const auto r = wait_for(p, seconds(90 * kSlow));
    EXPECT_TRUE(r.ok()) << "incrementer " << r.describe() << " (seed " << seed << ")";
  }
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t p : churns) {
    const auto r = wait_for(p, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "churner " << r.describe();
  }
  std::uint64_t total = 0;
  for (std::uint64_t j = 0; j < kHot; ++j) total += m.find(j).value_or(0);
  EXPECT_EQ(total, kIncrementers * increments)
      << "increments lost or doubled (seed " << seed << ")";
  EXPECT_GT(m.stats().resizes, resizes0) << "the churners should have resized the map";
  EXPECT_EQ(m.size(), kHot);
}

}  // namespace
}  // namespace shmap::test::mp
