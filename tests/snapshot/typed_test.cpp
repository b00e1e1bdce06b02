// Snapshots of typed maps (version 2): round trips of every value size, the types checked on
// load, damaged and truncated files (nothing created), the golden file of an earlier build.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "golden_typed.hpp"
#include "shmap/typed_map.hpp"
#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

/// N bytes computed from a key and a generation.
template <std::size_t N>
struct Bytes {
  std::array<unsigned char, N> b;
  static Bytes make(std::uint64_t k, std::uint64_t gen) {
    Bytes x;
    for (std::size_t i = 0; i < N; ++i) {
      x.b[i] = static_cast<unsigned char>((k >> (8 * (i % 8))) * 131 + gen * 17 + i);
    }
    return x;
  }
  bool operator==(const Bytes&) const = default;
};

bool exists(const std::string& name) { return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0; }

template <std::size_t N>
void round_trip(bool point_in_time) {
  using V = Bytes<N>;
  using M = TypedMap<std::int64_t, V>;
  TempDir dir;
  ScopedName from("from"), to("to");
  std::map<std::int64_t, V> want;
  {
    M m = M::create(from, {.initial_capacity = 8});
    for (std::int64_t i = 0; i < 3000; ++i) {
      const std::int64_t k = i % 2 == 0 ? -i * 1000003 : i * 7;
      want[k] = V::make(static_cast<std::uint64_t>(k), 1);
      m.insert_or_assign(k, want[k]);
    }
    for (std::int64_t i = 0; i < 3000; i += 3) {  // some erased, some replaced
      const std::int64_t k = i % 2 == 0 ? -i * 1000003 : i * 7;
      if (i % 2 == 0) {
        m.erase(k);
        want.erase(k);
      } else {
        want[k] = V::make(static_cast<std::uint64_t>(k), 2);
        m.insert_or_assign(k, want[k]);
      }
    }
    m.dump(dir.path("t.shmap"), {.point_in_time = point_in_time});
  }
  M back = M::load(dir.path("t.shmap"), to);
  EXPECT_EQ(back.size(), want.size());
  std::size_t same = 0;
  back.for_each([&](const std::int64_t& k, const V& v) {
    const auto it = want.find(k);
    same += it != want.end() && it->second == v;
  });
  EXPECT_EQ(same, want.size()) << N << "-byte values";
  RecordStats rs;
  EXPECT_TRUE(back.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
}

TEST(TypedSnapshot, RoundTripsEveryValueSize) {
  round_trip<1>(false);
  round_trip<8>(false);
  round_trip<9>(true);
  round_trip<64>(false);
  round_trip<300>(true);
  round_trip<4080>(false);
}

TEST(TypedSnapshot, TheTypesAreCheckedBeforeAnythingIsCreated) {
  struct A {
    std::uint64_t x, y;
  };
  struct B {
    std::uint64_t x, y;
  };
  TempDir dir;
  ScopedName src("src"), dst("dst");
  {
    auto m = TypedMap<std::uint64_t, A>::create(src);
    m.insert_or_assign(1, A{2, 3});
    m.dump(dir.path("a.shmap"));
  }
  // Same size, another type: refused, and no map appears.
  try {
    TypedMap<std::uint64_t, B>::load(dir.path("a.shmap"), dst);
    ADD_FAILURE() << "loaded A's snapshot as B";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::layout_mismatch);
    EXPECT_NE(std::string(e.what()).find("(16 bytes), the map wanted holds uint64 -> "),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(exists(dst.str()));
  // Its own type loads it, although the name (a local struct's, longer than the 47 bytes a
  // segment keeps) is cut: the hash of the whole name travels with it.
  ASSERT_GT(TypeName<A>::value.size(), 47u);
  EXPECT_EQ((TypedMap<std::uint64_t, A>::load(dir.path("a.shmap"), dst).find(1)->y), 3u);
  EXPECT_EQ((TypedMap<std::uint64_t, A>::open(dst).size()), 1u);
  Map::remove(dst);
  // A uint64 Map cannot take a typed snapshot; a typed map cannot take a uint64 one.
  EXPECT_EQ(code_of([&] { Map::load(dir.path("a.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  {
    Map u = Map::create(dst);
    u.insert_or_assign(5, 6);
    u.dump(dir.path("u.shmap"));
  }
  Map::remove(dst);
  EXPECT_EQ(code_of([&] { TypedMap<std::uint64_t, A>::load(dir.path("u.shmap"), dst); }),
            Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  // DynamicMap loads either kind.
  DynamicMap any = DynamicMap::load(dir.path("u.shmap"), dst);
  std::uint64_t v = 0;
  ASSERT_TRUE(any.find(5, &v));
  EXPECT_EQ(v, 6u);
  // A u64 map through DynamicMap::dump writes version 1, which Map::load reads.
  any.dump(dir.path("u2.shmap"));
  Map::remove(dst);
  EXPECT_EQ(Map::load(dir.path("u2.shmap"), dst).find(5), 6u);
  // Not yet: JSON, replace, merge. Each says so, and changes nothing.
  auto a = TypedMap<std::uint64_t, A>::open(src);
  EXPECT_EQ(code_of([&] { a.dump(dir.path("a.json"), {.json = true}); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([&] {
              DynamicMap::load(dir.path("a.shmap"), src, load_mode(LoadOptions::Mode::replace));
            }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { DynamicMap::load(dir.path("a.shmap"), src); }), Errc::already_exists);
  EXPECT_EQ(a.size(), 1u);
}

TEST(TypedSnapshot, EveryDamagedOrTruncatedFileIsRefusedAndCreatesNothing) {
  using V = Bytes<40>;
  TempDir dir;
  ScopedName src("src"), dst("dst");
  {
    auto m = TypedMap<std::uint64_t, V>::create(src);
    for (std::uint64_t k = 0; k < 5000; ++k) m.insert_or_assign(k, V::make(k, 1));
    m.dump(dir.path("t.shmap"));
  }
  const std::string good = read_file(dir.path("t.shmap"));
  ASSERT_GT(good.size(), 5000u * 48);
  expect_damage_refused(good, dir.path("bad.shmap"), dst.str(),
                        [&] { DynamicMap::load(dir.path("bad.shmap"), dst); });
  // The control: the undamaged file loads.
  EXPECT_EQ(DynamicMap::load(dir.path("bad.shmap"), dst).size(), 5000u);
}

TEST(TypedSnapshot, TheGoldenFileOfAnEarlierBuildLoads) {
  using golden::GoldenValue;
  ScopedName n("golden-typed");
  auto m = TypedMap<std::int64_t, GoldenValue>::load(
      std::string(SHMAP_GOLDEN_DIR) + "/v2-typed.shmap", n);
  EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenTypedEntries));
  for (std::int64_t i = 0; i < golden::kGoldenTypedEntries; ++i) {
    const std::int64_t k = golden::golden_key(i);
    const auto v = m.find(k);
    ASSERT_TRUE(v.has_value()) << k;
    EXPECT_TRUE(*v == golden::golden_value(k)) << k;
  }
  const std::string b = read_file(std::string(SHMAP_GOLDEN_DIR) + "/v2-typed.shmap");
  EXPECT_EQ(b.substr(0, 8), "SHMAPSNP");
  EXPECT_EQ(b.substr(8, 4), std::string("\x02\x00\x00\x00", 4)) << "format version 2";
}

}  // namespace
}  // namespace shmap::test
