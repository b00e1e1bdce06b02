// shmap — tables: linear probing over 24-byte buckets with fingerprints, the bucket state machine,
// and growth by a chain of tables with incremental migration (seed 000, seed 004).
//
// The chain is `current -> older` (at most two tables; a new successor is only made once the
// current table has assimilated its older one). Every write first migrates kChunksPerWrite
// chunks of the older table, then settles its own key (moves the key's old bucket, or seals
// the key's whole probe run in the older table), then works in the current table only.
//
// What can race, and why the result is still right:
// - Two claimers of one empty bucket: the 16-byte CAS EMPTY -> CLAIMED(k) has one winner; the
//   loser re-reads the bucket and either finds its own key there or probes on. Keys are never
//   removed from a table, so a key is claimed at most once per table.
// - A slow writer that still believes the older table is current: every CAS it makes on an
//   older bucket expects the bucket's full {value, meta}, and migration changes meta (FROZEN,
//   MOVED, SEALED) before the successor holds the key. Its CAS fails, it re-reads the chain
//   and retries in the successor. An EMPTY bucket is SEALED, never skipped, so a slow insert
//   cannot claim a bucket that the migration has passed.
// - Two movers of one bucket (a chunk owner and a writer settling its key, or a helper redoing
//   a stalled chunk): LIVE -> FROZEN freezes the value, the copy into the successor only fills
//   a CLAIMED bucket (so a second copy of the same frozen value changes nothing, and a copy
//   never overwrites a value written after the move), and FROZEN -> MOVED has one winner.
//   Writers of the key in the successor first see the older bucket MOVED (they help move it).
// - Readers look in the current table first, then in the older one, and when the older one
//   says MOVED or SEALED they look in the current table once more: a value is in the older
//   table until the moment it is sealed there, and the successor holds it from before then.
// - A mover killed at any instruction leaves a FROZEN or CLAIMED bucket that the next
//   writer of that key or the next pass over the chunk finishes; nothing waits for it.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {
namespace {

thread_local unsigned t_erases = 0;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it and we fault lazily
#endif

std::uint64_t monotonic_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

void store_key(const BucketRef& b, std::uint64_t k) {
  // Release: the key is visible to whoever later acquires the meta written by our CAS.
  std::atomic_ref<std::uint64_t>(*b.key).store(k, std::memory_order_release);
}

}  // namespace

TableHeader* MapImpl::table(std::uint64_t offset) const {
  // Every table offset comes from shared memory (current_table, older, the retired stack):
  // checked before it is dereferenced, and the header before its sizes are believed. A thread
  // asks for the same table over and over (the current one, every write): if the header words
  // are the ones it validated last at this offset, the checks below would pass again (same
  // inputs, and the mapping only grows), so they are skipped.
  const std::size_t tn = t_thread_number;
  LocalLane* cache = tn < kPrimaryLanes ? &handles_.local_lanes()[tn] : nullptr;
  if (cache != nullptr && offset != 0 && cache->table_offset == offset) {
    auto* t = at<TableHeader>(offset);
    if (std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed) ==
            cache->table_capacity &&
        std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed) ==
            cache->table_bits &&
        std::atomic_ref<const std::uint64_t>(t->extent_bytes).load(std::memory_order_relaxed) ==
            cache->table_extent) {
      return t;
    }
  }
  if (offset < seg_.arena_offset() || offset % kPage != 0 ||
      offset > seg_.reserved_bytes() - kPage) {
    fail(Errc::corrupt, name(),
         "table offset " + std::to_string(offset) +
             " lies outside the arena; the segment is damaged: run 'shmap check " + name() +
             "', then restore the map from a dump or recreate it");
  }
  ensure_mapped(offset + kTableHeaderBytes);
  auto* t = at<TableHeader>(offset);
  // Each field read once: the values checked are the values used below.
  const std::uint64_t cap =
      std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed);
  const std::uint64_t bits =
      std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed);
  const std::uint64_t ext =
      std::atomic_ref<const std::uint64_t>(t->extent_bytes).load(std::memory_order_relaxed);
  if (!table_shape_ok(cap, bits) || ext < table_bytes(cap) || ext % kPage != 0 ||
      ext > seg_.reserved_bytes() - offset) {
    fail(Errc::corrupt, name(),
         "the table at offset " + std::to_string(offset) + " has a bad header (capacity " +
             std::to_string(cap) + ", bits " + std::to_string(bits) + ", extent " +
             std::to_string(ext) + " bytes); the segment is damaged: run 'shmap check " + name() +
             "', then restore the map from a dump or recreate it");
  }
  ensure_mapped(offset + ext);
  if (cache != nullptr) {
    cache->table_offset = offset;
    cache->table_capacity = cap;
    cache->table_bits = bits;
    cache->table_extent = ext;
  }
  return t;
}

TableHeader* MapImpl::table_or_null(std::uint64_t offset) const noexcept {
  try {
    return table(offset);
  } catch (...) {
    return nullptr;
  }
}

std::uint64_t MapImpl::create_table(std::uint64_t capacity, std::uint64_t older) const {
  const std::uint64_t older_cap = older != 0 ? table(older)->capacity : 0;
  std::uint64_t bytes = 0;
  const std::uint64_t off = seg_.allocate(table_bytes(capacity), &bytes);  // zeroed
  auto* t = at<TableHeader>(off);
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
  put(t->created_epoch, header().global_epoch.load(std::memory_order_relaxed));
  put(t->discard_older, 0);
  // Who made it: a table never linked whose creator is gone is a leak (leaks.cpp). 0 while
  // the segment is being created (no slot yet): that first table is published at once.
  put(t->bulk.key, handles_.owner_word());
  // Relaxed: the table is published by the seq_cst CAS on current_table.
  t->older.store(older, std::memory_order_relaxed);
  return off;
}

bool MapImpl::note_claim(TableHeader* t) const {
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
  const std::size_t stripe = (handles_.slot_index() * kLanes + thread_number()) % kStripes;
  t->used[stripe].n.fetch_add(add, std::memory_order_relaxed);
  return used_buckets(t) * 4 >= t->capacity * 3;
}

std::uint64_t MapImpl::used_buckets(const TableHeader* t) const {
  std::uint64_t sum = 0;
  for (const auto& s : t->used) sum += s.n.load(std::memory_order_relaxed);
  return sum;
}

