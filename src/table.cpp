// shmap — tables: linear probing over 24-byte buckets with fingerprints, the bucket state machine
// (the Tables type, detail/table.hpp). Growth by a chain of tables with incremental migration is
// migration.cpp's; the map's lookups and writes over the chain are map_ops.cpp's.
//
// What can race in one table, and why the result is still right:
// - Two claimers of one empty bucket: the 16-byte CAS EMPTY -> CLAIMED(k) has one winner; the
//   loser re-reads the bucket and either finds its own key there or probes on. Keys are never
//   removed from a table, so a key is claimed at most once per table.
// - A lookup that ends its probe run at a fingerprint 0, against claimers and sealers: below.
//
// Fingerprints
// ============
// A lookup's fast path (fast_path.hpp) ends a probe run at the first fingerprint 0 without
// reading that bucket. That is right only if every key that can be found beyond a bucket
// had that bucket's fingerprint written before it could be found. Who writes what:
// - A claimer: CAS EMPTY -> CLAIMED(k), then the fingerprint of k (release), all before the
//   key can become LIVE -- the bucket's own key is not acknowledged before its byte is set.
// - Every writer (probe with `writer`, settle) that walks past a claimed bucket whose byte
//   it reads as 0 writes that bucket's fingerprint before going on. A bucket never becomes
//   EMPTY again and its key never changes, so every writer writes the same byte. So a key
//   claimed beyond z in a run was claimed after z's byte was written (by its own claimer or
//   by the claimer of the key beyond); a key that arrives in a *newer* table after being
//   settled here was settled by a walk that wrote z's byte before sealing the run's end.
//   A lookup that reads 0 at z read it before all of those: the keys beyond z, and a key
//   whose run here ends at z, were not yet there (or not yet settled elsewhere) -- its
//   answer "absent" was true when it read the byte.
// - A writer whose own key's bucket still reads 0 (its claimer died, or is slow) writes the
//   byte before it writes the value: a LIVE key always has its byte.
// - A sealer (move_bucket, settle) writes 1 *before* its EMPTY -> SEALED CAS. A lookup that
//   reads 1 goes to the slow path (which reads bucket states). If the seal CAS loses to a
//   claim, the claimer's byte may land before or after the 1: either is harmless (1 only
//   sends lookups to the slow path, and the table is being migrated away anyway).
// - Readers never write a byte (they write no shared line but their own lane). A slow-path
//   reader reads the bucket of every byte that is 0 or 1 and decides by its state, as before
//   fingerprints; it skips only buckets whose byte is another key's fingerprint (set only
//   after a claim, so the bucket is claimed, and by another key).
#include "shmap/detail/table.hpp"

#include <string>

#include "shmap/detail/chaos.hpp"
#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {

TableHeader* Tables::table(std::uint64_t offset) const {
  // Every table offset comes from shared memory (current_table, older, the retired stack):
  // checked before it is dereferenced, and the header before its sizes are believed. A thread
  // asks for the same table over and over (the current one, every write): if the header words
  // are the ones it validated last at this offset, the checks below would pass again (same
  // inputs, and the mapping only grows), so they are skipped.
  const std::size_t tn = t_thread_number;
  LocalLane* cache = tn < MapImpl::kPrimaryLanes ? &m_.handles().local_lanes()[tn] : nullptr;
  if (cache != nullptr && offset != 0 && cache->table_offset == offset) {
    auto* t = m_.at<TableHeader>(offset);
    if (std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed) ==
            cache->table_capacity &&
        std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed) ==
            cache->table_bits &&
        std::atomic_ref<const std::uint64_t>(t->extent_bytes).load(std::memory_order_relaxed) ==
            cache->table_extent) {
      return t;
    }
  }
  if (offset < m_.segment().arena_offset() || offset % kPage != 0 ||
      offset > m_.segment().reserved_bytes() - kPage) {
    fail(Errc::corrupt, m_.name(),
         "table offset " + std::to_string(offset) +
             " lies outside the arena; the segment is damaged: run 'shmap check " + m_.name() +
             "', then restore the map from a dump or recreate it");
  }
  m_.ensure_mapped(offset + kTableHeaderBytes);
  auto* t = m_.at<TableHeader>(offset);
  // Each field read once: the values checked are the values used below.
  const std::uint64_t cap =
      std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed);
  const std::uint64_t bits =
      std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed);
  const std::uint64_t ext =
      std::atomic_ref<const std::uint64_t>(t->extent_bytes).load(std::memory_order_relaxed);
  if (!table_shape_ok(cap, bits) || ext < table_bytes(cap) || ext % kPage != 0 ||
      ext > m_.segment().reserved_bytes() - offset) {
    fail(Errc::corrupt, m_.name(),
         "the table at offset " + std::to_string(offset) + " has a bad header (capacity " +
             std::to_string(cap) + ", bits " + std::to_string(bits) + ", extent " +
             std::to_string(ext) + " bytes); the segment is damaged: run 'shmap check " +
             m_.name() + "', then restore the map from a dump or recreate it");
  }
  m_.ensure_mapped(offset + ext);
  if (cache != nullptr) {
    cache->table_offset = offset;
    cache->table_capacity = cap;
    cache->table_bits = bits;
    cache->table_extent = ext;
  }
  return t;
}

TableHeader* Tables::table_or_null(std::uint64_t offset) const noexcept {
  try {
    return table(offset);
  } catch (...) {
    return nullptr;
  }
}

