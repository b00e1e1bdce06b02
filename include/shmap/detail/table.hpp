// shmap — the tables of one attached map (the Tables type): a table's header checked before it
// is believed (table(), table_or_null()), its buckets and fingerprints, making and freeing a
// table, and linear probing with claims. Implemented in src/table.cpp, whose top comment has the
// race essay ("Fingerprints": why a lookup may end its run at a fingerprint 0). The chain of
// tables and the migration between them are a Migration (migration.hpp); the map's lookups and
// writes (MapImpl, src/map_ops.cpp) use both. MapImpl composes one (MapImpl::tables()) and keeps
// shorthands (table(), bucket(), probe(), ...) so that its callers did not change.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shmap/detail/fast_path.hpp"
#include "shmap/detail/layout.hpp"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace shmap::detail {

class MapImpl;

/// 16-byte compare-and-swap of {lo, hi} at p (16-byte aligned). lock cmpxchg16b is a full
/// barrier: it orders like a seq_cst read-modify-write.
inline bool cas128(std::uint64_t* p, std::uint64_t exp_lo, std::uint64_t exp_hi,
                   std::uint64_t new_lo, std::uint64_t new_hi) noexcept {
#if defined(__SANITIZE_THREAD__)
  // TSan emulates 16-byte atomics with a lock of its own process, which other processes do
  // not take: the CAS would not be atomic against them. So under TSan it is the instruction
  // itself, and the happens-before it gives (a full barrier: release before, acquire after,
  // on this address) is told to TSan by hand.
  __tsan_release(p);
  bool ok;
  asm volatile("lock cmpxchg16b %1"
               : "=@ccz"(ok), "+m"(*reinterpret_cast<unsigned __int128*>(p)), "+a"(exp_lo),
                 "+d"(exp_hi)
               : "b"(new_lo), "c"(new_hi)
               : "memory");
  __tsan_acquire(p);
  return ok;
#else
  using u128 = unsigned __int128;
  const u128 expected = (u128(exp_hi) << 64) | exp_lo;
  const u128 desired = (u128(new_hi) << 64) | new_lo;
  return __sync_bool_compare_and_swap(reinterpret_cast<u128*>(p), expected, desired);
#endif
}

/// A consistent {meta, value} pair of a bucket, read without writing to its cache line.
struct Cell {
  std::uint64_t meta;
  std::uint64_t value;
  std::uint64_t state() const { return state_of(meta); }
};

/// Seqlock-style read: the version in meta changes on every transition, so equal metas around
/// the value load mean the value belongs to that meta.
inline Cell read_cell(const Slot& b) noexcept {
  for (;;) {
    const std::uint64_t m1 = load_acquire(b.meta);
    const std::uint64_t v = load_acquire(b.value);
    // Acquire on the value load keeps the second meta load after it.
    const std::uint64_t m2 =
        std::atomic_ref<const std::uint64_t>(b.meta).load(std::memory_order_relaxed);
    if (m1 == m2) return {m1, v};
  }
}

/// One bucket of a table: its slot ({value, meta}) and its key word (layout.hpp).
struct BucketRef {
  Slot* slot = nullptr;
  std::uint64_t* key = nullptr;
  std::uint64_t index = 0;  // in its table
  explicit operator bool() const { return slot != nullptr; }
};

/// Outcome of looking a key up in one table.
enum class Probe { found, absent, sealed, full };
struct ProbeResult {
  Probe kind;
  BucketRef bucket{};       // the key's bucket, for Probe::found
  Cell cell{};              // its content when probed
  bool claimed = false;     // this probe claimed the bucket (a new key in this table)
  bool over_limit = false;  // ... and the table passed its load limit with it
};

// ---- what the tables, their migration and the map's writes share ----------------------------

