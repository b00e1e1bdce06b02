// Snapshots of typed maps (version 2): round trips of every value size, the types checked on
// load, damaged and truncated files (nothing created), the golden file of an earlier build.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
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
void round_trip(bool point_in_time, bool json = false) {
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
    m.dump(dir.path("t.shmap"), {.json = json, .point_in_time = point_in_time});
  }
  M back = M::load(dir.path("t.shmap"), to);
  EXPECT_EQ(back.size(), want.size());
  std::size_t same = 0;
  back.for_each([&](const std::int64_t& k, const V& v) {
    const auto it = want.find(k);
    same += it != want.end() && it->second == v;
  });
  EXPECT_EQ(same, want.size()) << N << "-byte values, json " << json;
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
  // The JSON form.
  round_trip<1>(false, true);
  round_trip<9>(true, true);
  round_trip<300>(false, true);
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
  Map::remove(dst);
  // The JSON form records the types as the binary one does.
  auto a = TypedMap<std::uint64_t, A>::open(src);
  a.dump(dir.path("a.json"), {.json = true});
  EXPECT_EQ(code_of([&] { TypedMap<std::uint64_t, B>::load(dir.path("a.json"), dst); }),
            Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { Map::load(dir.path("a.json"), dst); }), Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  EXPECT_EQ((TypedMap<std::uint64_t, A>::load(dir.path("a.json"), dst).find(1)->y), 3u);
  Map::remove(dst);
  // Not yet: replace, merge. Each says so, and changes nothing.
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