namespace {
std::uint8_t load_fp(const std::uint8_t* fps, std::uint64_t i) {
  // Acquire: a bucket read after its fingerprint is at least as new as the claim it describes.
  return std::atomic_ref<const std::uint8_t>(fps[i]).load(std::memory_order_acquire);
}
void store_fp(std::uint8_t* fps, std::uint64_t i, std::uint8_t f) {
  // Release: after the claim CAS it describes (a claim), or before the seal CAS (sealing).
  std::atomic_ref<std::uint8_t>(fps[i]).store(f, std::memory_order_release);
}
// The key of a claimed bucket read as c (CLAIMED keeps it in the value word until the key word
// is written).
std::uint64_t key_of(const BucketRef& b, const Cell& c) {
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
}  // namespace

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
ProbeResult MapImpl::probe(TableHeader* t, std::uint64_t k, bool claim, bool writer) const {
  std::uint8_t* fps = fingerprints(t);
  RunWalk run(fps, hash_key(k, seed_), t->capacity);
  const std::uint8_t want = run.want();
  std::uint64_t i = 0;
  std::uint8_t f = 0;
  while (run.at(&i, &f)) {
    const BucketRef bk = bucket(t, i);
    const Cell c = read_cell(*bk.slot);
    switch (c.state()) {
      case kEmpty: {
        if (!claim) return {Probe::absent};
        const std::uint64_t m = next_meta(c.meta, kClaimed);
        if (cas128(&bk.slot->value, c.value, c.meta, k, m)) {
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
        if (writer && f == kFpFree) store_fp(fps, i, fingerprint(hash_key(key, seed_)));
        break;
      }
    }
    run.step();
  }
  return {Probe::full};
}

namespace {
// TableHeader::bulk.reserved: 1 once the table was found with no EMPTY bucket (see layout.hpp).
std::atomic_ref<std::uint64_t> full_flag(TableHeader* t) {
  return std::atomic_ref<std::uint64_t>(t->bulk.reserved);
}
}  // namespace

void MapImpl::copy_frozen(BucketRef b, Cell c, TableHeader* newer) const {
  const std::uint64_t k = load_acquire(*b.key);
  if (newer->discard_older == 0) {
    // The value goes to `newer`, or -- when newer is full, or was itself migrated past k's
    // run before this copy landed -- on to newer's successor, and so on up the chain.
    TableHeader* target = newer;
    for (std::size_t hop = 0;; ++hop) {
      if (hop > kMaxChain) {
        fail(Errc::corrupt, name(),
             "table chain longer than " + std::to_string(kMaxChain) +
                 " during migration (damaged segment); run 'shmap check " + name() + "'");
      }
      // A target known to be full (and so replaced) cannot take k, and nobody can claim k in
      // it any more: go straight on. Probing it would walk its whole capacity for every copy
      // (a migration into a full table of 64K buckets ran for minutes under TSan).
      if (full_flag(target).load(std::memory_order_acquire) != 0) {
        if (const std::uint64_t nx = target->newer.load(std::memory_order_acquire); nx != 0) {
          if (read_cell(*b.slot).meta != c.meta) return;  // stale: see below
          target = table(nx);
          continue;
        }
      }
      const ProbeResult r = probe(target, k, true);
      if (r.kind == Probe::found) {
        // Only a CLAIMED bucket is filled: LIVE, TOMB or FROZEN mean the value is there
        // already (copied by another mover, and perhaps overwritten since by a writer).
        Cell d = r.cell;
        while (d.state() == kClaimed) {
          store_key(r.bucket, k);
          if (cas128(&r.bucket.slot->value, d.value, d.meta, c.value, next_meta(d.meta, kLive))) {
            d.meta = next_meta(d.meta, kLive);
            break;
          }
          d = read_cell(*r.bucket.slot);
        }
        // MOVED: target's migration moved k's bucket on while it was CLAIMED (no value yet):
        // the copy must land in target's successor instead.
        if (d.state() != kMoved) break;
      } else if (r.kind == Probe::full) {
        full_flag(target).store(1, std::memory_order_release);
        grow_stuck(target);  // target has no room for k: the copy goes to a larger successor
      }
      // Follow to target's successor -- unless the copy is stale: if b is no longer the
      // FROZEN cell we were asked to copy, another mover finished it (and a writer may have
      // erased k since, leaving no bucket for k up the chain: a copy there would revive it).
      // While b is still FROZEN no writer has touched k in any newer table (writers settle k
      // first, which finishes this very copy), so landing the value further up is right.
      if (read_cell(*b.slot).meta != c.meta) return;
      const std::uint64_t nx = target->newer.load(std::memory_order_acquire);
      if (nx == 0) break;  // a format-1 successor (never superseded mid-migration): moved
      target = table(nx);
    }
  }
  if (newer->discard_older != 0) {
    // A replaced entry leaves the map: counted once, by the winner of the CAS, and recorded
    // first so that a mover killed between the CAS and the count cannot lose it.
    counted_cas(*b.slot, c, 0, kMoved, -1);
  } else {
    cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved));
  }
}

bool MapImpl::counted_cas(Slot& b, const Cell& c, std::uint64_t value, std::uint64_t state,
                          std::int64_t delta) const {
  const std::size_t tn = thread_number();
  const std::uint64_t tag = my_tag(tn);
  const std::uint64_t meta = next_meta(c.meta, state, tag);
  Lane* record = tag != 0 ? &lane_of(tn) : nullptr;
  const std::uint64_t seq =
      record != nullptr ? write_record(*record, offset_of(&b), meta, value) : 0;
  const bool ok = cas128(&b.value, c.value, c.meta, value, meta);
  if (ok) {
    if (record != nullptr) {
      apply_pending(*record, seq, delta);  // unless a helper was faster
    } else {
      add_size(delta);
    }
  }
  if (record != nullptr) record->pending.store(0, std::memory_order_release);
  return ok;
}

void MapImpl::help_bulk(TableHeader* t) const {
  for (;;) {
    const Cell c = read_cell(t->bulk.slot);
    if (c.state() == kBulk) return help_pending(t->bulk.slot, c);  // added, or its adder is slow
    if (c.state() != kClaimed) return;                             // not a bulk-loaded table
    if (counted_cas(t->bulk.slot, c, c.value, kBulk, static_cast<std::int64_t>(c.value))) return;
  }
}

