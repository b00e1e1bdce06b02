// Position independence and cross-process visibility: two views of one segment in one process
// cross-check each other; special keys and values round-trip between processes; a process that
// attached to a small map reads a map grown by millions of keys under it.
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <limits>
#include <map>
#include <thread>
#include <unordered_map>
#include <vector>

#include "mp_util.hpp"

namespace shmap::test::mp {
namespace {

std::string problems(const CheckReport& r) {
  std::string s;
  for (const auto& p : r.problems) s += "\n  " + p;
  return s;
}

class ViewsTest : public MpTest {};

// Two Map objects on one segment in one process map it at different addresses; everything
// written through one must be read through the other, through growth and shrink.
TEST_F(ViewsTest, TwoViewsInOneProcessCrossCheck) {
  ScopedName name("views");
  Map a = Map::create(name, {.initial_capacity = 8});
  Map b = Map::open(name);

  EXPECT_EQ(a.stats().handles_in_use, 2u);
  for (const Map* m : {&a, &b}) {
    const auto rs = m->readers();
    ASSERT_EQ(rs.size(), 2u);
    int selves = 0;
    for (const auto& r : rs) {
      EXPECT_EQ(r.pid, ::getpid());
      EXPECT_TRUE(r.alive);
      selves += r.self ? 1 : 0;
    }
    EXPECT_EQ(selves, 1) << "each view owns exactly one slot";
    EXPECT_NE(rs[0].slot, rs[1].slot);
  }

  const std::uint64_t n = 20000 / kScale;
  for (std::uint64_t k = 0; k < n; ++k) {
    ASSERT_TRUE(a.insert(k, k * 7 + 1)) << k;
    // Read back through the other view at once, also in the middle of migrations.
    if (k % 97 == 0) {
      ASSERT_EQ(b.find(k), k * 7 + 1) << k;
    }
  }
  EXPECT_EQ(b.size(), n);
  for (std::uint64_t k = 0; k < n; ++k) ASSERT_EQ(b.find(k), k * 7 + 1) << k;
  EXPECT_GT(b.stats().resizes, 5u) << "growing from 8 buckets to " << n << " keys resizes";

  for (std::uint64_t k = 0; k < n; k += 2) ASSERT_FALSE(b.insert_or_assign(k, ~k)) << k;
  for (std::uint64_t k = 0; k < n; ++k) ASSERT_EQ(a.find(k), k % 2 == 0 ? ~k : k * 7 + 1) << k;

  EXPECT_FALSE(b.insert(1, 12345)) << "present through the other view";
  EXPECT_EQ(a.find(1), 8u);

  for (std::uint64_t k = 0; k < n; k += 3) {
    const std::uint64_t cur = k % 2 == 0 ? ~k : k * 7 + 1;
    ASSERT_TRUE(a.compare_exchange(k, cur, cur + 1)) << k;
    ASSERT_FALSE(b.compare_exchange(k, cur, 5)) << k << ": expected value is stale";
    ASSERT_EQ(b.find(k), cur + 1) << k;
  }

  const std::uint64_t counter = n + 1000;
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    Map& m = i % 2 == 0 ? a : b;
    ASSERT_EQ(m.fetch_add(counter, i), sum) << i;
    sum += i;
  }
  EXPECT_EQ(a.find(counter), sum);

  const std::uint64_t keep = 100;
  for (std::uint64_t k = 0; k + keep < n; ++k) {
    ASSERT_TRUE(b.erase(k)) << k;
    if (k % 101 == 0) {
      ASSERT_FALSE(a.contains(k)) << k;
      ASSERT_FALSE(a.erase(k)) << k;
    }
  }
  EXPECT_EQ(a.size(), keep + 1);
  std::unordered_map<std::uint64_t, int> seen;
  a.for_each([&](std::uint64_t k, std::uint64_t) { ++seen[k]; });
  EXPECT_EQ(seen.size(), keep + 1);
  for (const auto& [k, c] : seen) EXPECT_EQ(c, 1) << "key " << k << " visited " << c << " times";
  for (std::uint64_t k = n - keep; k < n; ++k) EXPECT_EQ(seen.count(k), 1u) << k;