inline void store_key(const BucketRef& b, std::uint64_t k) {
  // Release: the key is visible to whoever later acquires the meta written by our CAS.
  std::atomic_ref<std::uint64_t>(*b.key).store(k, std::memory_order_release);
}
inline std::uint8_t load_fp(const std::uint8_t* fps, std::uint64_t i) {
  // Acquire: a bucket read after its fingerprint is at least as new as the claim it describes.
  return std::atomic_ref<const std::uint8_t>(fps[i]).load(std::memory_order_acquire);
}
inline void store_fp(std::uint8_t* fps, std::uint64_t i, std::uint8_t f) {
  // Release: after the claim CAS it describes (a claim), or before the seal CAS (sealing).
  std::atomic_ref<std::uint8_t>(fps[i]).store(f, std::memory_order_release);
}
// The key of a claimed bucket read as c (CLAIMED keeps it in the value word until the key word
// is written).
inline std::uint64_t key_of(const BucketRef& b, const Cell& c) {
  return c.state() == kClaimed ? c.value : load_acquire(*b.key);
}
// A key's probe run in a table, as writers walk it: the positions whose bucket may be the
// key's or may end the run (fingerprint 0, 1 or the key's), skipping the buckets whose
// fingerprint is another key's (written only after a claim; a bucket's key never changes).
// At most one pass over the table.
class RunWalk {
 public:
  RunWalk(const std::uint8_t* fps, std::uint64_t hash, std::uint64_t capacity)
      : fps_(fps), capacity_(capacity), i_(home_of(hash, capacity)), want_(fingerprint(hash)) {}
  /// The position to read next, and its fingerprint (the same position again until step());
  /// false once the whole table was walked.
  bool at(std::uint64_t* pos, std::uint8_t* fp) {
    for (; n_ < capacity_; step()) {
      const std::uint8_t f = load_fp(fps_, i_);
      if (f == want_ || f == kFpFree || f == kFpSealing) {
        *pos = i_;
        *fp = f;
        return true;
      }
    }
    return false;
  }
  void step() {
    i_ = next_bucket(i_, capacity_);
    ++n_;
  }
  std::uint8_t want() const { return want_; }

 private:
  const std::uint8_t* fps_;
  std::uint64_t capacity_;
  std::uint64_t i_;
  std::uint64_t n_ = 0;
  std::uint8_t want_;
};
// TableHeader::bulk.reserved: 1 once the table was found with no EMPTY bucket (see layout.hpp).
inline std::atomic_ref<std::uint64_t> full_flag(TableHeader* t) {
  return std::atomic_ref<std::uint64_t>(t->bulk.reserved);
}

/// The tables of one map, one at a time: what a table is and how a key is found or claimed in
/// it. Holds only a reference back to its map (the segment, the handles' lanes, the seed).
class Tables {
 public:
  explicit Tables(const MapImpl& m) : m_(m) {}
  Tables(const Tables&) = delete;
  Tables& operator=(const Tables&) = delete;

  /// The table at `offset`, mapped here, after checking what a damaged or hostile segment
  /// could get wrong: the offset (page aligned, in the arena, inside the reservation) and the
  /// header (table_shape_ok: a capacity of layout.hpp's list and bits = capacity_bits(it),
  /// extent_bytes >= table_bytes(capacity), the extent inside the object). Throws corrupt.
  TableHeader* table(std::uint64_t offset) const;
  /// table() for paths that must not throw (reclamation runs from unpin, in destructors):
  /// nullptr where table() would throw.
  TableHeader* table_or_null(std::uint64_t offset) const noexcept;
  /// Bucket i of t (i < capacity), as pointers to its slot and its key (layout.hpp).
  static BucketRef bucket(TableHeader* t, std::uint64_t i) {
    char* base = reinterpret_cast<char*>(t) + kTableHeaderBytes;
    return {reinterpret_cast<Slot*>(base + slot_offset(i)),
            reinterpret_cast<std::uint64_t*>(base + key_offset(i)), i};
  }
  /// One fingerprint byte per bucket (layout.hpp, "Fingerprints").
  static std::uint8_t* fingerprints(TableHeader* t) {
    return reinterpret_cast<std::uint8_t*>(t) + kTableHeaderBytes + t->capacity * kBucketBytes;
  }
  /// One bit per chunk of t, set when the chunk has been moved into t's successor.
  static std::uint64_t* done_bitmap(TableHeader* t) {
    return reinterpret_cast<std::uint64_t*>(fingerprints(t) + fp_bytes(t->capacity));
  }
  /// A new table of `capacity` buckets (zeroed) whose older table is `older` (0: none), not
  /// linked anywhere yet; its creator is recorded for the leak sweep (leaks.cpp).
  std::uint64_t create_table(std::uint64_t capacity, std::uint64_t older) const;
  /// Frees a table that nobody else has seen (never linked, or lost the race to link).
  void discard_table(std::uint64_t table) const;
  /// Looks k up in t; with claim, claims an EMPTY bucket for k if k has none. A `writer`
  /// probe (claim implies it) writes the fingerprints a dead or slow claimer left unwritten
  /// on its way ("Fingerprints"); a reader's never writes.
  ProbeResult probe(TableHeader* t, std::uint64_t k, bool claim, bool writer) const;
  /// Counts a claim in t; true if t passed its load limit (3/4) with it.
  bool note_claim(TableHeader* t) const;
  /// Claimed buckets of t (the striped counter: approximate, see note_claim).
  static std::uint64_t used_buckets(const TableHeader* t);
  /// Walks one table that has no older table (see MapImpl::for_each).
  void walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const;
  /// k's home bucket in t.
  std::uint64_t home(std::uint64_t k, const TableHeader* t) const;

 private:
  const MapImpl& m_;
};

}  // namespace shmap::detail