void MapImpl::move_bucket(TableHeader* older, std::uint64_t i, TableHeader* newer) const {
  const BucketRef b = bucket(older, i);
  for (;;) {
    const Cell c = read_cell(*b.slot);
    switch (c.state()) {
      case kEmpty:
        // Before the seal CAS: a lookup reading this bucket's fingerprint 0 did so before the
        // seal, so before anything of this run could reach the successor ("Fingerprints").
        store_fp(fingerprints(older), i, kFpSealing);
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kSealed))) return;
        break;
      case kClaimed: {
        store_key(b, c.value);
        // A claim whose claimer died before its fingerprint: write it before the bucket says
        // MOVED, so that a lookup still holding this table's view (a Session) that reaches it
        // goes on to the MOVED state instead of ending its run at a 0 ("Fingerprints").
        std::uint8_t* fps = fingerprints(older);
        if (load_fp(fps, i) == kFpFree) store_fp(fps, i, fingerprint(hash_key(c.value, seed_)));
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      }
      case kTomb:
        help_pending(*b.slot, c);  // the erase that made it is counted before the tag is gone
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      case kLive: {
        help_pending(*b.slot, c);
        const std::uint64_t m = next_meta(c.meta, kFrozen);
        if (cas128(&b.slot->value, c.value, c.meta, c.value, m)) {
          copy_frozen(b, Cell{m, c.value}, newer);
          return;
        }
        break;
      }
      case kFrozen:
        copy_frozen(b, c, newer);
        return;
      default:
        return;  // MOVED or SEALED: done
    }
  }
}

void MapImpl::settle(TableHeader* older, TableHeader* newer, std::uint64_t k) const {
  // A writer's walk (probe, "Fingerprints"): it writes the bytes a claimer left at 0 before
  // it seals the end of the run, so a lookup that stops at such a byte read it before the
  // seal, and so before k can be written in the newer table.
  std::uint8_t* fps = fingerprints(older);
  RunWalk run(fps, hash_key(k, seed_), older->capacity);
  std::uint64_t i = 0;
  std::uint8_t f = 0;
  while (run.at(&i, &f)) {
    const BucketRef bk = bucket(older, i);
    const Cell c = read_cell(*bk.slot);
    switch (c.state()) {
      case kEmpty:
        // Seal the end of k's run: no slow writer can insert k into the older table now.
        store_fp(fps, i, kFpSealing);
        if (cas128(&bk.slot->value, c.value, c.meta, 0, next_meta(c.meta, kSealed))) return;
        continue;
      case kSealed:
        return;
      default: {
        const std::uint64_t key = key_of(bk, c);
        if (key == k) return move_bucket(older, i, newer);
        if (f == kFpFree) store_fp(fps, i, fingerprint(hash_key(key, seed_)));
        break;
      }
    }
    run.step();
  }
}

bool MapImpl::help_migrate(TableHeader* newer, std::size_t chunks, std::size_t depth) const {
  const std::uint64_t o_off = newer->older.load(std::memory_order_acquire);
  if (o_off == 0) return true;
  TableHeader* older = table(o_off);
  if (older->older.load(std::memory_order_acquire) != 0) {
    // A chain of three: `older` was superseded before it had assimilated its own older table
    // (it was too small). That migration finishes first -- its copies that do not fit in
    // `older` land in `newer` -- and only then is `older` moved into `newer`, so `newer`
    // never unlinks a table whose older one still holds entries.
    if (depth + 2 > kMaxChain) {
      fail(Errc::corrupt, name(),
           "table chain longer than " + std::to_string(kMaxChain) +
               " (damaged segment, or a cycle); run 'shmap check " + name() + "'");
    }
    help_migrate(older, chunks, depth + 1);
    if (older->older.load(std::memory_order_acquire) != 0) return false;
  }
  const std::uint64_t csize = std::min<std::uint64_t>(kChunk, older->capacity);
  const std::uint64_t nchunks = older->capacity / csize;
  std::uint64_t* bitmap = done_bitmap(older);
  // A bulk-loaded replacement counts its entries before it discards the older ones: the size
  // reads high while the discard runs, never low (successors are sized from it).
  if (newer->discard_older != 0) help_bulk(newer);
  // Unlinks and retires the older table; only the winner of the CAS retires it. Called again
  // by anyone who finds the work done, so a finisher killed before its CAS delays nobody.
  auto complete = [&] {
    std::uint64_t expected = o_off;
    if (newer->older.compare_exchange_strong(expected, 0, std::memory_order_seq_cst)) {
      // A completer that dies here leaks o_off: the leak sweep finds it (leaks.cpp).
      if (between_unlink_and_retire_for_test != nullptr) between_unlink_and_retire_for_test();
      retire(o_off);
    }
    return true;
  };
  // Every done bit set (the count can lag: a mover killed between its bit and its count).
  auto all_done = [&] {
    std::uint64_t n = 0;
    for (std::uint64_t w = 0; w < (nchunks + 63) / 64; ++w) {
      n += static_cast<std::uint64_t>(__builtin_popcountll(
          std::atomic_ref<std::uint64_t>(bitmap[w]).load(std::memory_order_acquire)));
    }
    return n == nchunks;
  };
  for (std::size_t c = 0; c < chunks; ++c) {
    if (newer->mig_done.load(std::memory_order_acquire) >= nchunks) return complete();
    // The cursor runs past the end and wraps: after the first pass it revisits chunks whose
    // done bit is still clear (their mover died, stopped, or is just slow) and redoes them.
    const std::uint64_t raw = newer->mig_cursor.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t idx = raw % nchunks;
    std::atomic_ref<std::uint64_t> word(bitmap[idx / 64]);
    const std::uint64_t bit = std::uint64_t{1} << (idx % 64);
    if ((word.load(std::memory_order_acquire) & bit) != 0) {
      if (raw >= nchunks && raw % nchunks == 0 && all_done()) return complete();
      continue;
    }
    for (std::uint64_t i = idx * csize; i < (idx + 1) * csize; ++i) {
      move_bucket(older, i, newer);
    }
    // acq_rel: the moves above happen-before whoever sees the bit or the final count.
    if ((word.fetch_or(bit, std::memory_order_acq_rel) & bit) == 0 &&
        newer->mig_done.fetch_add(1, std::memory_order_acq_rel) + 1 >= nchunks) {
      return complete();
    }
  }
  return newer->older.load(std::memory_order_acquire) == 0;
}

namespace {
// compact()'s target: the live entries at a load of at most 0.7 (n <= cap, so no overflow).
std::uint64_t fit_room(std::uint64_t live) { return live * 10 / 7 + 2; }
}  // namespace

