// shmap — the lookup fast path, shared by the library and the inline Map::Session::find.
//
// Everything here reads shared memory only through a FastView taken while pinned (see
// MapImpl::fast_table, which validates the table header before building one): the common
// case of a lookup -- the key LIVE in the view's table, or absent from a table that has no
// older one -- is decided in a handful of loads, and anything else (a migration state) is
// left to the slow path. Kept small and inline so that a loop of lookups stays short enough
// for the CPU to overlap their cache misses.
#pragma once

#include <emmintrin.h>

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
  const char* buckets = nullptr;      // bucket i: slot_offset(i), key_offset(i) (layout.hpp)
  const std::uint8_t* fps = nullptr;  // fingerprints: one byte per bucket (layout.hpp)
  std::uint64_t mask = 0;
  std::uint64_t older = 0;
  unsigned shift = 0;  // home = hash >> shift
  // Where the view came from: the segment's current_table word, and its value then. A view
  // kept across lookups (Map::Session) is used only while they are equal.
  const std::atomic<std::uint64_t>* current = nullptr;
  std::uint64_t table = 0;
};

enum class Fast { hit, miss, slow };

/// 16 fingerprint bytes at p (16-byte aligned). Two 8-byte atomic loads, not one vector load:
/// writers store the bytes atomically while we read, and a plain load would be a data race.
/// Acquire: a bucket read after a fingerprint is at least as new as the claim it describes.
[[gnu::always_inline]] inline __m128i load_fingerprints(const std::uint8_t* p) noexcept {
  const auto* w = reinterpret_cast<const std::uint64_t*>(p);
  const std::uint64_t lo =
      std::atomic_ref<const std::uint64_t>(w[0]).load(std::memory_order_acquire);
  const std::uint64_t hi =
      std::atomic_ref<const std::uint64_t>(w[1]).load(std::memory_order_acquire);
  return _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
}

/// The common case of a lookup: k LIVE in the view's table, or absent from it with no older
/// table. Anything else (CLAIMED, FROZEN, MOVED, SEALED, a fingerprint being sealed) is
/// Fast::slow. Call pinned, with a view taken under the same pin (or an earlier one still
/// held: a replaced table still answers right, see Map::Session).
///
/// The probe run is read 16 fingerprints at a time: only buckets whose fingerprint is k's
/// are read, and the run ends at the first free (0) fingerprint -- a miss usually reads one
/// line of fingerprints and no bucket. Why a 0 may end the run: layout.hpp, "Fingerprints".
///
/// kPrefetchHome: fetch the home bucket while the fingerprints arrive, so that a hit costs one
/// memory latency, not two in a row (the bucket is read only once its fingerprint matched).
/// It makes hits ~35% faster and misses ~2x slower at 1M-16M keys (the wasted fetch of a miss
/// competes for memory): bench/results/run10-prefetch-ab.txt. find_many, which can do better
/// (it fetches the candidate bucket of every key of a batch before it reads any), turns it off.
template <bool kPrefetchHome = true>
[[gnu::always_inline]] inline Fast find_fast(const FastView& ft, std::uint64_t k,
                                             std::uint64_t hash, std::uint64_t* out) noexcept {
  const std::uint64_t home = hash >> ft.shift;
  if constexpr (kPrefetchHome) __builtin_prefetch(ft.buckets + slot_offset(home));
  const __m128i want = _mm_set1_epi8(static_cast<char>(fingerprint(hash)));
  const __m128i zero = _mm_setzero_si128();
  const __m128i sealing = _mm_set1_epi8(static_cast<char>(kFpSealing));
  // A table of 8 buckets has one group of 16 bytes of which only the first 8 exist.
  const unsigned valid = ft.mask >= 15 ? 0xffffu : (1u << (ft.mask + 1)) - 1;
  std::uint64_t group = home & ~std::uint64_t{15} & ft.mask;
  unsigned from = ~0u << (home & 15);  // the run starts at home
  // Every group once, the home group twice (its positions before home come last).
  for (std::uint64_t n = 0; n <= (ft.mask >> 4) + 1; ++n) {
    const __m128i g = load_fingerprints(ft.fps + group);
    const unsigned live = valid & from;
    const unsigned zeros = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(g, zero))) & live;
    const unsigned before = zeros != 0 ? (zeros & (0u - zeros)) - 1 : 0xffffu;  // run part
    if ((static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(g, sealing))) & live & before) !=
        0) {
      return Fast::slow;  // a migration is sealing part of the run
    }
    unsigned match =
        static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(g, want))) & live & before;
    while (match != 0) {
      const std::uint64_t i = group + static_cast<unsigned>(__builtin_ctz(match));
      match &= match - 1;
      const Slot& b = *reinterpret_cast<const Slot*>(ft.buckets + slot_offset(i));
      const auto& key = *reinterpret_cast<const std::uint64_t*>(ft.buckets + key_offset(i));
      const std::uint64_t m1 = load_acquire(b.meta);
      const std::uint64_t s = state_of(m1);
      if (s == kLive) {
        if (load_acquire(key) != k) continue;
        const std::uint64_t v = load_acquire(b.value);
        // Same meta (state and version) after the value load: v belongs to LIVE k.
        if (std::atomic_ref<const std::uint64_t>(b.meta).load(std::memory_order_relaxed) != m1) {
          return Fast::slow;
        }
        *out = v;
        return Fast::hit;
      }
      if (s == kTomb) {
        if (load_acquire(key) != k) continue;
        return Fast::miss;  // erased: the current table is authoritative for any key it decided
      }
      return Fast::slow;  // claimed but unwritten, or a migration state
    }
    if (zeros != 0) return ft.older != 0 ? Fast::slow : Fast::miss;
    group = (group + 16) & ft.mask;
    from = ~0u;
  }
  return Fast::slow;
}

/// For batches (find_many): the bucket a lookup of `hash` will read first -- the first
/// bucket of its run, within its home group, whose fingerprint is the key's -- or nullptr if
/// that group decides without a bucket (no match before the run ends) or cannot say.
[[gnu::always_inline]] inline const void* first_candidate(const FastView& ft,
                                                          std::uint64_t hash) noexcept {
  const std::uint64_t home = hash >> ft.shift;
  const unsigned valid = ft.mask >= 15 ? 0xffffu : (1u << (ft.mask + 1)) - 1;
  const std::uint64_t group = home & ~std::uint64_t{15} & ft.mask;
  const __m128i g = load_fingerprints(ft.fps + group);
  const unsigned live = valid & (~0u << (home & 15));
  const unsigned zeros =
      static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_setzero_si128()))) & live;
  const unsigned before = zeros != 0 ? (zeros & (0u - zeros)) - 1 : 0xffffu;
  const unsigned match = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(
                             g, _mm_set1_epi8(static_cast<char>(fingerprint(hash)))))) &
                         live & before;
  return match != 0 ? ft.buckets + slot_offset(group + static_cast<unsigned>(__builtin_ctz(match)))
                    : nullptr;
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
