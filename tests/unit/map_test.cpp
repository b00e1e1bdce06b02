// The public Map in one process: operations, full key/value domain, growth and shrink, two
// views of one segment, errors on open/create, and the self-describing header.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <thread>

#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap {
namespace {

using test::ScopedName;

TEST(Map, BasicOperations) {
  ScopedName n("basic");
  auto m = Map::create(n);
  EXPECT_TRUE(m.empty());
  EXPECT_FALSE(m.find(1));
  EXPECT_TRUE(m.insert(1, 10));
  EXPECT_FALSE(m.insert(1, 11));  // present: unchanged
  EXPECT_EQ(m.find(1), 10u);
  EXPECT_FALSE(m.insert_or_assign(1, 12));  // assigned, not inserted
  EXPECT_EQ(m.find(1), 12u);
  EXPECT_TRUE(m.insert_or_assign(2, 20));
  EXPECT_TRUE(m.contains(2));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_FALSE(m.compare_exchange(1, 99, 13));
  EXPECT_EQ(m.find(1), 12u);
  EXPECT_TRUE(m.compare_exchange(1, 12, 13));
  EXPECT_EQ(m.find(1), 13u);
  EXPECT_FALSE(m.compare_exchange(3, 0, 1));  // absent: put-if-match fails, nothing inserted
  EXPECT_FALSE(m.contains(3));
  EXPECT_EQ(m.fetch_add(3, 5), 0u);  // absent counts as 0 and is inserted
  EXPECT_EQ(m.fetch_add(3, 5), 5u);
  EXPECT_EQ(m.find(3), 10u);
  EXPECT_TRUE(m.erase(1));
  EXPECT_FALSE(m.erase(1));
  EXPECT_FALSE(m.find(1));
  EXPECT_TRUE(m.insert(1, 14));  // reinsert after erase
  EXPECT_EQ(m.find(1), 14u);
  EXPECT_EQ(m.size(), 3u);
  EXPECT_EQ(m.name(), n.str());
}

TEST(Map, FindManyAgreesWithFind) {
  ScopedName n("findmany");
  auto m = Map::create(n, {.initial_capacity = 8});
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  std::vector<std::uint64_t> keys = {0, kMax, kMax - 1};
  for (std::uint64_t i = 1; i <= 5000; ++i) keys.push_back(i * 0x9e3779b97f4a7c15ULL);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i % 3 != 2) m.insert(keys[i], i);  // one key in three never inserted
    if (i % 7 == 0) m.erase(keys[i]);      // and some erased again
  }
  std::vector<std::optional<std::uint64_t>> out(keys.size(), 12345);
  std::size_t want = 0;
  for (const std::uint64_t k : keys) want += m.contains(k) ? 1 : 0;
  EXPECT_EQ(m.find_many(keys, out), want);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(out[i], m.find(keys[i])) << "key " << keys[i];
  }
  EXPECT_GT(want, keys.size() / 3);
  // Every length up to two groups and one key, from 0.
  for (std::size_t len = 0; len <= 2 * detail::MapImpl::kFindGroup + 1; ++len) {
    std::vector<std::optional<std::uint64_t>> part(len);
    std::size_t hits = 0;
    for (std::size_t i = 0; i < len; ++i) hits += m.contains(keys[i]) ? 1 : 0;
    EXPECT_EQ(m.find_many(std::span(keys).first(len), part), hits) << "length " << len;
  }
  // Too little room for the results: an error, and nothing written.
  std::vector<std::optional<std::uint64_t>> small(2, 777);
  try {
    m.find_many(std::span(keys).first(3), small);
    ADD_FAILURE() << "expected invalid_argument";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("find_many"), std::string::npos) << e.what();
  }
  EXPECT_EQ(small[0], 777u);
  EXPECT_EQ(small[1], 777u);
}