void MapImpl::maybe_resize(TableHeader* t, bool shrink, bool force, bool fit) const {
  SegmentHeader& h = header();
  const std::uint64_t cap = t->capacity;
  // The successor must hold t's live entries plus the keys inserted while it assimilates t
  // (each write migrates kChunksPerWrite chunks first, so at most ~cap / 32 of them): sized
  // at twice the live count, and never below cap / 16, it usually does. The live count is read
  // again right before the successor is linked, and a successor that t outgrew meanwhile is
  // not published. That narrows the window but cannot close it (writers keep reviving their
  // tombstones in t until the publication, which no count can be atomic with): a successor
  // that still turns out too small is replaced by grow_stuck() -- see "Successors that are
  // too small" below.
  for (int round = 0;; ++round) {
    if (top_table(false) != offset_of(t)) return;  // resized already
    if (t->older.load(std::memory_order_acquire) != 0) {
      // One migration at a time -- unless t (the successor) is nearly full before it has
      // assimilated its older table: then waiting for the migration would only fill it up.
      if (!shrink && used_buckets(t) * 8 >= cap * 7) grow_stuck(t);
      return;
    }
    // Clamped to cap: t (with no older table) holds every live entry, so a larger count is
    // damaged shared memory and must not size a successor as large as max_bytes allows.
    const std::uint64_t live = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, size_estimate())));
    const std::uint64_t used = used_buckets(t);
    std::uint64_t want = 0;
    // Never below cap / 16: bounds the migration work per write when shrinking.
    if (fit) {
      want = next_capacity(std::max<std::uint64_t>({h.initial_capacity, fit_room(live), cap / 16}));
      if (want >= cap) return;
    } else {
      if (shrink) {
        if (cap <= h.initial_capacity || live * 8 >= cap) return;
      } else if (!force && used * 4 < cap * 3) {
        return;
      }
      // The successor holds the live entries at a load of at most 1/2, so it has room for the
      // inserts that come while it assimilates t. A power of two: growth doubles.
      want =
          next_pow2_capacity(std::max<std::uint64_t>({h.initial_capacity, live * 2 + 2, cap / 16}));
      if (force && want <= cap) want = cap * 2;
    }
    std::uint64_t n_off = 0;
    try {
      n_off = create_table(want, offset_of(t));
    } catch (const Error& e) {
      // Growth can wait while t still has room; a physically full table cannot.
      if (e.code() == Errc::out_of_space && !force) return;
      throw;
    }
    if (before_publish_for_test != nullptr) std::exchange(before_publish_for_test, nullptr)();
    const std::uint64_t live_now = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, size_estimate())));
    if ((fit ? fit_room(live_now) : live_now * 2 + 2) > want) {
      // t grew while the successor was being made. A shrink is called off (always safe: the
      // next 256th erase tries again); growth is decided again with the new count -- a few
      // times, then left to the next claim over the limit, unless t is physically full.
      discard_table(n_off);
      if (shrink || fit || (!force && round >= 3)) return;
      continue;
    }
    if (after_recount_for_test != nullptr) std::exchange(after_recount_for_test, nullptr)();
    link_successor(t, n_off);
    return;
  }
}

// Successors that are too small
// =============================
// A successor is sized from a count that cannot be atomic with its publication, so it can
// turn out too small: full (or nearly) before it has assimilated its older table. Such a
// table gets a successor of its own *while its migration is still under way*: the chain
// becomes current -> too-small -> older (three tables; each recovery adds one, bounded by
// kMaxChain, and the sizing below makes a second one practically impossible). Why it stays
// right:
// - Writers settle their key in every table of the chain, oldest first, then write in the
//   newest only; so a key is written in a table only after every older table handed it on.
// - Migrations finish oldest first (help_migrate): too-small -> current starts only once
//   older -> too-small is done, so no table is unlinked while an older one holds entries.
// - A copy out of `older` that finds too-small full (no EMPTY bucket: nobody can claim k
//   there any more), or migrated past k's run, or k's CLAIMED bucket moved on without a
//   value, lands in too-small's successor instead (copy_frozen). It re-checks its source
//   first: while the source is still FROZEN no writer has written k anywhere newer.
// - Readers probe the chain newest first. A MOVED bucket sends them back to the newer tables
//   (the value only moves up); a run that ends SEALED in a lower table decides nothing there
//   (another key's settle may have sealed it) and they go on to the older tables.
// The new successor holds every key with a bucket anywhere in the chain (t counted whole, the
// older tables' claimed buckets counted) at a load of at most 1/2, and at least 1/16 of the
// buckets still to migrate (so the inserts that come meanwhile cannot fill it). Was: the sum of
// the capacities, which repeated episodes compounded (a 28 GB segment for 100 keys).
void MapImpl::grow_stuck(TableHeader* t) const {
  if (const std::uint64_t nx = t->newer.load(std::memory_order_acquire); nx != 0) {
    link_successor(t, 0);  // linked already: only make sure it is published
    return;
  }
  // Room for everything that can reach the new table: all of t (it is full, or nearly), and
  // every key that has a bucket in an older table of the chain -- counted, not bounded by
  // their capacities (a 1M-bucket table shrunk to 8 and refilled with 100 keys must not make
  // a 4M-bucket replacement: repeated, that grew a segment to 28 GB). Claimed buckets never
  // become EMPTY again, and a table that is not the newest gets new claims only from writes
  // already under way (a handful per thread): the 1/8 + 64 slack covers them, and the load
  // of at most 1/2 below covers the inserts that come while the chain is assimilated.
  TableHeader* chain[kMaxChain];
  const std::size_t n = load_chain(t, chain);
  std::uint64_t room = std::min<std::uint64_t>(t->capacity, kMaxCapacity);
  std::uint64_t to_migrate = room;  // buckets the writers must walk before the chain is one
  for (std::size_t i = 1; i < n; ++i) {
    to_migrate += std::min<std::uint64_t>(chain[i]->capacity, kMaxCapacity);
    std::uint64_t claimed = 0;
    for (std::uint64_t j = 0; j < chain[i]->capacity; ++j) {
      const std::uint64_t st = state_of(load_acquire(bucket(chain[i], j).slot->meta));
      claimed += st != kEmpty && st != kSealed ? 1 : 0;
    }
    room += std::min<std::uint64_t>(chain[i]->capacity, claimed + claimed / 8 + 64);
  }
  // And never below 1/16 of what must be migrated: each write walks 2 chunks (128 buckets)
  // first and inserts at most one key, so at most to_migrate / 128 new keys arrive meanwhile.
  const std::uint64_t want =
      std::max(next_pow2_capacity(room * 2), next_pow2_capacity(to_migrate / 16));
  link_successor(t, create_table(want, offset_of(t)));
}

