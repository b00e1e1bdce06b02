// The content of tests/golden/v2-typed.shmap (written by make_golden.cpp, read by
// tests/snapshot/typed_test.cpp): a TypedMap<int64_t, GoldenValue>, computed from the key.
#pragma once

#include <array>
#include <cstdint>
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

}  // namespace shmap::golden

template <>
struct shmap::TypeName<shmap::golden::GoldenValue> {
  static constexpr std::string_view value = "GoldenValue";
};