  a.compact();
  EXPECT_LT(b.stats().capacity, 4096u) << "erasing down to " << keep << " keys shrinks the table";
  const auto ra = a.check();
  EXPECT_TRUE(ra.ok) << problems(ra);
  const auto rb = b.check();
  EXPECT_TRUE(rb.ok) << problems(rb);
}

// The same through two threads, one per view, racing on a shared counter and own ranges.
TEST_F(ViewsTest, TwoViewsTwoThreads) {
  ScopedName name("views2t");
  Map a = Map::create(name, {.initial_capacity = 8});
  Map b = Map::open(name);
  const std::uint64_t n = 30000 / kScale;
  const std::uint64_t counter = ~std::uint64_t{0} - 7;
  auto work = [&](Map& m, std::uint64_t base) {
    for (std::uint64_t i = 0; i < n; ++i) {
      m.insert_or_assign(base + i, i);
      m.fetch_add(counter, 1);
      if (i % 4 == 3) m.erase(base + i - 2);
    }
  };
  std::thread t1(work, std::ref(a), std::uint64_t{1} << 40);
  std::thread t2(work, std::ref(b), std::uint64_t{2} << 40);
  t1.join();
  t2.join();
  EXPECT_EQ(a.find(counter), 2 * n);
  for (const std::uint64_t base : {std::uint64_t{1} << 40, std::uint64_t{2} << 40}) {
    for (std::uint64_t i = 0; i < n; ++i) {
      const bool erased = i % 4 == 1 && i + 2 < n;
      for (const Map* m : {&a, &b}) {
        if (erased) {
          ASSERT_FALSE(m->contains(base + i)) << base + i;
        } else {
          ASSERT_EQ(m->find(base + i), i) << base + i;
        }
      }
    }
  }
  std::uint64_t expect_size = 1;
  for (std::uint64_t i = 0; i < n; ++i) expect_size += (i % 4 == 1 && i + 2 < n) ? 0 : 2;
  EXPECT_EQ(a.size(), expect_size);
  EXPECT_EQ(b.size(), expect_size);
}

std::vector<std::uint64_t> special_words() {
  return {
      0,
      1,
      std::numeric_limits<std::uint64_t>::max(),
      std::numeric_limits<std::uint64_t>::max() - 1,
      std::bit_cast<std::uint64_t>(-0.0),
      std::bit_cast<std::uint64_t>(std::numeric_limits<double>::quiet_NaN()),
      std::bit_cast<std::uint64_t>(-std::numeric_limits<double>::quiet_NaN()),
      std::bit_cast<std::uint64_t>(std::numeric_limits<double>::signaling_NaN()),
      std::bit_cast<std::uint64_t>(std::numeric_limits<double>::infinity()),
      0x00000000ffffffffULL,
      0xffffffff00000000ULL,
      2,
      3,
  };
}

// 0, 1, UINT64_MAX, UINT64_MAX-1, -0.0 and NaN bit patterns as keys and as values survive a
// trip through another process, growth and shrink (no value pattern is reserved).
TEST_F(ViewsTest, SpecialKeysAndValuesRoundTripAcrossProcesses) {
  ScopedName name("special");
  const std::vector<std::uint64_t> w = special_words();
  const std::size_t n = w.size();
  Map m = Map::create(name, {.initial_capacity = 8});

  // Child 1: writes k[i] -> w[i+1] (insert for half, insert_or_assign for the rest).
  auto r1 = run_child(
      [&]() -> bool {
        Map c = Map::open(name);
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint64_t v = w[(i + 1) % n];
          if (i % 2 == 0) {
            CHILD_CHECK(c.insert(w[i], v), "insert key %#llx", (unsigned long long)w[i]);
          } else {
            CHILD_CHECK(c.insert_or_assign(w[i], v), "insert_or_assign key %#llx",
                        (unsigned long long)w[i]);
          }
        }
        for (std::size_t i = 0; i < n; ++i) {
          CHILD_CHECK(c.find(w[i]) == w[(i + 1) % n], "read back key %#llx",
                      (unsigned long long)w[i]);
        }
        return true;
      },
      seconds(30 * kSlow));
  ASSERT_TRUE(r1.ok()) << "writer child " << r1.describe();