std::uint64_t MapImpl::link_successor(TableHeader* t, std::uint64_t n_off) const {
  SegmentHeader& h = header();
  std::uint64_t linked = 0;
  if (n_off == 0 ||
      // seq_cst: the successor's header (older, capacity) is written before anyone can
      // follow this link; one CAS winner per table, so t has exactly one successor.
      !t->newer.compare_exchange_strong(linked, n_off, std::memory_order_seq_cst)) {
    if (n_off != 0) discard_table(n_off);  // another thread linked first; nobody saw ours
    n_off = linked != 0 ? linked : t->newer.load(std::memory_order_acquire);
  } else {
    h.resizes.fetch_add(1, std::memory_order_relaxed);
  }
  // Publish. If t is no longer current, someone published it (or something newer) already.
  std::uint64_t expected = offset_of(t);
  h.current_table.compare_exchange_strong(expected, n_off, std::memory_order_seq_cst);
  return n_off;
}

std::uint64_t MapImpl::top_table(bool publish, TableHeader** top) const {
  SegmentHeader& h = header();
  // Normally current_table has no successor and this is one load. Past it there can be one
  // linked but unpublished successor (its linker stopped or died between the two CASes), and
  // a thread descheduled after reading current_table may find the whole history since then
  // in the `newer` links (safe to follow: those tables were retired after our pin). So a walk
  // that runs long starts again from a fresh current_table; only one that keeps running long
  // from there is a cycle (damage).
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::uint64_t start = h.current_table.load(std::memory_order_seq_cst);
    std::uint64_t off = start;
    for (std::size_t i = 0; i < kMaxChain; ++i) {
      TableHeader* t = table(off);
      const std::uint64_t nx = t->newer.load(std::memory_order_acquire);
      if (nx == 0) {
        if (top != nullptr) *top = t;
        return off;
      }
      // A writer finishes a publication it finds half done (the same CAS the linker makes;
      // one of them wins, and a CAS that fails means current_table moved on already).
      if (publish) {
        std::uint64_t expected = off;
        h.current_table.compare_exchange_strong(expected, nx, std::memory_order_seq_cst);
      }
      off = nx;
    }
    if (!publish && h.current_table.load(std::memory_order_seq_cst) == start) break;
  }
  fail(Errc::corrupt, name(),
       "the tables linked past the current one form a cycle (damaged segment); run 'shmap "
       "check " +
           name() + "'");
}

void MapImpl::check_forward(TableHeader* t) const {
  // A bucket of t says "moved on" (FROZEN, MOVED, SEALED): t has a successor -- linked
  // (this build), or published over it (a format-1 successor, so t is no longer current).
  // Neither: the state was written by damage, and retrying would spin for ever.
  if (t->newer.load(std::memory_order_acquire) == 0 && top_table(false) == offset_of(t)) {
    fail(Errc::corrupt, name(),
         "a bucket of the current table is in a migration state but the table has no "
         "successor (damaged segment); run 'shmap check " +
             name() + "'");
  }
}

std::size_t MapImpl::load_chain(TableHeader* t, TableHeader** out) const {
  std::size_t n = 0;
  for (;;) {
    out[n++] = t;
    const std::uint64_t o = t->older.load(std::memory_order_acquire);
    if (o == 0) return n;
    if (n == kMaxChain) {
      fail(Errc::corrupt, name(),
           "the table chain is longer than " + std::to_string(kMaxChain) +
               " (damaged segment, or a cycle); run 'shmap check " + name() + "'");
    }
    t = table(o);
  }
}

void MapImpl::discard_table(std::uint64_t table_off) const {
  seg_.free_extent(table_off, table(table_off)->extent_bytes);
}

namespace {
// How a probe's answer reads for a lookup.
// forward: k's bucket here moved on (its value, if any, is in a newer table now).
// sealed: k's run here ends in a SEALED bucket -- k has no bucket in this table and never will,
// but that says nothing about the older tables: in a chain of three or more, a writer of
// another key seals runs of the too-small middle table while the oldest one still holds k.
enum class Look { value, none, forward, sealed, unknown };
Look classify(const ProbeResult& r, std::uint64_t* v) {
  switch (r.kind) {
    case Probe::found:
      switch (r.cell.state()) {
        case kLive:
        case kFrozen:
          *v = r.cell.value;
          return Look::value;
        case kTomb:
          return Look::none;
        case kMoved:
        case kSealed:
          return Look::forward;
        default:
          return Look::unknown;  // CLAIMED: an insert or a copy under way
      }
    case Probe::sealed:
      return Look::sealed;
    default:
      return Look::unknown;  // absent, or a full table without the key
  }
}
}  // namespace

std::size_t MapImpl::find_many(const std::uint64_t* keys, std::size_t n,
                               std::optional<std::uint64_t>* out) const {
  // kFindGroup keys per pin: enough misses in flight to hide most of the memory latency (16:
  // 48 Mops/s at 1M keys here, 32: 55, 64: 66), and a pin of about a microsecond, so a batch
  // of millions never holds a retired table back for long.
  constexpr std::size_t kGroup = kFindGroup;
  std::size_t found = 0;
  for (std::size_t base = 0; base < n; base += kGroup) {
    const std::size_t m = std::min(kGroup, n - base);
    std::uint64_t hashes[kGroup];
    Fast r[kGroup];
    std::uint64_t v[kGroup];
    pin();
    FastTable ft;
    const bool fast = fast_table(&ft);
    if (fast) {
      // Three passes, so that each one's cache misses overlap: the fingerprints of every key,
      // then the bucket each key's fingerprints point at (none for most misses), then the
      // lookups proper, which find both in cache.
      for (std::size_t j = 0; j < m; ++j) {
        hashes[j] = hash_key(keys[base + j], seed_);
        __builtin_prefetch(&ft.fps[home_of(hashes[j], ft.capacity)]);
      }
      for (std::size_t j = 0; j < m; ++j) {
        if (const void* b = first_candidate(ft, hashes[j])) __builtin_prefetch(b);
      }
      for (std::size_t j = 0; j < m; ++j) {
        r[j] = detail::find_fast<false>(ft, keys[base + j], hashes[j], &v[j]);
      }
    }
    unpin();
    for (std::size_t j = 0; j < m; ++j) {
      const bool hit =
          fast && r[j] != Fast::slow ? r[j] == Fast::hit : find_slow(keys[base + j], &v[j]);
      out[base + j] = hit ? std::optional<std::uint64_t>(v[j]) : std::nullopt;
      found += hit ? 1 : 0;
    }
  }
  return found;
}

bool MapImpl::find_slow(std::uint64_t k, std::uint64_t* out) const {
  const auto r = find_slower(k);
  if (r) *out = *r;
  return r.has_value();
}

