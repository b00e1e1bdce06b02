// Snapshot round trips: every size and every corner of the key/value domain, binary and JSON,
// and the three load modes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <limits>
#include <random>

#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

void fill(Map& m, const Content& c) {
  for (const auto& [k, v] : c) m.insert_or_assign(k, v);
}

/// Keys and values at every edge: 0, 1, 2^53 +- 1 (where doubles lose exactness), 2^63, max.
Content full_domain() {
  Content c;
  const std::uint64_t edges[] = {0,
                                 1,
                                 2,
                                 (std::uint64_t{1} << 53) - 1,
                                 std::uint64_t{1} << 53,
                                 (std::uint64_t{1} << 53) + 1,
                                 (std::uint64_t{1} << 63) - 1,
                                 std::uint64_t{1} << 63,
                                 kMax - 1,
                                 kMax};
  for (const auto k : edges) {
    for (const auto v : edges) c[k ^ (v * 0x9E3779B97F4A7C15ULL)] = v;
    c[k] = kMax - k;
  }
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000; ++i) c[rng()] = rng();
  return c;
}

class RoundTrip : public ::testing::TestWithParam<bool> {};  // param: JSON form

void round_trip(const Content& c, bool json, std::size_t initial_capacity = 1024) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map m = Map::create(src, {.initial_capacity = initial_capacity});
  fill(m, c);
  const std::string file = dir.path(json ? "snap.json" : "snap.shmap");
  m.dump(file, {.json = json});
  EXPECT_EQ(dir.files(), std::vector<std::string>{json ? "snap.json" : "snap.shmap"})
      << "the temporary file must be gone";
  Map loaded = Map::load(file, dst);
  EXPECT_EQ(loaded.name(), dst.str());
  EXPECT_EQ(loaded.size(), c.size());
  EXPECT_TRUE(contents(loaded) == c);
  if (!json) {
    const Entries raw = read_raw(file);
    EXPECT_EQ(raw.size(), c.size());
    EXPECT_TRUE(Content(raw.begin(), raw.end()) == c);
  }
  EXPECT_TRUE(loaded.check().ok);
  // The map opens normally by name afterwards.
  EXPECT_EQ(Map::open(dst).size(), c.size());
  EXPECT_TRUE(staging_segments().empty());
}

TEST_P(RoundTrip, Empty) { round_trip({}, GetParam()); }

TEST_P(RoundTrip, OneEntry) { round_trip({{42, 7}}, GetParam()); }

TEST_P(RoundTrip, FullDomainKeysAndValues) { round_trip(full_domain(), GetParam()); }

TEST_P(RoundTrip, ChunkBoundaries) {
  // 4096 entries per chunk: exactly one chunk, one more, and one less than two.
  for (const std::size_t n : {4095u, 4096u, 4097u, 8191u, 8192u}) {
    Content c;
    for (std::size_t i = 0; i < n; ++i) c[i * 0x9E3779B97F4A7C15ULL] = i;
    round_trip(c, GetParam());
  }
}

TEST_P(RoundTrip, Large) {
  const std::size_t n = GetParam() ? 50'000 : (std::size_t{1} << 20) + 12'345;
  Content c;
  std::mt19937_64 rng(11);
  while (c.size() < n) c[rng()] = rng();
  round_trip(c, GetParam(), 16);  // small start: the source grows through many resizes
}

INSTANTIATE_TEST_SUITE_P(Snapshot, RoundTrip, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "json" : "binary"; });

TEST(Snapshot, HeaderStartsWithMagicAndVersion) {
  TempDir dir;
  ScopedName src("src");
  Map m = Map::create(src);
  m.insert_or_assign(1, 2);
  m.dump(dir.path("a"));
  const std::string b = read_file(dir.path("a"));
  ASSERT_GE(b.size(), 16u);
  EXPECT_EQ(b.substr(0, 8), "SHMAPSNP");
  EXPECT_EQ(b[8], 1);
  EXPECT_EQ(b.substr(b.size() - 8), "SHMAPEND");
  EXPECT_EQ(b.size(), layout_of(b).footer + 40);
}

TEST(Snapshot, JsonKeepsValuesAbove2To53Exactly) {
  TempDir dir;
  ScopedName src("src");
  Map m = Map::create(src);
  m.insert_or_assign(kMax, (std::uint64_t{1} << 53) + 1);
  m.dump(dir.path("a.json"), {.json = true});
  const std::string text = read_file(dir.path("a.json"));
  EXPECT_NE(text.find("18446744073709551615"), std::string::npos) << text;
  EXPECT_NE(text.find("9007199254740993"), std::string::npos) << text;
}

