// The value the record-heap tests write: 80 bytes (a block of the 96-byte class) that carry
// their key, a generation and a checksum, so a torn or foreign value is seen.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

#include "shmap/typed_map.hpp"

namespace shmap::test::mp {

struct Rec {
  std::uint64_t key;
  std::uint64_t gen;
  std::array<std::uint64_t, 6> fill;
  std::uint64_t sum;
};
inline Rec make(std::uint64_t key, std::uint64_t gen) {
  Rec r{key, gen, {}, 0};
  for (std::size_t i = 0; i < r.fill.size(); ++i) r.fill[i] = key * 31 + gen * 7 + i;
  r.sum = key ^ gen;
  for (const auto f : r.fill) r.sum = r.sum * 1099511628211ULL + f;
  return r;
}
/// r is make(key, g) for its generation g.
inline bool intact(const Rec& r, std::uint64_t key) {
  const Rec x = make(key, r.gen);
  return std::memcmp(&x, &r, sizeof(Rec)) == 0;
}
using RecMap = TypedMap<std::uint64_t, Rec>;

}  // namespace shmap::test::mp