TEST(Map, FullDomainKeysAndValues) {
  ScopedName n("domain");
  auto m = Map::create(n, {.initial_capacity = 8});
  const std::uint64_t specials[] = {
      0,
      1,
      2,
      std::numeric_limits<std::uint64_t>::max(),
      std::numeric_limits<std::uint64_t>::max() - 1,
      std::bit_cast<std::uint64_t>(-0.0),
      std::bit_cast<std::uint64_t>(std::numeric_limits<double>::quiet_NaN()),
      0x8000000000000000ULL,
      0x7fffffffffffffffULL};
  for (const auto k : specials) {
    for (const auto v : specials) {
      m.insert_or_assign(k, v);
      ASSERT_EQ(m.find(k), v) << k << " -> " << v;
    }
  }
  // Every special as key with every special as value, through growth.
  for (std::size_t i = 0; i < std::size(specials); ++i)
    m.insert_or_assign(specials[i], specials[i]);
  for (std::uint64_t i = 1000; i < 5000; ++i) m.insert(i, i);
  for (const auto k : specials) EXPECT_EQ(m.find(k), k);
  EXPECT_EQ(m.fetch_add(std::numeric_limits<std::uint64_t>::max(), 2),
            std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(m.find(std::numeric_limits<std::uint64_t>::max()), 1u);  // wraps mod 2^64
}

TEST(Map, GrowsAndShrinksAndGivesMemoryBack) {
  ScopedName n("grow");
  auto m = Map::create(n, {.initial_capacity = 8});
  const std::uint64_t N = 300000;
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_TRUE(m.insert(i * 7919, i));
  const Stats big = m.stats();
  EXPECT_EQ(big.size, N);
  EXPECT_GE(big.capacity, N);
  EXPECT_GT(big.resizes, 10u);
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_EQ(m.find(i * 7919), i);
  for (std::uint64_t i = 0; i < N - 100; ++i) ASSERT_TRUE(m.erase(i * 7919));
  m.compact();
  const Stats small = m.stats();
  EXPECT_EQ(small.size, 100u);
  EXPECT_LE(small.capacity, 1024u);
  EXPECT_EQ(small.tables, 1u);
  EXPECT_EQ(small.retired_pending, 0u);
  EXPECT_LT(small.allocated_bytes, big.allocated_bytes / 8);
  for (std::uint64_t i = N - 100; i < N; ++i) ASSERT_EQ(m.find(i * 7919), i);
  for (std::uint64_t i = 0; i < N - 100; i += 97) ASSERT_FALSE(m.contains(i * 7919));
  EXPECT_TRUE(m.check().ok);
}

// Format 6: compact() fits the table to its entries with a capacity between powers of two
// (load at most 0.7), every key stays where a lookup, a walk, find_many and check() find it,
// and growth from there doubles again.
TEST(Map, CompactFitsTheTableBetweenPowersOfTwo) {
  ScopedName n("fit");
  auto m = Map::create(n, {.initial_capacity = 8});
  constexpr std::uint64_t N = 1 << 14;
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_TRUE(m.insert(i * 7919, i));
  const Stats grown = m.stats();
  EXPECT_EQ(grown.capacity, 2 * N) << "growth doubles: 2^14 keys in 2^15 buckets";
  m.compact();
  const Stats fitted = m.stats();
  EXPECT_EQ(fitted.capacity, detail::next_capacity(N * 10 / 7 + 2));
  EXPECT_EQ(fitted.capacity, 3 * N / 2) << "1.5 * 2^14: the smallest capacity at load <= 0.7";
  EXPECT_EQ(fitted.size, N);
  EXPECT_EQ(fitted.tables, 1u);
  EXPECT_LT(fitted.allocated_bytes, grown.allocated_bytes * 4 / 5);
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_EQ(m.find(i * 7919), i) << i;
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_FALSE(m.contains(i * 7919 + 1)) << i;
  std::vector<std::uint64_t> keys(N);
  for (std::uint64_t i = 0; i < N; ++i) keys[i] = i * 7919;
  std::vector<std::optional<std::uint64_t>> got(N);
  EXPECT_EQ(m.find_many(keys, got), N);
  for (std::uint64_t i = 0; i < N; ++i) ASSERT_EQ(got[i], i) << i;
  std::size_t walked = 0;
  m.for_each([&](std::uint64_t k, std::uint64_t v) { walked += k == v * 7919 ? 1 : 0; });
  EXPECT_EQ(walked, N);
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  m.compact();  // already fitted: stays
  EXPECT_EQ(m.stats().capacity, fitted.capacity);
  // Writes go on in the fitted table, and past its limit it grows by doubling.
  for (std::uint64_t i = N; i < 2 * N; ++i) ASSERT_TRUE(m.insert(i * 7919, i));
  m.compact();
  for (std::uint64_t i = 0; i < 2 * N; ++i) ASSERT_EQ(m.find(i * 7919), i) << i;
  EXPECT_EQ(m.size(), 2 * N);
  EXPECT_EQ(m.stats().capacity, 3 * N);
  EXPECT_TRUE(m.check().ok);
}

TEST(Map, TombstonesArePurged) {
  ScopedName n("tombs");
  auto m = Map::create(n, {.initial_capacity = 1024});
  // Insert/erase churn over ever new keys: tombstones fill the table; it must not grow.
  for (std::uint64_t i = 0; i < 200000; ++i) {
    ASSERT_TRUE(m.insert(i, i));
    ASSERT_TRUE(m.erase(i));
  }
  EXPECT_EQ(m.size(), 0u);
  EXPECT_LE(m.stats().capacity, 1024u);
}

TEST(Map, ForEachVisitsEachEntryOnce) {
  ScopedName n("foreach");
  auto m = Map::create(n, {.initial_capacity = 8});
  std::map<std::uint64_t, std::uint64_t> want;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t k = rng();
    want[k] = i;
    m.insert_or_assign(k, static_cast<std::uint64_t>(i));
  }
  std::map<std::uint64_t, std::uint64_t> seen;
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    EXPECT_TRUE(seen.emplace(k, v).second) << "key visited twice: " << k;
  });
  EXPECT_EQ(seen, want);
}