std::optional<std::uint64_t> MapImpl::find_slower(std::uint64_t k) const {
  PinGuard pin(*this);
  for (;;) {
    // The chain is read before any probe: a table whose `older` is 0 now was the last one for
    // the whole probe (read after, it could have been cleared by a migration that moved k in
    // behind our look). Tables are probed newest first; the first that decides k answers.
    TableHeader* chain[kMaxChain];
    const std::size_t n = load_chain(top_header(false), chain);
    std::size_t end = n;  // probe chain[0, end)
    bool restart = false;
    for (std::size_t i = 0; i < end;) {
      std::uint64_t v = 0;
      switch (classify(probe(chain[i], k, false), &v)) {
        case Look::value:
          return v;
        case Look::none:
          return std::nullopt;
        case Look::sealed:
          // k has no bucket in chain[i] and never will. The newest table: a newer one was
          // linked, restart. Further down: k may still be LIVE in an older table (one not yet
          // migrated past k) -- ask it, as for unknown. (Answering "forward" here skipped the
          // older tables and returned absent for a key LIVE in the oldest one.)
          if (i == 0) {
            check_forward(chain[0]);
            restart = true;
            end = 0;
            continue;
          }
          if (chain[i]->discard_older != 0) return std::nullopt;
          break;
        case Look::forward:
          // chain[i] handed k on after we looked at the newer tables: those are authoritative
          // now (k's value, if any, moved up; it only ever moves to newer tables). Look at
          // them again; if the newest one forwarded, a newer table was published: restart.
          if (i == 0) {
            check_forward(chain[0]);
            restart = true;
            end = 0;
          } else {
            end = i;
            i = 0;
          }
          continue;
        case Look::unknown:
          // Not decided here (absent, or claimed but unwritten): ask the older table, unless
          // this one replaces its older table's content instead of copying it.
          if (chain[i]->discard_older != 0) return std::nullopt;
          break;
      }
      ++i;
    }
    // Absent from every table -- unless a copy out of an older table found chain[0] full and
    // landed in a successor linked after we read the top (a copy goes there only once that
    // link exists, and the link is never undone).
    if (!restart && chain[0]->newer.load(std::memory_order_seq_cst) == 0) return std::nullopt;
  }
}

std::optional<std::uint64_t> MapImpl::mutate_impl(std::uint64_t k, bool may_insert, DecideFn decide,
                                                  void* ctx, CommitFn commit) {
  PinGuard pin(*this);
  mark_writer();  // before the gate check: the Dekker pairing with hold_writers()
  wait_for_gate();
  for (;;) {
    TableHeader* t = top_header(true);
    if (t->older.load(std::memory_order_acquire) != 0) {
      help_migrate(t, kChunksPerWrite);
      // Settle k in every older table, oldest first: each hands k on to the next newer one,
      // so when we write in t no older table can still answer for k.
      TableHeader* chain[kMaxChain];
      for (std::size_t i = load_chain(t, chain) - 1; i > 0; --i) settle(chain[i], chain[i - 1], k);
    }
    const ProbeResult r = probe(t, k, may_insert, true);
    if (r.kind == Probe::sealed) {
      check_forward(t);
      continue;
    }
    if (r.kind == Probe::full && may_insert) {
      // Physically full (the load limit was raced past, or t is a successor that turned out
      // too small): grow, even while t is still assimilating an older table.
      if (t->older.load(std::memory_order_acquire) != 0) {
        full_flag(t).store(1, std::memory_order_release);
        grow_stuck(t);
      } else {
        maybe_resize(t, false, true);
      }
      continue;
    }
    if (r.kind == Probe::absent || r.kind == Probe::full) {
      // A copy that found t full may have put k in t's successor: absent only if t has none.
      if (t->newer.load(std::memory_order_seq_cst) != 0) continue;
      (void)decide(ctx, std::nullopt);  // nothing to erase or exchange
      return std::nullopt;
    }
    const BucketRef bk = r.bucket;
    Slot& b = *bk.slot;
    Cell c = r.cell;
    for (;;) {
      std::optional<std::uint64_t> cur;
      const std::uint64_t s = c.state();
      if (s == kLive) {
        cur = c.value;
      } else if (s == kFrozen) {
        // t is being migrated: help move this bucket, then retry in the successor.
        check_forward(t);
        const std::uint64_t nx = t->newer.load(std::memory_order_acquire);
        move_bucket(t, bk.index, table(nx != 0 ? nx : top_table(true)));
        break;
      } else if (s == kMoved || s == kSealed) {
        check_forward(t);
        break;
      }
      const WriteIntent w = decide(ctx, cur);
      if (w.kind == WriteIntent::keep || (w.kind == WriteIntent::erase && !cur)) {
        if (r.over_limit) maybe_resize(t, false);
        return cur;
      }
      if (s == kClaimed) store_key(bk, k);
      const bool set = w.kind == WriteIntent::set;
      const std::uint64_t new_value = set ? w.value : 0;
      // The bucket's own change, and a map of strings' change of entries beyond it.
      const std::int64_t delta = (set ? (cur ? 0 : 1) : -1) + w.extra;
      const std::size_t tn = thread_number();
      const std::uint64_t tag = delta != 0 ? my_tag(tn) : 0;
      const std::uint64_t new_meta = next_meta(c.meta, set ? kLive : kTomb, tag);
      // The previous writer's size change lands before its bucket changes again.
      help_pending(b, c);
      // A size-changing write records itself before its CAS (own lane; a dead process's
      // stores are all visible to whoever frees its slot), so that the count stays exact if
      // this process dies between the CAS and the count update.
      Lane* record = tag != 0 ? &lane_of(tn) : nullptr;
      std::uint64_t seq = 0;
      // (A change the state does not imply is stated in the record: a list's extra entries.)
      if (record != nullptr) {
        seq = write_record(*record, offset_of(&b), new_meta, new_value, w.extra != 0 ? delta : 0);
      }
      const bool ok = cas128(&b.value, c.value, c.meta, new_value, new_meta);
      if (ok && after_write_cas_for_test != nullptr) after_write_cas_for_test();
      if (ok && delta != 0) {
        if (record != nullptr) {
          apply_pending(*record, seq, delta);  // unless a helper was faster
        } else {
          add_size(delta);
        }
      }
      if (record != nullptr) record->pending.store(0, std::memory_order_release);
      if (ok) {
        if (commit != nullptr) commit(ctx, cur);
        if (r.over_limit) maybe_resize(t, false);
        if (!set && (++t_erases & 255) == 0) maybe_resize(t, true);
        return cur;
      }
      c = read_cell(b);
    }
  }
}

