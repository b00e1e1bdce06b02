// The content of tests/golden/v2-typed.shmap (written by make_golden.cpp, read by
// tests/snapshot/typed_test.cpp): a TypedMap<int64_t, GoldenValue>, computed from the key.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "shmap/typed_map.hpp"

namespace shmap::golden {

/// 24 bytes: a struct whose recorded name is pinned (TypeName below), so the file does not
/// depend on where this header is included.
struct GoldenValue {
  double price;
  std::uint32_t qty;
  std::uint32_t flags;
  std::array<unsigned char, 8> tag;
  bool operator==(const GoldenValue&) const = default;
};

inline constexpr std::int64_t kGoldenTypedEntries = 300;

/// Keys: negative and positive, and the extremes.
inline std::int64_t golden_key(std::int64_t i) {
  if (i == 0) return INT64_MIN;
  if (i == 1) return INT64_MAX;
  return (i % 2 == 0 ? -1 : 1) * (i * 7919);
}

inline GoldenValue golden_value(std::int64_t k) {
  GoldenValue v{};
  v.price = static_cast<double>(k % 100000) / 8.0;
  v.qty = static_cast<std::uint32_t>(k & 0xffffffff);
  v.flags = 0xa5a5a5a5u;
  for (std::size_t i = 0; i < v.tag.size(); ++i) {
    v.tag[i] = static_cast<unsigned char>((static_cast<std::uint64_t>(k) >> (8 * i)) ^ 0x5a);
  }
  return v;
}

/// tests/golden/v3-strings.shmap: a StringMap (string -> string) of kGoldenStringEntries
/// entries. Keys: the empty one, binary bytes, short text, and one of 70,000 bytes; values:
/// empty, text, binary, and one of 100,000 bytes (it spans two chunks of the entry stream).
inline constexpr std::int64_t kGoldenStringEntries = 200;

inline std::string golden_skey(std::int64_t i) {
  if (i == 0) return "";
  if (i == 1) return std::string(70000, 'K');
  if (i == 2) return std::string("\0\xff\x01binary", 9);
  return "key-" + std::to_string(i * 7919);
}

inline std::string golden_svalue(std::int64_t i) {
  if (i == 3) return "";
  if (i == 4) return std::string(100000, 'v') + "end";
  std::string v = "value " + std::to_string(i) + " ";
  for (std::int64_t j = 0; j < i % 37; ++j) v += static_cast<char>((i * 131 + j * 7) & 0xff);
  return v;
}

/// tests/golden/v3-multimap.shmap and v3-multimap-json.json: a StringMultimap of
/// kGoldenMultimapValues values under 13 keys, in this order (a key's values in it).
inline constexpr std::int64_t kGoldenMultimapValues = 120;

inline std::string golden_mkey(std::int64_t i) {
  return i % 13 == 0 ? std::string("\xfe key", 5) : "k" + std::to_string(i % 13);
}

/// tests/golden/v2-numbers-json.json: a TypedMap<int32_t, double> of these entries.
inline constexpr std::int64_t kGoldenNumberEntries = 50;

inline std::int32_t golden_nkey(std::int64_t i) {
  if (i == 0) return INT32_MIN;
  if (i == 1) return INT32_MAX;
  return static_cast<std::int32_t>((i % 2 == 0 ? -1 : 1) * i * 104729);
}

inline double golden_nvalue(std::int64_t i) {
  if (i == 2) return -0.0;
  if (i == 3) return 1e300;
  return static_cast<double>(i) / 3.0;
}

/// tests/golden/v3-fixed-keys.shmap and v3-fixed-keys-json.json: a TypedMap<int64_t,
/// std::string> (number keys, string values) and a TypedMap<GoldenPair, uint64_t> (16-byte keys,
/// held by their bytes) of kGoldenFixedKeyEntries entries each, the first in the binary file,
/// the second in the JSON one.
struct GoldenPair {
  std::uint64_t a, b;
  bool operator==(const GoldenPair&) const = default;
};
inline constexpr std::int64_t kGoldenFixedKeyEntries = 64;
inline GoldenPair golden_pair(std::int64_t i) {
  return {static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ULL, ~static_cast<std::uint64_t>(i)};
}

}  // namespace shmap::golden

template <>
struct shmap::TypeName<shmap::golden::GoldenValue> {
  static constexpr std::string_view value = "GoldenValue";
};
template <>
struct shmap::TypeName<shmap::golden::GoldenPair> {
  static constexpr std::string_view value = "GoldenPair";
};