template <class T>
std::string bytes_of_value(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

TEST(TypedSnapshot, TheJsonFormShowsNumbersAsNumbersAndKeepsEveryBit) {
  using M = TypedMap<std::int32_t, double>;
  TempDir dir;
  ScopedName src("src"), dst("dst");
  const double nan_bits = std::bit_cast<double>(std::uint64_t{0x7ff8000000abcdef});
  const std::map<std::int32_t, double> want = {{-5, 2.5},
                                               {7, nan_bits},
                                               {INT32_MIN, -0.0},
                                               {INT32_MAX, 1e300},
                                               {0, 0.1},
                                               {1, std::numeric_limits<double>::infinity()},
                                               {2, std::numeric_limits<double>::denorm_min()}};
  {
    M m = M::create(src);
    for (const auto& [k, v] : want) m.insert_or_assign(k, v);
    m.dump(dir.path("n.json"), {.json = true});
  }
  const std::string text = read_file(dir.path("n.json"));
  EXPECT_NE(text.find("{\"key\":-5,\"value\":2.5}"), std::string::npos) << text;
  EXPECT_NE(text.find("{\"key\":-2147483648,\"value\":-0.0}"), std::string::npos) << text;
  EXPECT_NE(text.find("{\"key\":0,\"value\":0.1}"), std::string::npos) << text;
  // What JSON has no number for (a NaN, an infinity) goes as the value's bytes.
  EXPECT_NE(text.find("{\"key\":7,\"value_hex\":\"efcdab000000f87f\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("{\"key\":1,\"value_hex\":\"000000000000f07f\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("\"format_version\": 2"), std::string::npos) << text;
  M back = M::load(dir.path("n.json"), dst);
  EXPECT_EQ(back.size(), want.size());
  for (const auto& [k, v] : want) {
    const auto got = back.find(k);
    ASSERT_TRUE(got.has_value()) << k;
    EXPECT_EQ(bytes_of_value(*got), bytes_of_value(v)) << "key " << k << ": every bit back";
  }
  // Small unsigned keys, float values: the edges of each range.
  using S = TypedMap<std::uint16_t, float>;
  ScopedName s16("s16"), s16b("s16b");
  {
    S m = S::create(s16);
    m.insert_or_assign(65535, std::numeric_limits<float>::max());
    m.insert_or_assign(0, -std::numeric_limits<float>::denorm_min());
    m.insert_or_assign(300, 1.1f);
    m.dump(dir.path("s.json"), {.json = true});
  }
  EXPECT_NE(read_file(dir.path("s.json")).find("{\"key\":65535,\"value\":3.40282346638528"),
            std::string::npos)
      << read_file(dir.path("s.json"));
  S b = S::load(dir.path("s.json"), s16b);
  EXPECT_EQ(bytes_of_value(*b.find(65535)), bytes_of_value(std::numeric_limits<float>::max()));
  EXPECT_EQ(bytes_of_value(*b.find(0)), bytes_of_value(-std::numeric_limits<float>::denorm_min()));
  EXPECT_EQ(*b.find(300), 1.1f);
}

/// `text` with its first `from` replaced by `to` (which must be there).
std::string edited(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(TypedSnapshot, ADamagedOrHandEditedJsonFileIsRefusedWithItsReasonAndCreatesNothing) {
  struct Q {
    std::uint64_t a, b;
  };
  using M = TypedMap<std::int32_t, Q>;
  TempDir dir;
  ScopedName src("src"), dst("dst");
  {
    M m = M::create(src);
    for (std::int32_t k = -200; k < 200; ++k) {
      m.insert_or_assign(k, Q{static_cast<std::uint64_t>(k), 7});
    }
    m.dump(dir.path("t.json"), {.json = true});
  }
  const std::string good = read_file(dir.path("t.json"));
  const std::string bad = dir.path("bad.json");
  // (Without the last newline, which a truncation by one byte would only remove.)
  ASSERT_EQ(good.back(), '\n');
  expect_damage_refused(good.substr(0, good.size() - 1), bad, dst.str(),
                        [&] { M::load(bad, dst); });
  // Hand edits: each refused for what it is, and no map appears.
  const std::string one = "{\"key\":-5,\"value_hex\":\"fbffffffffffffff0700000000000000\"}";
  ASSERT_NE(good.find(one), std::string::npos) << good.substr(0, 2000);
  auto refused = [&](const std::string& text, Errc code, const std::string& says) {
    write_file(bad, text);
    try {
      M::load(bad, dst);
      ADD_FAILURE() << "loaded: " << says;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_FALSE(exists(dst.str())) << says;
  };
  const std::string changed =
      edited(good, one, "{\"key\":-5,\"value_hex\":\"fcffffffffffffff0700000000000000\"}");
  refused(changed, Errc::corrupt, "content checksum mismatch");
  // Without its checksum an edited file loads (the documented way to edit by hand)...
  const auto sum = good.find("\"content_xxh3\"");
  ASSERT_NE(sum, std::string::npos);
  const std::string unchecked_lead =
      changed.substr(0, sum) + changed.substr(changed.find('\n', sum) + 1);
  // (the member before it keeps its comma: format_version, then content_xxh3 last)
  const std::string unchecked =
      edited(unchecked_lead, "\"format_version\": 2,", "\"format_version\": 2");
  write_file(bad, unchecked);
  EXPECT_EQ(M::load(bad, dst).find(-5)->a, static_cast<std::uint64_t>(-4));
  Map::remove(dst);
  // ...and what it holds is still checked.
  refused(edited(unchecked, "{\"key\":-5,", "{\"key\":2147483648,"), Errc::corrupt,
          "is not an integer from -2147483648 to 2147483647");
  refused(edited(unchecked, "\"value_hex\":\"fcff", "\"value_hex\":\"fcf"), Errc::corrupt,
          "is not hexadecimal");
  refused(edited(unchecked, "\"value_hex\":\"fcffffffffffffff0700000000000000\"",
                 "\"value_hex\":\"fcffffffffffffff07000000000000\""),
          Errc::corrupt, "its value has 15 bytes");
  refused(edited(unchecked, "\"value_hex\":\"fcffffffffffffff0700000000000000\"", "\"value\":3"),
          Errc::corrupt, "has no plain JSON form");
  refused(edited(unchecked, "\"value_hex\":\"fcffffffffffffff0700000000000000\"",
                 "\"value_base64\":\"not base64!\""),
          Errc::corrupt, "is not base64");
  refused(edited(unchecked, "{\"key\":-5,", "{\"key\":-5,\"key_hex\":\"00\","), Errc::corrupt,
          "has more than one of");
  refused(edited(unchecked, "\"types\"", "\"typos\""), Errc::corrupt, "unknown member \"typos\"");
  refused(edited(unchecked, "\"value_size\": 16", "\"value_size\": 0"), Errc::corrupt,
          "that no map can have");
  // The control: the file as dumped loads.
  write_file(bad, good);
  EXPECT_EQ(M::load(bad, dst).size(), 400u);
}

/// Loads the golden file `file` (a TypedMap<int64_t, GoldenValue>) and checks every entry.
void expect_golden_typed(const std::string& file, const std::string& name) {
  auto m = TypedMap<std::int64_t, golden::GoldenValue>::load(
      std::string(SHMAP_GOLDEN_DIR) + "/" + file, name);
  EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenTypedEntries)) << file;
  for (std::int64_t i = 0; i < golden::kGoldenTypedEntries; ++i) {
    const std::int64_t k = golden::golden_key(i);
    const auto v = m.find(k);
    ASSERT_TRUE(v.has_value()) << file << " " << k;
    EXPECT_TRUE(*v == golden::golden_value(k)) << file << " " << k;
  }
}

TEST(TypedSnapshot, TheGoldenFileOfAnEarlierBuildLoads) {
  ScopedName n("golden-typed");
  expect_golden_typed("v2-typed.shmap", n);
  const std::string b = read_file(std::string(SHMAP_GOLDEN_DIR) + "/v2-typed.shmap");
  EXPECT_EQ(b.substr(0, 8), "SHMAPSNP");
  EXPECT_EQ(b.substr(8, 4), std::string("\x02\x00\x00\x00", 4)) << "format version 2";
}

TEST(TypedSnapshot, TheGoldenJsonFilesOfAnEarlierBuildLoad) {
  ScopedName n("golden-typed-json");
  expect_golden_typed("v2-typed-json.json", n);
  Map::remove(n);
  auto m = TypedMap<std::int32_t, double>::load(
      std::string(SHMAP_GOLDEN_DIR) + "/v2-numbers-json.json", n);
  EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenNumberEntries));
  for (std::int64_t i = 0; i < golden::kGoldenNumberEntries; ++i) {
    const auto v = m.find(golden::golden_nkey(i));
    ASSERT_TRUE(v.has_value()) << i;
    EXPECT_EQ(bytes_of_value(*v), bytes_of_value(golden::golden_nvalue(i))) << i;
  }
}

}  // namespace
}  // namespace shmap::test