TEST(Map, ForEachCallbackMayWriteAndResize) {
  ScopedName n("foreach-write");
  auto m = Map::create(n, {.initial_capacity = 8});
  for (std::uint64_t i = 0; i < 1000; ++i) m.insert(i, i);
  std::vector<int> visited(1000, 0);
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    if (k >= 1000000) return;  // inserted during the walk: may or may not be visited
    EXPECT_EQ(k, v);
    ++visited.at(k);
    m.insert(k + 1000000, k);  // grows the map during the walk
  });
  for (int c : visited) EXPECT_EQ(c, 1);
  EXPECT_EQ(m.size(), 2000u);
}

TEST(Map, TwoViewsOfOneSegmentInOneProcess) {
  ScopedName n("views");
  auto a = Map::create(n, {.initial_capacity = 8});
  auto b = Map::open(n);
  // Different mappings of the same object.
  EXPECT_NE(&a.impl().header(), &b.impl().header());
  for (std::uint64_t i = 0; i < 50000; ++i) {
    (i % 2 ? a : b).insert(i, i * 3);
  }
  for (std::uint64_t i = 0; i < 50000; ++i) {
    ASSERT_EQ((i % 2 ? b : a).find(i), i * 3);
  }
  EXPECT_TRUE(a.erase(7));
  EXPECT_FALSE(b.contains(7));
  EXPECT_EQ(a.stats().handles_in_use, 2u);
  EXPECT_EQ(a.size(), b.size());
}

TEST(Map, MoveOnlyHandle) {
  ScopedName n("move");
  auto a = Map::create(n);
  a.insert(1, 2);
  Map b = std::move(a);
  EXPECT_EQ(b.find(1), 2u);
  Map c = Map::open(n);
  c = std::move(b);
  EXPECT_EQ(c.stats().handles_in_use, 1u);  // the moved-over handle was closed
}

using test::code_of;