void MapImpl::fit_table() const {
  for (int i = 0; i < 8; ++i) {  // each pass shrinks to at least 1/16 (maybe_resize)
    std::uint64_t before = 0;
    {
      // Linking a table is a write: it waits for a point-in-time hold as writes do (a dump's
      // or an audit's), so that what a hold sees as the chain stays the chain.
      PinGuard pin(*this);
      mark_writer();
      wait_for_gate();
      TableHeader* t = top_header(true);
      before = t->capacity;
      if (t->older.load(std::memory_order_acquire) == 0) maybe_resize(t, true, false, true);
    }
    finish_migration();
    PinGuard pin(*this);
    if (top_header(true)->capacity >= before) return;
  }
}

void MapImpl::finish_migration() const {
  for (;;) {
    PinGuard pin(*this);
    TableHeader* t = top_header(true);
    if (help_migrate(t, 256) && t->older.load(std::memory_order_acquire) == 0) return;
  }
}

void MapImpl::for_each(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
  for (;;) {
    finish_migration();
    PinGuard pin(*this);
    TableHeader* t = top_header(false);
    // A resize between finish_migration() and our pin: finish that one too, then walk.
    if (t->older.load(std::memory_order_seq_cst) != 0) continue;
    return walk(t, fn, ctx);
  }
}

void MapImpl::walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t),
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
      if (const auto v = find(k)) fn(ctx, k, *v);
    }
  }
}

// ---- point-in-time holds ---------------------------------------------------------------------

// The gate is one 16-byte CAS unit: {writer_gate, writer_gate_deadline} = {holder's owner
// word, CLOCK_MONOTONIC ns after which the hold is void}. Set, released and broken together,
// so there is no moment at which a gate is set without a deadline: a holder stopped or killed
// at any instruction blocks writers at most until its deadline (or until it is seen dead).
// Which thread of the holder's Map holds it is process-local (gate_thread_): its other
// threads are writers like any other and wait too.
namespace {
std::uint64_t* gate_words(SegmentHeader& h) {
  return reinterpret_cast<std::uint64_t*>(&h.writer_gate);
}
}  // namespace

bool MapImpl::gate_is_mine(std::uint64_t gate) const {
  return gate == handles_.owner_word() &&
         gate_thread_.load(std::memory_order_relaxed) == thread_number() + 1;
}

void MapImpl::wait_for_gate_slow() const {
  SegmentHeader& h = header();
  // Dekker-style with hold_writers(): our pin precedes this load (seq_cst store, or a plain
  // store made visible by the holder's membarrier), and the holder's gate store precedes its
  // scan of the lanes. Either we see the gate, or the holder sees our pin and waits for us.
  for (;;) {
    const std::uint64_t g = h.writer_gate.load(std::memory_order_seq_cst);
    if (g == 0 || gate_is_mine(g)) return;
    // A dead holder, or one past its lease (stopped, or just too slow), no longer holds. A
    // deadline of 0 with a gate set is what a build before the 16-byte gate left when it was
    // stopped between its two stores: void too.
    const std::uint64_t deadline = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (!gate_owner_alive(g) || deadline == 0 || monotonic_ns() > deadline) {
      cas128(gate_words(h), g, deadline, 0, 0);
      continue;
    }
    unpin();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    pin();
    mark_writer();
  }
}

std::uint64_t MapImpl::writer_hold_lease_ns(std::uint64_t extra_bytes) const {
  // Long enough to copy the tables in memory (a walk at well over 256 MiB/s here), short
  // enough that a holder stopped at any instruction delays writers only briefly.
  std::uint64_t bytes = extra_bytes;
  {
    PinGuard pin(*this);
    TableHeader* chain[kMaxChain];
    const std::size_t n = load_chain(top_header(false), chain);
    for (std::size_t i = 0; i < n; ++i) bytes += chain[i]->extent_bytes;
  }
  return kWriterHoldLeaseNs + bytes / (std::uint64_t{256} << 20) * 1'000'000'000;
}