TEST(Snapshot, ReplaceSwapsTheWholeContent) {
  for (const bool json : {false, true}) {
    TempDir dir;
    ScopedName src("src"), dst("dst");
    Map a = Map::create(src);
    fill(a, {{1, 10}, {2, 20}, {3, 30}});
    a.dump(dir.path("s"), {.json = json});
    Map b = Map::create(dst);
    for (std::uint64_t k = 100; k < 5000; ++k) b.insert_or_assign(k, k);
    Map r = Map::load(dir.path("s"), dst, load_mode(LoadOptions::Mode::replace));
    EXPECT_TRUE(contents(r) == (Content{{1, 10}, {2, 20}, {3, 30}}));
    // The handle that was open before sees the new content too.
    EXPECT_TRUE(contents(b) == (Content{{1, 10}, {2, 20}, {3, 30}}));
    EXPECT_EQ(b.size(), 3u);
    EXPECT_TRUE(r.check().ok);
  }
}

TEST(Snapshot, ReplaceWithAnEmptySnapshotEmptiesTheMap) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map a = Map::create(src);
  a.dump(dir.path("s"));
  Map b = Map::create(dst);
  fill(b, {{5, 5}});
  Map::load(dir.path("s"), dst, load_mode(LoadOptions::Mode::replace));
  EXPECT_TRUE(contents(b).empty());
}

TEST(Snapshot, MergeKeepsOtherKeysAndTheFileWins) {
  for (const bool json : {false, true}) {
    TempDir dir;
    ScopedName src("src"), dst("dst");
    Map a = Map::create(src);
    fill(a, {{1, 10}, {2, 20}});
    a.dump(dir.path("s"), {.json = json});
    Map b = Map::create(dst);
    fill(b, {{2, 99}, {3, 30}});
    Map::load(dir.path("s"), dst, load_mode(LoadOptions::Mode::merge));
    EXPECT_TRUE(contents(b) == (Content{{1, 10}, {2, 20}, {3, 30}}));
  }
}

TEST(Snapshot, CreateRefusesAnExistingNameAndChangesNothing) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map a = Map::create(src);
  fill(a, {{1, 10}});
  a.dump(dir.path("s"));
  Map b = Map::create(dst);
  fill(b, {{7, 70}});
  try {
    Map::load(dir.path("s"), dst);
    FAIL() << "load over an existing map must fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::already_exists) << e.what();
  }
  EXPECT_TRUE(contents(b) == (Content{{7, 70}}));
  EXPECT_TRUE(staging_segments().empty());
}

TEST(Snapshot, ReplaceAndMergeNeedAnExistingMap) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map a = Map::create(src);
  a.dump(dir.path("s"));
  for (auto mode : {LoadOptions::Mode::replace, LoadOptions::Mode::merge}) {
    try {
      Map::load(dir.path("s"), dst, load_mode(mode));
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::not_found) << e.what();
    }
  }
}

TEST(Snapshot, CreateUsesTheGivenOptions) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map a = Map::create(src);
  for (std::uint64_t k = 0; k < 3000; ++k) a.insert_or_assign(k, k);
  a.dump(dir.path("s"));
  Map b = Map::load(dir.path("s"), dst, {.options = {.max_handles = 9, .mode = 0640}});
  const Stats s = b.stats();
  EXPECT_EQ(s.options.max_handles, 9u);
  EXPECT_EQ(s.options.mode, 0640u);
  EXPECT_GE(s.capacity, 3000u) << "the table is sized for the snapshot";
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + dst.str()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

TEST(Snapshot, DumpOverwritesAnOldFileAtomically) {
  TempDir dir;
  ScopedName src("src");
  Map a = Map::create(src);
  fill(a, {{1, 1}});
  a.dump(dir.path("s"));
  fill(a, {{2, 2}});
  a.dump(dir.path("s"));
  EXPECT_EQ(read_raw(dir.path("s")).size(), 2u);
  EXPECT_EQ(dir.files().size(), 1u);
}

TEST(Snapshot, DumpIntoAMissingDirectoryFails) {
  ScopedName src("src");
  Map a = Map::create(src);
  try {
    a.dump("/nonexistent-dir-for-shmap/x.snap");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::not_found) << e.what();
    EXPECT_NE(std::string(e.what()).find("x.snap"), std::string::npos) << e.what();
  }
}

TEST(Snapshot, ProgressIsReported) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  Map a = Map::create(src);
  for (std::uint64_t k = 0; k < 20000; ++k) a.insert_or_assign(k, k);
  struct Seen {
    std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> last;
  } seen;
  detail::set_snapshot_progress(
      [](void* ctx, const char* phase, std::uint64_t done, std::uint64_t total) {
        static_cast<Seen*>(ctx)->last[phase] = {done, total};
      },
      &seen);
  a.dump(dir.path("s"));
  Map::load(dir.path("s"), dst);
  detail::set_snapshot_progress(nullptr, nullptr);
  EXPECT_EQ(seen.last["dump"], std::make_pair(std::uint64_t{20000}, std::uint64_t{20000}));
  const auto size = read_file(dir.path("s")).size();
  EXPECT_EQ(seen.last["verify"], std::make_pair(std::uint64_t{size}, std::uint64_t{size}));
  EXPECT_EQ(seen.last["load"], std::make_pair(std::uint64_t{size}, std::uint64_t{size}));
}

}  // namespace
}  // namespace shmap::test