TEST(Map, CreateOpenRemoveErrors) {
  ScopedName n("errors");
  EXPECT_EQ(code_of([&] { Map::open(n); }), Errc::not_found);
  auto m = Map::create(n);
  EXPECT_EQ(code_of([&] { Map::create(n); }), Errc::already_exists);
  EXPECT_NO_THROW(Map::open(n));
  EXPECT_NO_THROW(Map::open_or_create(n));
  EXPECT_EQ(code_of([] { Map::open("bad/name"); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([] { Map::create(""); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([] { Map::remove(".."); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { Map::create(n.str() + "x", {.initial_capacity = 0}); }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { Map::create(n.str() + "x", {.max_handles = 0}); }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { Map::create(n.str() + "x", {.mode = 01777}); }), Errc::invalid_argument);
  EXPECT_FALSE(Map::open(n).contains(1));
  EXPECT_TRUE(Map::remove(n));
  EXPECT_FALSE(Map::remove(n));
  // Attached handles keep working after the name is removed.
  m.insert(1, 1);
  EXPECT_EQ(m.find(1), 1u);
}

TEST(Map, ModeBitsAreExact) {
  ScopedName n("mode");
  const mode_t old = ::umask(077);
  auto m = Map::create(n, {.mode = 0644});
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + n.str()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_EQ(m.stats().options.mode, 0644u);
}

TEST(Map, HandlesExhausted) {
  ScopedName n("slots");
  auto a = Map::create(n, {.max_handles = 2});
  auto b = Map::open(n);
  try {
    Map::open(n);
    FAIL() << "third handle opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::handles_exhausted);
    EXPECT_NE(std::string(e.what()).find(n.str()), std::string::npos);
  }
  { Map tmp = std::move(b); }  // closing frees a slot
  EXPECT_NO_THROW(Map::open(n));
}

TEST(Map, MaxBytesIsOutOfSpaceAndLosesNothing) {
  ScopedName n("maxbytes");
  auto m = Map::create(n, {.initial_capacity = 8, .max_bytes = std::size_t{2} << 20});
  std::uint64_t inserted = 0;
  try {
    for (;; ++inserted) m.insert(inserted, inserted + 1);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_space);
    EXPECT_NE(std::string(e.what()).find("max_bytes"), std::string::npos);
  }
  EXPECT_GT(inserted, 1000u);
  for (std::uint64_t i = 0; i < inserted; ++i) ASSERT_EQ(m.find(i), i + 1);
  EXPECT_TRUE(m.erase(0));  // still usable
  EXPECT_TRUE(m.check().ok);
}

TEST(Map, RefusesOtherVersionsLayoutsAndForeignObjects) {
  ScopedName n("header");
  { Map::create(n); }
  poke_header(n, [](detail::SegmentHeader& h) { h.format_version = 99; });
  EXPECT_EQ(code_of([&] { Map::open(n); }), Errc::version_mismatch);
  poke_header(n, [](detail::SegmentHeader& h) {
    h.format_version = detail::kFormatVersion;
    h.layout_signature ^= 1;
  });
  EXPECT_EQ(code_of([&] { Map::open(n); }), Errc::layout_mismatch);
  poke_header(n, [](detail::SegmentHeader& h) {
    h.layout_signature ^= 1;
    h.magic = __builtin_bswap64(detail::kMagic);
  });
  EXPECT_EQ(code_of([&] { Map::open(n); }), Errc::layout_mismatch);
  poke_header(n, [](detail::SegmentHeader& h) { h.magic = 0x1234; });
  try {
    Map::open(n);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::corrupt);
    EXPECT_NE(std::string(e.what()).find(n.str()), std::string::npos);
  }
  // A short foreign file.
  ScopedName f("foreign");
  const int fd = ::open(("/dev/shm/" + f.str()).c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "hello", 5), 5);
  ::close(fd);
  EXPECT_EQ(code_of([&] { Map::open(f); }), Errc::corrupt);
  EXPECT_EQ(code_of([&] { Map::open_or_create(f); }), Errc::corrupt);
}

TEST(Map, ListFindsSegments) {
  ScopedName n("list");
  auto m = Map::create(n);
  const auto names = Map::list();
  EXPECT_NE(std::find(names.begin(), names.end(), n.str()), names.end());
}

TEST(Map, StatsAndReaders) {
  ScopedName n("stats");
  auto m = Map::create(n, {.initial_capacity = 100, .max_handles = 7});
  const Stats s = m.stats();
  EXPECT_EQ(s.capacity, 128u);
  EXPECT_EQ(s.max_handles, 7u);
  EXPECT_EQ(s.handles_in_use, 1u);
  EXPECT_EQ(s.tables, 1u);
  EXPECT_EQ(s.format_version, detail::kFormatVersion);
  EXPECT_EQ(s.options.initial_capacity, 128u);
  const auto r = m.readers();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].pid, ::getpid());
  EXPECT_TRUE(r[0].alive);
  EXPECT_TRUE(r[0].self);
  EXPECT_EQ(r[0].pinned_lanes, 0u);
}

