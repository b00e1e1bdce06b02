// Writes the golden snapshot files checked in beside this program (tests/golden/). The golden
// test (tests/snapshot/golden_test.cpp) checks that today's code still reads them, with exactly
// the content listed in the .expected files.
//
// Run only to add files for a new format version (never to "fix" a failing golden test: that
// failure means today's code no longer reads files people already have):
//   build/tests/snapshot/shmap_make_golden tests/golden        the version-1 files
//   build/tests/snapshot/shmap_make_golden tests/golden v2     the version-2 (typed) file
//   build/tests/snapshot/shmap_make_golden tests/golden v3     the version-3 (string map) file
//   build/tests/snapshot/shmap_make_golden tests/golden json23 the JSON forms of versions 2 and 3,
//                                                              and the binary multimap file
//   build/tests/snapshot/shmap_make_golden tests/golden fixed  version 3 with fixed-size keys
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <string>

#include "golden_typed.hpp"
#include "shmap/shmap.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"
#include "shmap/typed_map.hpp"

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

/// n entries: the edges of the domain, then a fixed pseudo-random sequence (splitmix64).
std::map<std::uint64_t, std::uint64_t> content(std::size_t n) {
  std::map<std::uint64_t, std::uint64_t> c;
  const std::uint64_t edges[] = {0, 1, (std::uint64_t{1} << 53) + 1, std::uint64_t{1} << 63, kMax};
  for (const auto k : edges) {
    if (c.size() < n) c[k] = kMax - k;
  }
  std::uint64_t x = 0x5eed;
  while (c.size() < n) {
    auto next = [&x] {
      std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      return z ^ (z >> 31);
    };
    const std::uint64_t k = next();
    c[k] = next();
  }
  return c;
}

void write(const std::string& dir, const std::string& stem, std::size_t n, bool json) {
  const std::string name = "shmap-make-golden-" + stem;
  shmap::Map::remove(name);
  {
    shmap::Map m = shmap::Map::create(name, {.initial_capacity = 64, .max_handles = 8});
    const auto c = content(n);
    for (const auto& [k, v] : c) m.insert_or_assign(k, v);
    m.dump(dir + "/" + stem + (json ? ".json" : ".shmap"), {.json = json});
    std::ofstream out(dir + "/" + stem + ".expected");
    out << "# " << c.size() << " entries, sorted by key: key value\n";
    for (const auto& [k, v] : c) out << k << ' ' << v << '\n';
  }
  shmap::Map::remove(name);
}

}  // namespace

/// v2-typed.shmap: a TypedMap<int64_t, GoldenValue> of kGoldenTypedEntries entries.
void write_typed(const std::string& dir) {
  using shmap::golden::GoldenValue;
  const std::string name = "shmap-make-golden-v2-typed";
  shmap::Map::remove(name);
  {
    auto m = shmap::TypedMap<std::int64_t, GoldenValue>::create(
        name, {.initial_capacity = 64, .max_handles = 8});
    for (std::int64_t i = 0; i < shmap::golden::kGoldenTypedEntries; ++i) {
      const std::int64_t k = shmap::golden::golden_key(i);
      m.insert_or_assign(k, shmap::golden::golden_value(k));
    }
    m.dump(dir + "/v2-typed.shmap");
  }
  shmap::Map::remove(name);
}

/// v3-strings.shmap: a StringMap of kGoldenStringEntries entries.
void write_strings(const std::string& dir) {
  const std::string name = "shmap-make-golden-v3-strings";
  shmap::Map::remove(name);
  {
    auto m = shmap::StringMap::create(name, {.initial_capacity = 64, .max_handles = 8});
    for (std::int64_t i = 0; i < shmap::golden::kGoldenStringEntries; ++i) {
      m.insert_or_assign(shmap::golden::golden_skey(i), shmap::golden::golden_svalue(i));
    }
    m.dump(dir + "/v3-strings.shmap");
  }
  shmap::Map::remove(name);
}

/// The JSON forms of versions 2 and 3 (a typed map of structs, one of numbers, a string map and
/// a multimap), and the multimap's binary form.
void write_json23(const std::string& dir) {
  namespace g = shmap::golden;
  const shmap::Options o{.initial_capacity = 64, .max_handles = 8};
  const std::string name = "shmap-make-golden-json23";
  shmap::Map::remove(name);
  {
    auto m = shmap::TypedMap<std::int64_t, g::GoldenValue>::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenTypedEntries; ++i) {
      m.insert_or_assign(g::golden_key(i), g::golden_value(g::golden_key(i)));
    }
    m.dump(dir + "/v2-typed-json.json", {.json = true});
  }
  shmap::Map::remove(name);
  {
    auto m = shmap::TypedMap<std::int32_t, double>::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenNumberEntries; ++i) {
      m.insert_or_assign(g::golden_nkey(i), g::golden_nvalue(i));
    }
    m.dump(dir + "/v2-numbers-json.json", {.json = true});
  }
  shmap::Map::remove(name);
  {
    auto m = shmap::StringMap::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenStringEntries; ++i) {
      m.insert_or_assign(g::golden_skey(i), g::golden_svalue(i));
    }
    m.dump(dir + "/v3-strings-json.json", {.json = true});
  }
  shmap::Map::remove(name);
  {
    auto m = shmap::StringMultimap::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenMultimapValues; ++i) {
      m.insert(g::golden_mkey(i), g::golden_svalue(i));
    }
    m.dump(dir + "/v3-multimap.shmap");
    m.dump(dir + "/v3-multimap-json.json", {.json = true});
  }
  shmap::Map::remove(name);
}

/// Version 3 with fixed-size keys: number keys with string values (binary), 16-byte keys with
/// number values (JSON).
void write_fixed(const std::string& dir) {
  namespace g = shmap::golden;
  const shmap::Options o{.initial_capacity = 64, .max_handles = 8};
  const std::string name = "shmap-make-golden-fixed";
  shmap::Map::remove(name);
  {
    auto m = shmap::TypedMap<std::int64_t, std::string>::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenFixedKeyEntries; ++i) {
      m.insert_or_assign(g::golden_key(i), g::golden_svalue(i));
    }
    m.dump(dir + "/v3-fixed-keys.shmap");
  }
  shmap::Map::remove(name);
  {
    auto m = shmap::TypedMap<g::GoldenPair, std::uint64_t>::create(name, o);
    for (std::int64_t i = 0; i < g::kGoldenFixedKeyEntries; ++i) {
      m.insert_or_assign(g::golden_pair(i), static_cast<std::uint64_t>(i) * 3);
    }
    m.dump(dir + "/v3-fixed-keys-json.json", {.json = true});
  }
  shmap::Map::remove(name);
}

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  if (argc > 2 && std::string(argv[2]) == "fixed") {
    try {
      write_fixed(dir);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "json23") {
    try {
      write_json23(dir);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "v3") {
    try {
      write_strings(dir);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc > 2 && std::string(argv[2]) == "v2") {
    try {
      write_typed(dir);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  try {
    write(dir, "v1-empty", 0, false);
    write(dir, "v1-small", 5000, false);  // two chunks: 4096 + 904 entries
    write(dir, "v1-small-json", 40, true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