  EXPECT_EQ(m.size(), n);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_EQ(m.find(w[i]), w[(i + 1) % n]) << "key " << std::hex << w[i];
  }
  // Grow through many migrations with filler keys; the specials must survive them.
  const std::uint64_t filler = 5000 / kScale;
  for (std::uint64_t i = 0; i < filler; ++i) ASSERT_TRUE(m.insert(1000 + i, w[i % n]));
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(m.find(w[i]), w[(i + 1) % n]) << "after growth, key " << std::hex << w[i];
    ASSERT_TRUE(m.compare_exchange(w[i], w[(i + 1) % n], w[(i + 2) % n])) << std::hex << w[i];
    ASSERT_EQ(m.fetch_add(w[i], 0), w[(i + 2) % n]) << std::hex << w[i];
  }

  // Child 2: reads the parent's writes, shrinks the map, checks again, walks it.
  auto r2 = run_child(
      [&]() -> bool {
        Map c = Map::open(name);
        for (std::size_t i = 0; i < n; ++i) {
          CHILD_CHECK(c.find(w[i]) == w[(i + 2) % n], "key %#llx", (unsigned long long)w[i]);
        }
        for (std::uint64_t i = 0; i < filler; ++i) {
          CHILD_CHECK(c.find(1000 + i) == w[i % n], "filler %llu", (unsigned long long)i);
          CHILD_CHECK(c.erase(1000 + i), "erase filler %llu", (unsigned long long)i);
        }
        c.compact();
        std::map<std::uint64_t, std::vector<std::uint64_t>> seen;
        c.for_each([&](std::uint64_t k, std::uint64_t v) { seen[k].push_back(v); });
        CHILD_CHECK(seen.size() == n, "walk saw %zu keys, want %zu", seen.size(), n);
        for (std::size_t i = 0; i < n; ++i) {
          auto it = seen.find(w[i]);
          CHILD_CHECK(it != seen.end(), "walk missed key %#llx", (unsigned long long)w[i]);
          CHILD_CHECK(it->second.size() == 1 && it->second[0] == w[(i + 2) % n],
                      "walk: key %#llx visited %zu times", (unsigned long long)w[i],
                      it->second.size());
        }
        // Erase and re-insert each special key with its own pattern as value.
        for (std::size_t i = 0; i < n; ++i) {
          CHILD_CHECK(c.erase(w[i]), "erase %#llx", (unsigned long long)w[i]);
          CHILD_CHECK(!c.contains(w[i]), "erased %#llx still there", (unsigned long long)w[i]);
          CHILD_CHECK(c.insert(w[i], w[i]), "reinsert %#llx", (unsigned long long)w[i]);
        }
        return true;
      },
      seconds(30 * kSlow));
  ASSERT_TRUE(r2.ok()) << "reader child " << r2.describe();
  EXPECT_EQ(m.size(), n);
  for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(m.find(w[i]), w[i]) << std::hex << w[i];
  EXPECT_EQ(m.fetch_add(std::numeric_limits<std::uint64_t>::max(), 1),
            std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(m.find(std::numeric_limits<std::uint64_t>::max()), 0u) << "fetch_add wraps mod 2^64";
}

struct GrowthShared {
  std::atomic<int> attached{0};
  std::atomic<bool> grown{false};
  std::atomic<std::uint64_t> early_reads{0};
  std::atomic<std::uint64_t> early_segment_bytes{0};
};

std::uint64_t growth_value(std::uint64_t i) { return i * 0x9e3779b97f4a7c15ULL + 17; }

// A child attaches while the map is tiny and keeps reading while the parent grows the segment
// by millions of keys; then it reads them all through its lazily extended mapping.
TEST_F(ViewsTest, SegmentGrowsWhileAttached) {
  ScopedName name("grow");
  Shared<GrowthShared> sh;
  Map m = Map::create(name, {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 64; ++k) ASSERT_TRUE(m.insert(k, k + 1));
  const std::uint64_t big = 2'000'000 / kScale;
  const std::uint64_t base = 1ULL << 32;

  const pid_t pid = fork_child([&]() -> bool {
    Map c = Map::open(name);
    sh->early_segment_bytes.store(c.stats().segment_bytes);
    sh->attached.store(1, std::memory_order_release);
    do {  // reads of the first keys while the segment grows under this process
      for (std::uint64_t k = 0; k < 64; ++k) {
        CHILD_CHECK(c.find(k) == k + 1, "early key %llu", (unsigned long long)k);
      }
      sh->early_reads.fetch_add(1, std::memory_order_relaxed);
    } while (!sh->grown.load(std::memory_order_acquire));
    for (std::uint64_t i = 0; i < big; ++i) {
      const auto v = c.find(base + i);
      CHILD_CHECK(v == growth_value(i), "key %llu: %s", (unsigned long long)(base + i),
                  v ? "wrong value" : "missing");
    }
    CHILD_CHECK(c.size() == big + 64, "size %zu, want %llu", c.size(),
                (unsigned long long)(big + 64));
    const auto st = c.stats();
    CHILD_CHECK(st.segment_bytes > sh->early_segment_bytes.load(),
                "child sees segment_bytes %zu, not above %llu", st.segment_bytes,
                (unsigned long long)sh->early_segment_bytes.load());
    std::uint64_t walked = 0;
    c.for_each([&](std::uint64_t, std::uint64_t) { ++walked; });
    CHILD_CHECK(walked == big + 64, "walk saw %llu entries", (unsigned long long)walked);
    CHILD_CHECK(c.insert(7ULL << 50, 99), "child's own insert");
    return true;
  });
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_until([&] { return sh->attached.load() == 1; }, seconds(20 * kSlow)))
      << "child never attached";
  const std::size_t seg0 = m.stats().segment_bytes;
  for (std::uint64_t i = 0; i < big; ++i) ASSERT_TRUE(m.insert(base + i, growth_value(i))) << i;
  const std::size_t seg1 = m.stats().segment_bytes;
  EXPECT_GT(seg1, seg0 * 16) << "segment grew from " << seg0 << " bytes";
  sh->grown.store(true, std::memory_order_release);
  const auto r = wait_for(pid, seconds(60 * kSlow));
  EXPECT_TRUE(r.ok()) << "reader child " << r.describe();
  EXPECT_GT(sh->early_reads.load(), 0u);
  EXPECT_EQ(m.find(7ULL << 50), 99u);
  EXPECT_EQ(m.size(), big + 65);
}

}  // namespace
}  // namespace shmap::test::mp
