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

#include "shmap/detail/chaos.hpp"
#include "shmap/detail/layout.hpp"

namespace shmap::detail {

/// This thread's process-wide number (small, reused after the thread exits).
inline constinit thread_local std::size_t t_thread_number = SIZE_MAX;
std::size_t assign_thread_number() noexcept;
inline std::size_t thread_number() noexcept {
  const std::size_t n = t_thread_number;
  return n != SIZE_MAX ? n : assign_thread_number();
}

/// Set by retire(): the thread reclaims once it is no longer pinned.
inline constinit thread_local bool t_reclaim_wanted = false;

inline std::uint64_t load_acquire(const std::uint64_t& w) noexcept {
  return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_acquire);
}

/// What the fast path needs of one table, read once under a pin.
struct FastView {
  const char* buckets = nullptr;      // bucket i: slot_offset(i), key_offset(i) (layout.hpp)
  const std::uint8_t* fps = nullptr;  // fingerprints: one byte per bucket (layout.hpp)
  std::uint64_t capacity = 0;         // home = home_of(hash, capacity)
  std::uint64_t older = 0;
  // Fingerprint bytes of a group that exist (a table of 8 buckets has one group of 16 bytes
  // of which only the first 8 exist), and the groups a probe may read: every group once, the
  // home group twice (its positions before home come last).
  unsigned valid = 0;
  std::uint64_t rounds = 0;
  // Where the view came from: the segment's current_table word, and its value then. A view
  // kept across lookups (Map::Session) is used only while they are equal.
  const std::atomic<std::uint64_t>* current = nullptr;
  std::uint64_t table = 0;
};