void MapImpl::hold_writers(std::uint64_t extra_bytes) const {
  SegmentHeader& h = header();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const std::uint64_t lease_ns = writer_hold_lease_ns(extra_bytes);
  for (;;) {
    const std::uint64_t g = h.writer_gate.load(std::memory_order_seq_cst);
    const std::uint64_t lease = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (g == 0) {
      // Thread first: a writer of this Map that sees the gate must not take it for its own.
      // Claimed by CAS: two threads of this Map taking the gate at once must not both end up
      // believing it theirs (a plain store let the loser overwrite the winner's number and
      // then find the gate "mine").
      std::uint64_t none = 0;
      const std::uint64_t me = thread_number() + 1;
      if (!gate_thread_.compare_exchange_strong(none, me, std::memory_order_acq_rel) &&
          none != me) {
        if (std::chrono::steady_clock::now() > deadline) {
          fail(Errc::timeout, name(), "another thread holds writers back (point-in-time dump)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;  // another thread of this Map is taking or holding the gate
      }
      // seq_cst (lock cmpxchg16b): the gate store precedes our scan of the lanes below.
      if (cas128(gate_words(h), 0, lease, handles_.owner_word(), monotonic_ns() + lease_ns)) {
        break;
      }
      gate_thread_.store(0, std::memory_order_release);
      continue;
    }
    if (gate_is_mine(g)) break;
    if (!gate_owner_alive(g) || lease == 0 || monotonic_ns() > lease) {
      cas128(gate_words(h), g, lease, 0, 0);
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail(Errc::timeout, name(), "another process holds writers back (point-in-time dump)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Wait for every *write* pinned before the gate was set to finish (readers are never waited
  // for: they change nothing). A write takes microseconds; one still in flight after
  // kInFlightWait belongs to a stopped process, and holding the others back longer would
  // make the dump a writer stall: the hold is given up instead.
  const auto in_flight_deadline = std::chrono::steady_clock::now() + kInFlightWait;
  const std::uint64_t e = h.global_epoch.fetch_add(1, std::memory_order_seq_cst);
  if (!global_barrier()) {
    release_writers();
    fail(Errc::io_error, name(), "membarrier is unavailable; point-in-time dump impossible");
  }
  // Our own lane is skipped (we may be called inside an operation) -- unless it is the shared
  // overflow lane: other threads of this Map pin it too, and their writes under way must be
  // waited for like anyone's. (So a thread past the 15th must not hold writers from inside an
  // operation of its own: it would wait for itself until the deadline.)
  const Lane& my = my_lane();
  const Lane* mine = thread_number() >= kPrimaryLanes && &my == &overflow_lane() ? nullptr : &my;
  for (std::size_t i = 0; i < max_handles(); ++i) {
    for (const Lane& lane : slot(i).lanes) {
      if (&lane == mine) continue;
      for (;;) {
        const std::uint64_t w = lane.pin.load(std::memory_order_seq_cst);
        if ((w & kPinCountMask) == 0 || (w & kPinWriter) == 0 || (w >> 16) > e ||
            !slot_owner_alive(i)) {
          break;
        }
        if (std::chrono::steady_clock::now() > in_flight_deadline) {
          release_writers();
          fail(Errc::timeout, name(),
               "a process (pid " +
                   std::to_string(slot(i).owner.owner.load(std::memory_order_relaxed) &
                                  0xffffffffu) +
                   ") stays inside a write (stopped?); point-in-time dump abandoned");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }
}

bool MapImpl::release_writers() const {
  SegmentHeader& h = header();
  const std::uint64_t lease = h.writer_gate_deadline.load(std::memory_order_acquire);
  // One CAS: gate and deadline go together (seq_cst: writers that see 0 go on at once).
  if (gate_thread_.load(std::memory_order_acquire) != thread_number() + 1) return false;
  const bool held = cas128(gate_words(h), handles_.owner_word(), lease, 0, 0);
  // Cleared even if the hold was broken meanwhile, so that this Map's threads can hold again.
  gate_thread_.store(0, std::memory_order_release);
  return held;
}

bool MapImpl::still_holding_writers() const {
  return gate_is_mine(header().writer_gate.load(std::memory_order_seq_cst));
}

// ---- bulk loads --------------------------------------------------------------------------------

std::uint64_t MapImpl::build_table(std::size_t entries) const {
  const std::uint64_t off = create_table(
      next_capacity(std::max<std::uint64_t>(header().initial_capacity, entries * 2 + 2)), 0);
  // Fault the pages in with one call instead of one fault per page during the fill. Most of
  // a big load is the kernel allocating and zeroing these pages: large tables are populated
  // by two threads, one half each (the fill has nothing to do until the pages exist).
  char* const start = at<char>(off);
  const std::size_t bytes = at<TableHeader>(off)->extent_bytes;
  constexpr std::size_t kSplitAbove = std::size_t{64} << 20;
  const std::size_t half = bytes / 2 / kPage * kPage;
  std::thread helper;
  if (bytes >= kSplitAbove && std::thread::hardware_concurrency() >= 2) {
    try {
      helper = std::thread([=] { ::madvise(start + half, bytes - half, MADV_POPULATE_WRITE); });
    } catch (const std::exception&) {
      // No thread to be had (limits, memory): populate it all here.
    }
  }
  ::madvise(start, helper.joinable() ? half : bytes, MADV_POPULATE_WRITE);
  if (helper.joinable()) helper.join();
  return off;
}

void MapImpl::bulk_put(std::uint64_t table_off, std::uint64_t k, std::uint64_t v) const {
  const std::pair<std::uint64_t, std::uint64_t> kv{k, v};
  bulk_put_many(table_off, &kv, 1);
}

namespace {
// Single-threaded insert into an unpublished table. Nobody else reads or writes it, so plain
// stores will do (the CAS on current_table in publish_replace() publishes them).
bool put_private(TableHeader* t, char* base, std::uint8_t* fps, std::uint64_t h, std::uint64_t k,
                 std::uint64_t v) {
  const std::uint64_t cap = t->capacity;
  for (std::uint64_t i = home_of(h, cap), n = 0; n < cap; i = next_bucket(i, cap), ++n) {
    Slot& b = *reinterpret_cast<Slot*>(base + slot_offset(i));
    std::uint64_t& key = *reinterpret_cast<std::uint64_t*>(base + key_offset(i));
    if (state_of(b.meta) == kEmpty) {
      key = k;
      b.value = v;
      b.meta = next_meta(b.meta, kLive);
      fps[i] = fingerprint(h);
      t->used[0].n.store(t->used[0].n.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
      return true;
    }
    if (key == k) {
      b.value = v;  // the last value wins
      return true;
    }
  }
  return false;
}
}  // namespace

void MapImpl::bulk_put_many(std::uint64_t table_off,
                            const std::pair<std::uint64_t, std::uint64_t>* kv,
                            std::size_t n) const {
  TableHeader* t = table(table_off);
  char* const buckets = reinterpret_cast<char*>(t) + kTableHeaderBytes;
  std::uint8_t* fps = fingerprints(t);
  const std::uint64_t cap = t->capacity;
  constexpr std::size_t kAhead = 64;
  std::uint64_t hashes[kAhead];
  for (std::size_t base = 0; base < n; base += kAhead) {
    const std::size_t m = std::min(kAhead, n - base);
    for (std::size_t j = 0; j < m; ++j) {
      hashes[j] = hash_key(kv[base + j].first, seed_);
      __builtin_prefetch(buckets + slot_offset(home_of(hashes[j], cap)), 1);
      __builtin_prefetch(&fps[home_of(hashes[j], cap)], 1);
    }
    for (std::size_t j = 0; j < m; ++j) {
      if (!put_private(t, buckets, fps, hashes[j], kv[base + j].first, kv[base + j].second)) {
        fail(Errc::invalid_argument, name(),
             "bulk load: more entries than the table was built for");
      }
    }
  }
}

void MapImpl::publish_replace(std::uint64_t built_off) const {
  SegmentHeader& h = header();
  TableHeader* built = table(built_off);
  const std::uint64_t count = used_buckets(built);  // every claimed bucket is LIVE
  built->discard_older = 1;
  for (;;) {
    finish_migration();
    PinGuard pin(*this);
    mark_writer();
    wait_for_gate();  // a replacement is a write: a point-in-time dump must not see half of it
    const std::uint64_t cur_off = top_table(true);
    TableHeader* cur = table(cur_off);
    if (cur->older.load(std::memory_order_acquire) != 0) continue;
    // The built table becomes the successor of cur, one that discards cur's entries instead of
    // copying them. Relaxed: published by the CAS that links it.
    built->older.store(cur_off, std::memory_order_relaxed);
    built->older_capacity = cur->capacity;
    // The new entries are counted once the table is linked, by whoever first helps its
    // migration (help_bulk: recorded like a write, so a loader killed right after the link
    // loses no count); until the old entries are discarded the size reads high, which only
    // makes a successor larger.
    built->bulk.slot.value = count;
    built->bulk.slot.meta = next_meta(0, kClaimed);
    std::uint64_t linked = 0;
    if (!cur->newer.compare_exchange_strong(linked, built_off, std::memory_order_seq_cst)) {
      continue;  // cur got another successor first: let that migration finish, then retry
    }
    h.resizes.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t expected = cur_off;
    h.current_table.compare_exchange_strong(expected, built_off, std::memory_order_seq_cst);
    break;
  }
  finish_migration();
}

}  // namespace shmap::detail
