// shmap — the lookup fast path, shared by the library and the inline Map::Session::find.
//
// Everything here reads shared memory only through a FastView taken while pinned (see
// MapImpl::fast_table, which validates the table header before building one): the common
// case of a lookup -- the key LIVE in the view's table, or absent from a table that has no
// older one -- is decided in a handful of loads, and anything else (a migration state) is
// left to the slow path. Kept small and inline so that a loop of lookups stays short enough
// for the CPU to overlap their cache misses.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "shmap/detail/layout.hpp"

namespace shmap::detail {

/// This thread's process-wide number (small, reused after the thread exits).
inline constinit thread_local std::size_t t_thread_number = SIZE_MAX;
std::size_t assign_thread_number() noexcept;
inline std::size_t thread_number() noexcept {
  const std::size_t n = t_thread_number;
  return n != SIZE_MAX ? n : assign_thread_number();
}

inline std::uint64_t load_acquire(const std::uint64_t& w) noexcept {
  return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_acquire);
}

/// What the fast path needs of one table, read once under a pin.
struct FastView {
  const Bucket* buckets = nullptr;
  std::uint64_t mask = 0;
  std::uint64_t older = 0;
  unsigned shift = 0;  // home = hash >> shift
};

enum class Fast { hit, miss, slow };

/// The common case of a lookup: k LIVE in the view's table, or absent from it with no older
/// table. Anything else (CLAIMED, FROZEN, MOVED, SEALED) is Fast::slow. Call pinned, with a
/// view taken under the same pin (or an earlier one still held: a replaced table still
/// answers right, see Map::Session).
[[gnu::always_inline]] inline Fast find_fast(const FastView& ft, std::uint64_t k,
                                             std::uint64_t home, std::uint64_t* out) noexcept {
  const Bucket* b = ft.buckets;
  for (std::uint64_t i = home, n = 0; n <= ft.mask; i = (i + 1) & ft.mask, ++n) {
    const std::uint64_t m1 = load_acquire(b[i].meta);
    const std::uint64_t s = state_of(m1);
    if (s == kEmpty) return ft.older != 0 ? Fast::slow : Fast::miss;
    if (s == kLive) {
      if (load_acquire(b[i].key) != k) continue;
      const std::uint64_t v = load_acquire(b[i].value);
      // Same meta (state and version) after the value load: v belongs to LIVE k.
      if (std::atomic_ref<const std::uint64_t>(b[i].meta).load(std::memory_order_relaxed) != m1) {
        return Fast::slow;
      }
      *out = v;
      return Fast::hit;
    }
    if (s == kTomb) {
      if (load_acquire(b[i].key) != k) continue;
      return Fast::miss;  // erased: the current table is authoritative for any key it decided
    }
    return Fast::slow;  // migration states
  }
  return Fast::slow;
}

// std::optional<uint64_t> as libstdc++ lays it out: the value, then the engaged flag. GCC 12
// builds an optional return with a byte store followed by a qword load of the same bytes (a
// store-forwarding stall on every lookup); bit_cast from two words avoids it. The layout is
// checked by Layout.OptionalReturnLayout.
struct OptionalWords {
  std::uint64_t value;
  std::uint64_t engaged;
};
static_assert(sizeof(OptionalWords) == sizeof(std::optional<std::uint64_t>));
inline std::optional<std::uint64_t> make_optional_fast(bool engaged, std::uint64_t v) noexcept {
  return std::bit_cast<std::optional<std::uint64_t>>(OptionalWords{engaged ? v : 0, engaged});
}

}  // namespace shmap::detail
