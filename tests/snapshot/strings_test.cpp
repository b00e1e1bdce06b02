// Snapshots of maps with string keys (version 3): round trips of every key and value length up
// to 1 MiB, struct values under string keys, the types checked on load, damaged and truncated
// files (nothing created), a point-in-time dump beside a writer, the golden file.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "golden_typed.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"
#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

bool exists(const std::string& name) { return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0; }

/// n bytes computed from a seed: every byte value occurs.
std::string bytes_of(std::uint64_t seed, std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((seed * 131 + i * 7 + (i >> 8)));
  return s;
}

std::map<std::string, std::string> contents(const StringMap& m) {
  std::map<std::string, std::string> c;
  m.for_each([&](std::string_view k, std::string_view v) { c[std::string(k)] = std::string(v); });
  return c;
}

void round_trip(bool point_in_time, bool json) {
  TempDir dir;
  ScopedName from("from"), to("to");
  std::map<std::string, std::string> want;
  {
    auto m = StringMap::create(from, {.initial_capacity = 8});
    std::uint64_t seed = 0;
    for (std::size_t kl : {0, 1, 7, 8, 9, 64, 300, 70000}) {
      for (std::size_t vl : {0, 1, 8, 100, 4070, 4100, 70000, 1 << 20}) {
        if (kl + vl > kMaxStringEntryBytes) continue;
        const std::string k = bytes_of(++seed, kl) + std::to_string(vl);
        want[k] = bytes_of(seed * 3, vl);
        m.insert_or_assign(k, want[k]);
      }
    }
    for (int i = 0; i < 2000; ++i) {
      want["n" + std::to_string(i)] = std::to_string(i);
      m.insert_or_assign("n" + std::to_string(i), std::to_string(i));
    }
    for (int i = 0; i < 2000; i += 3) {  // some erased, some replaced
      const std::string k = "n" + std::to_string(i);
      if (i % 2 == 0) {
        ASSERT_TRUE(m.erase(k));
        want.erase(k);
      } else {
        want[k] = "again " + k;
        m.insert_or_assign(k, want[k]);
      }
    }
    m.dump(dir.path("s.shmap"), {.json = json, .point_in_time = point_in_time});
  }
  StringMap back = StringMap::load(dir.path("s.shmap"), to);
  EXPECT_EQ(back.size(), want.size());
  EXPECT_TRUE(contents(back) == want) << "point in time: " << point_in_time << ", json " << json;
  RecordStats rs;
  EXPECT_TRUE(back.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  // The loaded map is a string map like any other.
  EXPECT_TRUE(back.insert("after", "load"));
  EXPECT_EQ(StringMap::open(to).find("after"), "load");
}

TEST(StringSnapshot, RoundTripsEveryKeyAndValueLength) {
  round_trip(false, false);
  round_trip(true, false);
}

TEST(StringSnapshot, TheJsonFormRoundTripsEveryKeyAndValueLength) {
  round_trip(false, true);
  round_trip(true, true);
}

TEST(StringSnapshot, TheJsonFormWritesUtf8AsTextAndAnythingElseAsBase64) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  const std::map<std::string, std::string> want = {
      {"h\xc3\xa9llo \xe2\x82\xac", "text \"quoted\" \\ \n\t"},  // UTF-8: as text
      {std::string("a\0b", 3), "nul inside"},                    // still text (\u0000)
      {"\xff", "a lone 0xff"},                                   // not UTF-8: base64
      {"\xc0\x80", "an overlong NUL"},                           // not UTF-8
      {"\xed\xa0\x80", "a surrogate"},                           // not UTF-8
      {"\xf4\x90\x80\x80", "past U+10FFFF"},                     // not UTF-8
      {"\xe2\x82", "cut short"},                                 // not UTF-8
      {"", ""},
      {"binary value", std::string("\x00\x01\xfe\xff", 4)}};
  {
    auto m = StringMap::create(src);
    for (const auto& [k, v] : want) m.insert_or_assign(k, v);
    m.dump(dir.path("s.json"), {.json = true});
  }
  const std::string text = read_file(dir.path("s.json"));
  EXPECT_NE(text.find("{\"key\":\"h\xc3\xa9llo \xe2\x82\xac\",\"value\":\"text \\\"quoted\\\" \\\\ "
                      "\\n\\t\"}"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("{\"key\":\"a\\u0000b\",\"value\":\"nul inside\"}"), std::string::npos)
      << text;
  EXPECT_NE(text.find("{\"key_base64\":\"/w==\",\"value\":\"a lone 0xff\"}"), std::string::npos)
      << text;
  EXPECT_NE(text.find("{\"key_base64\":\"wIA=\",\"value\":\"an overlong NUL\"}"), std::string::npos)
      << text;
  EXPECT_NE(text.find("{\"key\":\"binary value\",\"value_base64\":\"AAH+/w==\"}"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\"format_version\": 3"), std::string::npos) << text;
  auto back = StringMap::load(dir.path("s.json"), dst);
  EXPECT_TRUE(contents(back) == want);
}

struct Quote {
  double bid, ask;
  std::uint32_t size;
  bool operator==(const Quote&) const = default;
};

TEST(StringSnapshot, ALoadedMapKeepsItsCreatorsFloorSoThatCompactFitsIt) {
  // A load sizes its first table for the snapshot's entries, but the map keeps the capacity
  // it was created with as the floor of shrink and fit: erase most entries, compact(), and
  // the table fits what is left (binary and JSON; a string map, a multimap, a typed map).
  TempDir dir;
  ScopedName src("floor-src"), msrc("floor-msrc"), tsrc("floor-tsrc");
  constexpr int kN = 6000, kKept = 100;
  auto key = [](int i) { return "a key of some length " + std::to_string(i); };
  {
    auto m = StringMap::create(src, {.initial_capacity = 8});
    auto mm = StringMultimap::create(msrc, {.initial_capacity = 8});
    auto t = TypedMap<std::uint64_t, std::string>::create(tsrc, {.initial_capacity = 8});
    for (int i = 0; i < kN; ++i) {
      m.insert(key(i), "a value in a record");
      mm.insert(key(i), "v");
      t.insert(std::uint64_t(i) << 40, "x");
    }
    for (const bool json : {false, true}) {
      const std::string sfx = json ? ".json" : ".shmap";
      m.dump(dir.path("s" + sfx), {.json = json});
      mm.dump(dir.path("m" + sfx), {.json = json});
      t.dump(dir.path("t" + sfx), {.json = json});
    }
  }
  for (const bool json : {false, true}) {
    const std::string sfx = json ? ".json" : ".shmap";
    ScopedName dst("floor-dst"), mdst("floor-mdst"), tdst("floor-tdst");
    auto m = StringMap::load(dir.path("s" + sfx), dst);
    auto mm = StringMultimap::load(dir.path("m" + sfx), mdst);
    auto t = TypedMap<std::uint64_t, std::string>::load(dir.path("t" + sfx), tdst);
    ASSERT_EQ(m.size(), std::size_t{kN});
    ASSERT_EQ(mm.size(), std::size_t{kN});
    ASSERT_EQ(t.size(), std::size_t{kN});
    for (int i = kKept; i < kN; ++i) {
      ASSERT_TRUE(m.erase(key(i)));
      ASSERT_EQ(mm.erase(key(i)), 1u);
      ASSERT_TRUE(t.erase(std::uint64_t(i) << 40));
    }
    m.compact();
    mm.compact();
    t.compact();
    for (const Stats& s : {m.stats(), mm.stats(), t.stats()}) {
      EXPECT_EQ(s.size, std::size_t{kKept});
      EXPECT_LE(s.capacity, 4u * kKept)
          << (json ? "json" : "binary") << ": the table kept the snapshot's size";
    }
    EXPECT_EQ(m.find(key(7)), "a value in a record");
    EXPECT_EQ(mm.find(key(7)), std::vector<std::string>{"v"});
    EXPECT_EQ(t.find(std::uint64_t(7) << 40), "x");
  }
}

TEST(StringSnapshot, StructValuesRoundTripAndTheTypesAreCheckedBeforeAnythingIsCreated) {
  using Q = TypedMap<std::string, Quote>;
  TempDir dir;
  ScopedName q("q"), s("s"), dst("dst");
  {
    Q m = Q::create(q);
    for (std::uint32_t i = 0; i < 500; ++i) {
      m.insert_or_assign("sym" + std::to_string(i), Quote{i * 0.5, i * 0.5 + 1, i});
    }
    m.dump(dir.path("q.shmap"));
    auto t = StringMap::create(s);
    t.insert_or_assign("a", "b");
    t.dump(dir.path("s.shmap"));
  }
  Q back = Q::load(dir.path("q.shmap"), dst);
  EXPECT_EQ(back.size(), 500u);
  EXPECT_EQ(back.find("sym7"), (Quote{3.5, 4.5, 7}));
  Map::remove(dst);
  // Another view of either snapshot is refused, and no map appears.
  EXPECT_EQ(code_of([&] { StringMap::load(dir.path("q.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  EXPECT_EQ(code_of([&] { Q::load(dir.path("s.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  EXPECT_EQ(code_of([&] { Map::load(dir.path("s.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  EXPECT_EQ(code_of([&] { TypedMap<std::uint64_t, Quote>::load(dir.path("q.shmap"), dst); }),
            Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  // The JSON form: the struct as its bytes in hex, checked against the types on load.
  {
    Q m = Q::open(q);
    m.dump(dir.path("q.json"), {.json = true});
    EXPECT_EQ(code_of([&] { StringMap::load(dir.path("q.json"), dst); }), Errc::layout_mismatch);
    EXPECT_FALSE(exists(dst.str()));
    EXPECT_EQ(Q::load(dir.path("q.json"), dst).find("sym7"), (Quote{3.5, 4.5, 7}));
    EXPECT_EQ(Q::open(dst).size(), 500u);
    Map::remove(dst);
  }
  // DynamicMap dumps and loads every kind: a string map's dump through it reads back.
  DynamicMap any = DynamicMap::load(dir.path("s.shmap"), dst);
  EXPECT_TRUE(any.holds_strings());
  any.dump(dir.path("s2.shmap"));
  Map::remove(dst);
  EXPECT_EQ(StringMap::load(dir.path("s2.shmap"), dst).find("a"), "b");
  // Not yet: replace, merge. Each says so, and changes nothing.
  auto t = StringMap::open(s);
  EXPECT_EQ(code_of([&] {
              StringMap::load(dir.path("s.shmap"), s, load_mode(LoadOptions::Mode::merge));
            }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { StringMap::load(dir.path("s.shmap"), s); }), Errc::already_exists);
  EXPECT_EQ(t.size(), 1u);
}

TEST(StringSnapshot, StringValuesUnderNumberKeysRoundTrip) {
  using M = TypedMap<std::int64_t, std::string>;
  TempDir dir;
  ScopedName src("src"), dst("dst");
  std::map<std::int64_t, std::string> want;
  {
    M m = M::create(src);
    for (std::int64_t i = -500; i < 500; ++i) {
      want[i * 977] = bytes_of(static_cast<std::uint64_t>(i + 1000), (i + 500) % 300);
      m.insert_or_assign(i * 977, want[i * 977]);
    }
    want[INT64_MIN] = std::string(200000, 'z');
    m.insert_or_assign(INT64_MIN, want[INT64_MIN]);
    m.dump(dir.path("n.shmap"), {.point_in_time = true});
    m.dump(dir.path("n.json"), {.json = true});
  }
  for (const char* file : {"n.shmap", "n.json"}) {
    M back = M::load(dir.path(file), dst);
    std::map<std::int64_t, std::string> got;
    back.for_each([&](const std::int64_t& k, std::string_view v) { got[k] = std::string(v); });
    EXPECT_TRUE(got == want) << file;
    Map::remove(dst);
  }
  EXPECT_NE(read_file(dir.path("n.json")).find("{\"key\":-9223372036854775808,\"value\":\"zzz"),
            std::string::npos);
  EXPECT_EQ(code_of([&] { StringMap::load(dir.path("n.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_EQ(
      code_of([&] { (TypedMap<std::uint64_t, std::string>::load(dir.path("n.shmap"), dst)); }),
      Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
}

struct Pair16 {
  std::uint64_t a, b;
  bool operator==(const Pair16&) const = default;
};

TEST(StringSnapshot, KeysOfMoreThan8BytesRoundTripAsTheirTypes) {
  using M = TypedMap<Pair16, Quote>;
  TempDir dir;
  ScopedName src("src"), dst("dst");
  std::map<std::pair<std::uint64_t, std::uint64_t>, Quote> want;
  {
    M m = M::create(src, {.initial_capacity = 8});
    for (std::uint32_t i = 0; i < 700; ++i) {
      const Pair16 k{i * 0x9E3779B97F4A7C15ULL, UINT64_MAX - i};
      const Quote q{i * 0.5, i * 0.5 + 1, i};
      m.insert_or_assign(k, q);
      want[{k.a, k.b}] = q;
    }
    m.dump(dir.path("p.shmap"));
    m.dump(dir.path("p.json"), {.json = true});
  }
  EXPECT_NE(read_file(dir.path("p.json")).find("{\"key_hex\":\""), std::string::npos);
  for (const char* file : {"p.shmap", "p.json"}) {
    M back = M::load(dir.path(file), dst);
    EXPECT_EQ(back.size(), want.size()) << file;
    std::size_t same = 0;
    back.for_each([&](const Pair16& k, const Quote& q) {
      const auto it = want.find({k.a, k.b});
      same += it != want.end() && it->second == q;
    });
    EXPECT_EQ(same, want.size()) << file;
    Map::remove(dst);
    // Other views of it are refused, and nothing is made.
    EXPECT_EQ(code_of([&] { TypedMap<std::string, Quote>::load(dir.path(file), dst); }),
              Errc::layout_mismatch);
    EXPECT_FALSE(exists(dst.str()));
  }
}

TEST(StringSnapshot, AMultimapComesBackAMultimapWithEveryValueInOrder) {
  TempDir dir;
  ScopedName src("src"), dst("dst"), single("single");
  std::map<std::string, std::vector<std::string>> want;
  {
    auto m = StringMultimap::create(src, {.initial_capacity = 8});
    for (int i = 0; i < 3000; ++i) {
      const std::string k = "k" + std::to_string(i % 97);
      const std::string v = i % 500 == 0 ? std::string(100000, 'v') : std::to_string(i);
      m.insert(k, v);
      want[k].push_back(v);
    }
    m.insert("dup", "same");
    m.insert("dup", "same");
    want["dup"] = {"same", "same"};
    m.dump(dir.path("m.shmap"), {.point_in_time = true});
    m.dump(dir.path("m2.shmap"));
    m.dump(dir.path("m.json"), {.json = true});
    StringMap::create(single).insert("a", "b");
    StringMap::open(single).dump(dir.path("s.shmap"));
  }
  for (const char* file : {"m.shmap", "m2.shmap", "m.json"}) {
    auto back = StringMultimap::load(dir.path(file), dst);
    std::size_t total = 0;
    for (const auto& [k, vs] : want) {
      EXPECT_EQ(back.find(k), vs) << file << " " << k;
      total += vs.size();
    }
    EXPECT_EQ(back.size(), total);
    EXPECT_TRUE(DynamicMap::open(dst).is_multimap());
    Map::remove(dst);
  }
  // A multimap's snapshot is not a map's, nor the other way round.
  EXPECT_EQ(code_of([&] { StringMap::load(dir.path("m.shmap"), dst); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { StringMap::load(dir.path("m.json"), dst); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { StringMultimap::load(dir.path("s.shmap"), dst); }),
            Errc::layout_mismatch);
  EXPECT_FALSE(exists(dst.str()));
  // DynamicMap loads it as what it is.
  EXPECT_TRUE(DynamicMap::load(dir.path("m.shmap"), dst).is_multimap());
}

TEST(StringSnapshot, EveryDamagedOrTruncatedFileIsRefusedAndCreatesNothing) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  {
    auto m = StringMap::create(src);
    for (std::uint64_t k = 0; k < 3000; ++k) {
      m.insert_or_assign("key" + std::to_string(k), bytes_of(k, k % 90));
    }
    m.insert_or_assign("big", bytes_of(1, 200000));  // an entry across chunks
    m.dump(dir.path("t.shmap"));
  }
  const std::string good = read_file(dir.path("t.shmap"));
  expect_damage_refused(good, dir.path("bad.shmap"), dst.str(),
                        [&] { StringMap::load(dir.path("bad.shmap"), dst); });
  // The control: the undamaged file loads.
  EXPECT_EQ(StringMap::load(dir.path("bad.shmap"), dst).size(), 3001u);
  // The JSON form, damaged the same ways.
  Map::remove(dst);
  StringMap::open(src).dump(dir.path("t.json"), {.json = true});
  const std::string json = read_file(dir.path("t.json"));
  ASSERT_EQ(json.back(), '\n');  // (dropped: a truncation by one byte would only remove it)
  expect_damage_refused(json.substr(0, json.size() - 1), dir.path("bad.json"), dst.str(),
                        [&] { StringMap::load(dir.path("bad.json"), dst); });
  EXPECT_EQ(StringMap::load(dir.path("bad.json"), dst).size(), 3001u);
}

TEST(StringSnapshot, TheGoldenFileOfAnEarlierBuildLoads) {
  ScopedName n("golden-strings");
  const std::string path = std::string(SHMAP_GOLDEN_DIR) + "/v3-strings.shmap";
  auto m = StringMap::load(path, n);
  EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenStringEntries));
  for (std::int64_t i = 0; i < golden::kGoldenStringEntries; ++i) {
    EXPECT_EQ(m.find(golden::golden_skey(i)), golden::golden_svalue(i)) << i;
  }
  const std::string b = read_file(path);
  EXPECT_EQ(b.substr(0, 8), "SHMAPSNP");
  EXPECT_EQ(b.substr(8, 4), std::string("\x03\x00\x00\x00", 4)) << "format version 3";
}

TEST(StringSnapshot, TheGoldenJsonAndMultimapFilesOfAnEarlierBuildLoad) {
  ScopedName n("golden-strings-json");
  {
    auto m = StringMap::load(std::string(SHMAP_GOLDEN_DIR) + "/v3-strings-json.json", n);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenStringEntries));
    for (std::int64_t i = 0; i < golden::kGoldenStringEntries; ++i) {
      EXPECT_EQ(m.find(golden::golden_skey(i)), golden::golden_svalue(i)) << i;
    }
  }
  Map::remove(n);
  std::map<std::string, std::vector<std::string>> want;
  for (std::int64_t i = 0; i < golden::kGoldenMultimapValues; ++i) {
    want[golden::golden_mkey(i)].push_back(golden::golden_svalue(i));
  }
  {
    auto m = TypedMap<std::int64_t, std::string>::load(
        std::string(SHMAP_GOLDEN_DIR) + "/v3-fixed-keys.shmap", n);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenFixedKeyEntries));
    for (std::int64_t i = 0; i < golden::kGoldenFixedKeyEntries; ++i) {
      EXPECT_EQ(m.find(golden::golden_key(i)), golden::golden_svalue(i)) << i;
    }
  }
  Map::remove(n);
  {
    auto m = TypedMap<golden::GoldenPair, std::uint64_t>::load(
        std::string(SHMAP_GOLDEN_DIR) + "/v3-fixed-keys-json.json", n);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenFixedKeyEntries));
    for (std::int64_t i = 0; i < golden::kGoldenFixedKeyEntries; ++i) {
      EXPECT_EQ(m.find(golden::golden_pair(i)), static_cast<std::uint64_t>(i) * 3) << i;
    }
  }
  Map::remove(n);
  for (const char* file : {"v3-multimap.shmap", "v3-multimap-json.json"}) {
    auto m = StringMultimap::load(std::string(SHMAP_GOLDEN_DIR) + "/" + file, n);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(golden::kGoldenMultimapValues)) << file;
    for (const auto& [k, vs] : want) EXPECT_EQ(m.find(k), vs) << file << " " << k;
    Map::remove(n);
  }
}

// One writer inserts k0, k1, k2, ... in order; a point-in-time dump taken meanwhile holds
// exactly a prefix k0..k(n-1): no later key without every earlier one, no torn value.
TEST(ConcurrentDump, AStringMapPointInTimeDumpBesideAWriterIsAPrefix) {
  TempDir dir;
  ScopedName src("src"), dst("dst");
  auto m = StringMap::create(src, {.initial_capacity = 8});
  std::atomic<std::uint64_t> written{0};
  std::atomic<bool> stop{false};
  auto value = [](std::uint64_t i) { return "v" + std::to_string(i) + std::string(i % 300, 'x'); };
  std::thread writer([&] {
    auto w = StringMap::open(src);
    for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      w.insert("k" + std::to_string(i), value(i));
      written.store(i + 1, std::memory_order_release);
    }
  });
  while (written.load(std::memory_order_acquire) < 2000) std::this_thread::yield();
  m.dump(dir.path("p.shmap"), {.point_in_time = true});
  const std::uint64_t after = written.load(std::memory_order_acquire);
  stop.store(true, std::memory_order_relaxed);
  writer.join();
  const auto got = contents(StringMap::load(dir.path("p.shmap"), dst));
  ASSERT_GE(got.size(), 2000u);
  EXPECT_LE(got.size(), after + 1);
  for (std::uint64_t i = 0; i < got.size(); ++i) {
    const auto it = got.find("k" + std::to_string(i));
    ASSERT_TRUE(it != got.end()) << "k" << i << " missing from a dump of " << got.size();
    ASSERT_EQ(it->second, value(i)) << "k" << i;
  }
}

}  // namespace
}  // namespace shmap::test