/// The pin of a thread's own lane (RCU read-side enter, see handles.cpp), for a process whose
/// pins are light (membarrier registered): a plain store; the store-load order against the
/// caller's next loads is supplied by the reclaimer's membarrier, not paid per operation.
/// Release (a plain mov on x86, as relaxed would be): a reclaimer that reads this pin, not the
/// previous unpin, must still be ordered after everything the previous operations read -- a
/// later store by the same thread does not carry the unpin's release by itself.
[[gnu::always_inline]] inline void light_pin(std::atomic<std::uint64_t>& pin,
                                             const std::atomic<std::uint64_t>& global_epoch) {
  // Acquire: an epoch read after a retirer's fetch_add orders our chain loads after its unlink.
  const std::uint64_t e = global_epoch.load(std::memory_order_acquire);
  SHMAP_CHAOS_POINT();
  pin.store(e << 16 | 1, std::memory_order_release);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

/// Process-local state of one exclusive lane (threads 0-14 of the process, see
/// MapImpl::lane_of), touched only by the thread that owns the lane.
struct alignas(64) LocalLane {
  std::uint32_t depth = 0;  // pin nesting: the outer pin covers nested ones
  // The table this thread last looked up in (Map::find's cached view). Its fields are a
  // function of the table's offset and capacity alone (and of the mapping, which only grows),
  // so they are right for whatever table sits at view.table as long as that table's capacity
  // is `capacity` -- even if the table was freed and another one made in its place. 0: none.
  std::uint64_t capacity = 0;
  FastView view;
  // The table header this thread last validated (MapImpl::table): its offset, and the words
  // the validation read. The same words at the same offset validate the same way (the mapping
  // only grows), so table() skips the checks when they match. table_offset 0: none.
  std::uint64_t table_offset = 0;
  std::uint64_t table_capacity = 0;
  std::uint64_t table_bits = 0;
  std::uint64_t table_extent = 0;
};

/// What Map::find reads, inline, for a process with light pins: Map::find pins, checks its
/// cached view against current_table, looks up and unpins without a call into the library.
/// Only threads with an exclusive lane (thread_number() < kFrontLanes) take it.
struct FastFront {
  static constexpr std::size_t kFrontLanes = kLanes - 1;
  Lane* lanes = nullptr;  // the Map's own handle slot's lanes
  LocalLane* local = nullptr;
  const std::atomic<std::uint64_t>* global_epoch = nullptr;
  const std::atomic<std::uint64_t>* current_table = nullptr;
  std::uint64_t seed = 0;
};

enum class Fast { hit, miss, slow };

/// 16 fingerprint bytes at p (16-byte aligned), with acquire order: a bucket read after a
/// fingerprint is at least as new as the claim it describes.
///
/// Writers store fingerprint bytes atomically while we read. What a reader needs is each byte
/// old or new (a byte never tears on x86) and the bytes not older than this load; bytes of the
/// same group may be of different moments, as they always could (they are written one by
/// one). One movdqa gives exactly that: it is a single load of aligned bytes, and x86 keeps
/// later loads after it (acquire, in the hardware). It is written as asm so that the compiler
/// reads the bytes once, where it stands, and never assumes them unchanged (a plain vector load
/// of shared bytes would be a data race in C++); the signal fence keeps the compiler from
/// moving later loads above it. Under ThreadSanitizer, which cannot see inside asm, it is two
/// 8-byte atomic loads instead (three more instructions per group on the hot path otherwise).
[[gnu::always_inline]] inline __m128i load_fingerprints(const std::uint8_t* p) noexcept {
#if defined(__SANITIZE_THREAD__)
  const auto* w = reinterpret_cast<const std::uint64_t*>(p);
  const std::uint64_t lo =
      std::atomic_ref<const std::uint64_t>(w[0]).load(std::memory_order_acquire);
  const std::uint64_t hi =
      std::atomic_ref<const std::uint64_t>(w[1]).load(std::memory_order_acquire);
  return _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
#else
  __m128i g;
  asm volatile("movdqa %1, %0" : "=x"(g) : "m"(*reinterpret_cast<const __m128i*>(p)));
  std::atomic_signal_fence(std::memory_order_acquire);
  return g;
#endif
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
  const std::uint64_t home = home_of(hash, ft.capacity);
  if constexpr (kPrefetchHome) __builtin_prefetch(ft.buckets + slot_offset(home));
  const __m128i want = _mm_set1_epi8(static_cast<char>(fingerprint(hash)));
  const __m128i zero = _mm_setzero_si128();
  const __m128i sealing = _mm_set1_epi8(static_cast<char>(kFpSealing));
  std::uint64_t group = home & ~std::uint64_t{15};
  unsigned from = ~0u << (home & 15);  // the run starts at home
  for (std::uint64_t n = 0; n < ft.rounds; ++n) {
    const __m128i g = load_fingerprints(ft.fps + group);
    const unsigned live = ft.valid & from;
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
      const std::uint64_t so = slot_offset(i);
      const Slot& b = *reinterpret_cast<const Slot*>(ft.buckets + so);
      const auto& key =
          *reinterpret_cast<const std::uint64_t*>(ft.buckets + key_offset_from_slot(i, so));
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
    group += 16;  // a capacity is a whole number of groups, or one group (layout.hpp)
    if (group >= ft.capacity) group = 0;
    from = ~0u;
  }
  return Fast::slow;
}

/// Map::find's common case, without a call into the library: pin, check this thread's cached
/// view against current_table, find_fast, unpin. Fast::slow for anything it does not decide
/// -- no exclusive lane, a pin already held (a Session), no view yet or another current table,
/// a migration state, a reclaim due -- and the caller then takes MapImpl::find, which
/// validates the current table afresh and caches its view.
///
/// What can race, and why the answer is still right. The view was validated by this thread
/// under an earlier pin, and its table may since have been retired, freed and its memory
/// reused. We pin first and then load current_table (a plain load; what orders it after the
/// plain pin store is not the C++ memory order -- a load is not ordered after an earlier
/// release store -- but the reclaimer's membarrier, see light_pin and handles.cpp), so the
/// table at that offset now cannot be freed until we unpin. If it is view.table and its
/// capacity word is the view's, the view describes it exactly: every field of a view is a
/// function of the offset and the capacity (and of the mapping, which only grows), whichever
/// table lives there. A damaged capacity word can only fail the check
/// (the slow path then validates the header). `older` is not cached: it is read from the table
/// each time, as fast_table does, because it turns 0 when a migration ends.
[[gnu::always_inline]] inline Fast find_front(const FastFront& f, std::uint64_t k,
                                              std::uint64_t* out) noexcept {
  const std::size_t t = t_thread_number;
  if (t >= FastFront::kFrontLanes) return Fast::slow;  // SIZE_MAX: no number yet
  LocalLane& local = f.local[t];
  if (local.depth != 0) return Fast::slow;
  std::atomic<std::uint64_t>& pin = f.lanes[t].pin;
  light_pin(pin, *f.global_epoch);
  Fast r = Fast::slow;
  FastView& v = local.view;
  if (f.current_table->load(std::memory_order_seq_cst) == v.table && local.capacity != 0) {
    const auto* h = reinterpret_cast<const TableHeader*>(v.buckets - kTableHeaderBytes);
    if (std::atomic_ref<const std::uint64_t>(h->capacity).load(std::memory_order_relaxed) ==
        local.capacity) {
      v.older = h->older.load(std::memory_order_seq_cst);  // as fast_table reads it
      r = find_fast(v, k, hash_key(k, f.seed), out);
    }
  }
  // Release: everything this lookup read happens-before a reclaimer that sees quiescence.
  pin.store(0, std::memory_order_release);
  return t_reclaim_wanted ? Fast::slow : r;  // the slow path's unpin reclaims
}

/// For batches (find_many): the bucket a lookup of `hash` will read first -- the first
/// bucket of its run, within its home group, whose fingerprint is the key's -- or nullptr if
/// that group decides without a bucket (no match before the run ends) or cannot say.
[[gnu::always_inline]] inline const void* first_candidate(const FastView& ft,
                                                          std::uint64_t hash) noexcept {
  const std::uint64_t home = home_of(hash, ft.capacity);
  const std::uint64_t group = home & ~std::uint64_t{15};
  const __m128i g = load_fingerprints(ft.fps + group);
  const unsigned live = ft.valid & (~0u << (home & 15));
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