// ---- Map::Session --------------------------------------------------------------------------

TEST(Session, AnswersAsFindDoes) {
  ScopedName name("session");
  Map m = Map::create(name, {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 5000; k += 2) m.insert(k, k * 3);
  Map::Session s(m);
  for (std::uint64_t k = 0; k < 6000; ++k) {
    ASSERT_EQ(s.find(k), m.find(k)) << "key " << k;
    ASSERT_EQ(s.contains(k), k < 5000 && k % 2 == 0);
  }
}

// The session's view of the current table goes stale while another thread grows and shrinks
// the map from capacity 8: keys that stay in the map must always be found with their value,
// and keys never inserted never found, whichever table the view points at.
TEST(Session, StaysRightWhileTheMapGrowsAndShrinksUnderIt) {
  ScopedName name("session-churn");
  Map m = Map::create(name, {.initial_capacity = 8});
  constexpr std::uint64_t kStable = 64;
  for (std::uint64_t k = 0; k < kStable; ++k) m.insert(k, k + 1000);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> cycles{0};
  std::thread churner([&] {
    const std::uint64_t base = std::uint64_t{1} << 40;
    while (!stop.load(std::memory_order_relaxed)) {
      for (std::uint64_t i = 0; i < 3000; ++i) m.insert(base + i, i);
      for (std::uint64_t i = 0; i < 3000; ++i) m.erase(base + i);
      cycles.fetch_add(1, std::memory_order_relaxed);
    }
  });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop.store(true);
      t.join();
    }
  } join{stop, churner};
  const std::uint64_t resizes0 = m.stats().resizes;
  std::uint64_t lookups = 0;
  while (cycles.load(std::memory_order_relaxed) < 20) {
    Map::Session s(m);  // one session per 2,000 lookups: views go stale inside each
    for (int r = 0; r < 1000; ++r, lookups += 2) {
      const std::uint64_t k = static_cast<std::uint64_t>(r) % kStable;
      ASSERT_EQ(s.find(k), k + 1000) << "stable key " << k << " after " << lookups;
      ASSERT_FALSE(s.find(kStable + k).has_value()) << "never-inserted key " << kStable + k;
    }
  }
  EXPECT_GT(m.stats().resizes - resizes0, 20u) << "the map should have resized under the session";
}

TEST(Session, BelongsToTheThreadThatMadeIt) {
  ScopedName name("session-thread");
  Map m = Map::create(name);
  m.insert(1, 2);
  Map::Session s(m);
  EXPECT_EQ(s.find(1), 2u);
  std::optional<Errc> code;
  std::thread other([&] {
    try {
      (void)s.find(1);
    } catch (const Error& e) {
      code = e.code();
    }
  });
  other.join();
  EXPECT_EQ(code, Errc::invalid_argument);
}

// A session is a real pin: tables retired while it lasts are kept until it ends.
TEST(Session, HoldsRetiredTablesUntilItEnds) {
  ScopedName name("session-pin");
  Map m = Map::create(name, {.initial_capacity = 8});
  Map writer = Map::open(name);  // another handle, as another process would be
  {
    Map::Session s(m);
    EXPECT_FALSE(s.find(1).has_value());
    for (std::uint64_t k = 0; k < 10000; ++k) writer.insert(k, k);
    writer.compact();
    EXPECT_GT(writer.stats().retired_pending, 0u) << "retired tables freed under a session";
    EXPECT_EQ(s.find(9999), 9999u);
  }
  writer.compact();
  EXPECT_EQ(writer.stats().retired_pending, 0u);
}

}  // namespace
}  // namespace shmap