std::uint64_t Tables::create_table(std::uint64_t capacity, std::uint64_t older) const {
  const std::uint64_t older_cap = older != 0 ? table(older)->capacity : 0;
  std::uint64_t bytes = 0;
  const std::uint64_t off = m_.segment().allocate(table_bytes(capacity), &bytes);  // zeroed
  auto* t = m_.at<TableHeader>(off);
  // Relaxed atomic stores: the table is published by a seq_cst CAS, but the leak sweep
  // (leaks.cpp) walks the arena and may read a header while it is being written here; it
  // validates what it reads and judges only tables whose creator is gone.
  auto put = [](std::uint64_t& w, std::uint64_t v) {
    std::atomic_ref<std::uint64_t>(w).store(v, std::memory_order_relaxed);
  };
  put(t->capacity, capacity);
  put(t->bits, capacity_bits(capacity));
  put(t->extent_bytes, bytes);
  put(t->older_capacity, older_cap);
  put(t->created_epoch, m_.header().global_epoch.load(std::memory_order_relaxed));
  put(t->discard_older, 0);
  // Who made it: a table never linked whose creator is gone is a leak (leaks.cpp). 0 while
  // the segment is being created (no slot yet): that first table is published at once.
  put(t->bulk.key, m_.handles().owner_word());
  // Relaxed: the table is published by the seq_cst CAS on current_table.
  t->older.store(older, std::memory_order_relaxed);
  return off;
}

bool Tables::note_claim(TableHeader* t) const {
  // Claims are counted per thread and added to a striped counter 16 at a time (one locked
  // add per 16 inserts); small tables count every claim. A count left pending when the thread
  // moves to another table is dropped: the limit is approximate by design (a probe that finds
  // a table physically full forces the resize anyway).
  thread_local const TableHeader* t_table = nullptr;
  thread_local std::uint64_t t_pending = 0;
  std::uint64_t add = 1;
  if (t->capacity > 4096) {
    if (t_table != t) {
      t_table = t;
      t_pending = 0;
    }
    if (++t_pending < 16) return false;
    add = t_pending;
    t_pending = 0;
  }
  const std::size_t stripe = (m_.handles().slot_index() * kLanes + thread_number()) % kStripes;
  t->used[stripe].n.fetch_add(add, std::memory_order_relaxed);
  return used_buckets(t) * 4 >= t->capacity * 3;
}

std::uint64_t Tables::used_buckets(const TableHeader* t) {
  std::uint64_t sum = 0;
  for (const auto& s : t->used) sum += s.n.load(std::memory_order_relaxed);
  return sum;
}

ProbeResult Tables::probe(TableHeader* t, std::uint64_t k, bool claim, bool writer) const {
  std::uint8_t* fps = fingerprints(t);
  const std::uint64_t hash = hash_key(k, m_.seed());
  RunWalk run(fps, hash, t->capacity);
  const std::uint8_t want = run.want();
  // Most probes read their home bucket first (a key near home, an insert claiming it): fetch
  // it, for writing, while its fingerprint arrives, so that the two misses overlap.
  __builtin_prefetch(bucket(t, home_of(hash, t->capacity)).slot, 1);
  std::uint64_t i = 0;
  std::uint8_t f = 0;
  while (run.at(&i, &f)) {
    const BucketRef bk = bucket(t, i);
    SHMAP_CHAOS_POINT();
    const Cell c = read_cell(*bk.slot);
    switch (c.state()) {
      case kEmpty: {
        if (!claim) return {Probe::absent};
        const std::uint64_t m = next_meta(c.meta, kClaimed);
        if (cas128(&bk.slot->value, c.value, c.meta, k, m)) {
          SHMAP_CHAOS_POINT();
          store_fp(fps, i, want);
          ProbeResult r{Probe::found, bk, Cell{m, k}, true};
          r.over_limit = note_claim(t);
          return r;
        }
        continue;  // lost the bucket to another claim (or a seal): look at it again
      }
      case kSealed:
        return {Probe::sealed};
      default: {
        const std::uint64_t key = key_of(bk, c);
        if (key == k) {
          if (writer && f != want) store_fp(fps, i, want);
          return {Probe::found, bk, c};
        }
        if (writer && f == kFpFree) store_fp(fps, i, fingerprint(hash_key(key, m_.seed())));
        break;
      }
    }
    run.step();
  }
  return {Probe::full};
}

void Tables::discard_table(std::uint64_t table_off) const {
  m_.segment().free_extent(table_off, table(table_off)->extent_bytes);
}

void Tables::walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t),
                  void* ctx) const {
  // t has no older table: every key has exactly one bucket in it, so each is visited once.
  // A bucket MOVED meanwhile (t got a successor during the walk) is followed by a lookup.
  for (std::uint64_t i = 0; i < t->capacity; ++i) {
    const BucketRef b = bucket(t, i);
    const Cell c = read_cell(*b.slot);
    const std::uint64_t s = c.state();
    if (s == kLive || s == kFrozen) {
      fn(ctx, load_acquire(*b.key), c.value);
    } else if (s == kMoved) {
      const std::uint64_t k = load_acquire(*b.key);
      if (const auto v = m_.find(k)) fn(ctx, k, *v);
    }
  }
}

std::uint64_t Tables::home(std::uint64_t k, const TableHeader* t) const {
  return home_of(hash_key(k, m_.seed()), t->capacity);
}

}  // namespace shmap::detail
