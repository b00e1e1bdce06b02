// shmap — tables: linear probing over 32-byte buckets, the bucket state machine, and growth
// by a chain of tables with incremental migration (seed 000, seed 004).
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

void store_key(Bucket& b, std::uint64_t k) {
  // Release: the key is visible to whoever later acquires the meta written by our CAS.
  std::atomic_ref<std::uint64_t>(b.key).store(k, std::memory_order_release);
}

std::uint64_t log2_of(std::uint64_t pow2) {
  return static_cast<std::uint64_t>(__builtin_ctzll(pow2));
}

std::uint64_t round_pow2(std::uint64_t n) {
  std::uint64_t c = kMinCapacity;
  // Bounded: a size count from damaged memory (near 2^63) must not overflow the doubling into
  // an endless loop; kMaxCapacity fits no segment, so its allocation fails with out_of_space.
  while (c < n && c < kMaxCapacity) c <<= 1;
  return c;
}

}  // namespace

std::uint64_t MapImpl::create_table(std::uint64_t capacity, std::uint64_t older) const {
  const std::uint64_t older_cap = older != 0 ? table(older)->capacity : 0;
  std::uint64_t bytes = 0;
  const std::uint64_t off = allocate(table_bytes(capacity), &bytes);  // zeroed
  auto* t = at<TableHeader>(off);
  t->capacity = capacity;
  t->bits = log2_of(capacity);
  t->extent_bytes = bytes;
  t->older_capacity = older_cap;
  t->created_epoch = header().global_epoch.load(std::memory_order_relaxed);
  t->discard_older = 0;
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
  const std::size_t stripe = (slot_index_ * kLanes + thread_number()) % kStripes;
  t->used[stripe].n.fetch_add(add, std::memory_order_relaxed);
  return used_buckets(t) * 4 >= t->capacity * 3;
}

std::uint64_t MapImpl::used_buckets(const TableHeader* t) const {
  std::uint64_t sum = 0;
  for (const auto& s : t->used) sum += s.n.load(std::memory_order_relaxed);
  return sum;
}

ProbeResult MapImpl::probe(TableHeader* t, std::uint64_t k, bool claim) const {
  Bucket* b = buckets(t);
  const std::uint64_t mask = t->capacity - 1;
  std::uint64_t i = home(k, t);
  for (std::uint64_t n = 0; n <= mask;) {
    Bucket& bk = b[i];
    const Cell c = read_cell(bk);
    switch (c.state()) {
      case kEmpty: {
        if (!claim) return {Probe::absent};
        const std::uint64_t m = next_meta(c.meta, kClaimed);
        if (cas128(&bk.value, c.value, c.meta, k, m)) {
          ProbeResult r{Probe::found, &bk, Cell{m, k}, true};
          r.over_limit = note_claim(t);
          return r;
        }
        continue;  // lost the bucket to another claim (or a seal): look at it again
      }
      case kSealed:
        return {Probe::sealed};
      case kClaimed:
        if (c.value == k) return {Probe::found, &bk, c};
        break;
      default:
        if (load_acquire(bk.key) == k) return {Probe::found, &bk, c};
        break;
    }
    i = (i + 1) & mask;
    ++n;
  }
  return {Probe::full};
}

void MapImpl::copy_frozen(Bucket* b, Cell c, TableHeader* newer) const {
  const std::uint64_t k = load_acquire(b->key);
  if (newer->discard_older == 0) {
    const ProbeResult r = probe(newer, k, true);
    if (r.kind == Probe::found) {
      // Only a CLAIMED bucket is filled: any other state means the value is there already
      // (copied by another mover, and perhaps overwritten since by a writer).
      Cell d = r.cell;
      while (d.state() == kClaimed) {
        store_key(*r.bucket, k);
        if (cas128(&r.bucket->value, d.value, d.meta, c.value, next_meta(d.meta, kLive))) break;
        d = read_cell(*r.bucket);
      }
    } else if (r.kind == Probe::full) {
      fail(Errc::corrupt, name_,
           "successor table full during migration (an invariant broke); run 'shmap check'");
    }
    // Probe::sealed: the successor was itself superseded, so this bucket was moved already.
  }
  if (cas128(&b->value, c.value, c.meta, 0, next_meta(c.meta, kMoved)) &&
      newer->discard_older != 0) {
    add_size(-1);  // a replaced entry leaves the map; counted once, by the winner of the CAS
  }
}

void MapImpl::move_bucket(TableHeader*, Bucket* b, TableHeader* newer) const {
  for (;;) {
    const Cell c = read_cell(*b);
    switch (c.state()) {
      case kEmpty:
        if (cas128(&b->value, c.value, c.meta, 0, next_meta(c.meta, kSealed))) return;
        break;
      case kClaimed:
        store_key(*b, c.value);
        if (cas128(&b->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      case kTomb:
        help_pending(*b, c);  // the erase that made it is counted before the tag is gone
        if (cas128(&b->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      case kLive: {
        help_pending(*b, c);
        const std::uint64_t m = next_meta(c.meta, kFrozen);
        if (cas128(&b->value, c.value, c.meta, c.value, m)) {
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
  Bucket* b = buckets(older);
  const std::uint64_t mask = older->capacity - 1;
  std::uint64_t i = home(k, older);
  for (std::uint64_t n = 0; n <= mask;) {
    Bucket& bk = b[i];
    const Cell c = read_cell(bk);
    switch (c.state()) {
      case kEmpty:
        // Seal the end of k's run: no slow writer can insert k into the older table now.
        if (cas128(&bk.value, c.value, c.meta, 0, next_meta(c.meta, kSealed))) return;
        continue;
      case kSealed:
        return;
      case kClaimed:
        if (c.value == k) return move_bucket(older, &bk, newer);
        break;
      default:
        if (load_acquire(bk.key) == k) return move_bucket(older, &bk, newer);
        break;
    }
    i = (i + 1) & mask;
    ++n;
  }
}

bool MapImpl::help_migrate(TableHeader* newer, std::size_t chunks) const {
  const std::uint64_t o_off = newer->older.load(std::memory_order_acquire);
  if (o_off == 0) return true;
  TableHeader* older = table(o_off);
  const std::uint64_t csize = std::min<std::uint64_t>(kChunk, older->capacity);
  const std::uint64_t nchunks = older->capacity / csize;
  std::uint64_t* bitmap = done_bitmap(older);
  Bucket* ob = buckets(older);
  // Unlinks and retires the older table; only the winner of the CAS retires it. Called again
  // by anyone who finds the work done, so a finisher killed before its CAS delays nobody.
  auto complete = [&] {
    std::uint64_t expected = o_off;
    if (newer->older.compare_exchange_strong(expected, 0, std::memory_order_seq_cst)) {
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
      move_bucket(older, &ob[i], newer);
    }
    // acq_rel: the moves above happen-before whoever sees the bit or the final count.
    if ((word.fetch_or(bit, std::memory_order_acq_rel) & bit) == 0 &&
        newer->mig_done.fetch_add(1, std::memory_order_acq_rel) + 1 >= nchunks) {
      return complete();
    }
  }
  return newer->older.load(std::memory_order_acquire) == 0;
}

void MapImpl::maybe_resize(TableHeader* t, bool shrink, bool force) const {
  SegmentHeader& h = header();
  const std::uint64_t t_off = offset_of(t);
  const std::uint64_t cap = t->capacity;
  // The successor must hold t's live entries plus the keys inserted while it assimilates t
  // (each write migrates kChunksPerWrite chunks first, so at most ~cap / 32 of them): sized
  // at twice the live count, and never below cap / 16, it does. But the live count is read
  // before the successor is allocated, and writers keep inserting into t until the CAS below
  // publishes it: a shrink decided in a lull of an empty-and-refill cycle could otherwise
  // publish a successor too small for what t holds by then, and the migration would find it
  // full. So the count is read again right before the CAS, and a successor that t outgrew
  // is never published.
  for (int round = 0;; ++round) {
    if (h.current_table.load(std::memory_order_seq_cst) != t_off) return;  // resized already
    if (t->older.load(std::memory_order_acquire) != 0) return;  // one migration at a time
    // Clamped to cap: t (with no older table) holds every live entry, so a larger count is
    // damaged shared memory and must not size a successor as large as max_bytes allows.
    const std::uint64_t live = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, size_estimate())));
    const std::uint64_t used = used_buckets(t);
    if (shrink) {
      if (cap <= h.initial_capacity || live * 8 >= cap) return;
    } else if (!force && used * 4 < cap * 3) {
      return;
    }
    // The successor holds the live entries at a load of at most 1/2, so it has room for the
    // inserts that come while it assimilates t.
    std::uint64_t want = round_pow2(std::max<std::uint64_t>(h.initial_capacity, live * 2 + 2));
    want = std::max(want, cap / 16);  // bounds the migration work per write when shrinking
    if (force && want <= cap) want = cap * 2;
    std::uint64_t n_off = 0;
    try {
      n_off = create_table(want, t_off);
    } catch (const Error& e) {
      // Growth can wait while t still has room; a physically full table cannot.
      if (e.code() == Errc::out_of_space && !force) return;
      throw;
    }
    if (before_publish_for_test != nullptr) std::exchange(before_publish_for_test, nullptr)();
    const std::uint64_t live_now = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, size_estimate())));
    if (live_now * 2 + 2 > want) {
      // t grew while the successor was being made. A shrink is called off (always safe: the
      // next 256th erase tries again); growth is decided again with the new count -- a few
      // times, then left to the next claim over the limit, unless t is physically full.
      discard_table(n_off);
      if (shrink || (!force && round >= 3)) return;
      continue;
    }
    std::uint64_t expected = t_off;
    if (!h.current_table.compare_exchange_strong(expected, n_off, std::memory_order_seq_cst)) {
      discard_table(n_off);  // another thread resized first; nobody saw this table
      return;
    }
    h.resizes.fetch_add(1, std::memory_order_relaxed);
    return;
  }
}

void MapImpl::discard_table(std::uint64_t table_off) const {
  free_extent(table_off, table(table_off)->extent_bytes);
}

namespace {
// How a probe's answer reads for a lookup.
enum class Look { value, none, forward, unknown };
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
      return Look::forward;
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
    std::uint64_t homes[kGroup];
    Fast r[kGroup];
    std::uint64_t v[kGroup];
    pin();
    FastTable ft;
    const bool fast = fast_table(&ft);
    if (fast) {
      for (std::size_t j = 0; j < m; ++j) {
        homes[j] = hash_key(keys[base + j], seed_) >> ft.shift;
        __builtin_prefetch(&ft.buckets[homes[j]]);
      }
      for (std::size_t j = 0; j < m; ++j) r[j] = find_fast(ft, keys[base + j], homes[j], &v[j]);
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
  SegmentHeader& h = header();
  for (;;) {
    TableHeader* t = table(h.current_table.load(std::memory_order_seq_cst));
    // Read `older` before probing t: if it is 0 now, t was the only table for the whole probe.
    // Read after, it could have been cleared by a migration that moved k in behind our probe.
    const std::uint64_t o_off = t->older.load(std::memory_order_acquire);
    std::uint64_t v = 0;
    switch (classify(probe(t, k, false), &v)) {
      case Look::value:
        return v;
      case Look::none:
        return std::nullopt;
      case Look::forward:
        continue;  // t was superseded: start again from the new current table
      case Look::unknown:
        break;
    }
    if (o_off == 0 || t->discard_older != 0) return std::nullopt;
    switch (classify(probe(table(o_off), k, false), &v)) {
      case Look::value:
        return v;
      case Look::none:
      case Look::unknown:
        return std::nullopt;
      case Look::forward:
        break;
    }
    // The older table handed k over after our first look: t is authoritative now.
    switch (classify(probe(t, k, false), &v)) {
      case Look::value:
        return v;
      case Look::forward:
        continue;
      default:
        return std::nullopt;
    }
  }
}

std::optional<std::uint64_t> MapImpl::mutate_impl(std::uint64_t k, bool may_insert, DecideFn decide,
                                                  void* ctx) {
  PinGuard pin(*this);
  wait_for_gate();
  SegmentHeader& h = header();
  for (;;) {
    const std::uint64_t t_off = h.current_table.load(std::memory_order_seq_cst);
    TableHeader* t = table(t_off);
    if (const std::uint64_t o_off = t->older.load(std::memory_order_acquire); o_off != 0) {
      help_migrate(t, kChunksPerWrite);
      settle(table(o_off), t, k);
    }
    const ProbeResult r = probe(t, k, may_insert);
    if (r.kind == Probe::sealed) continue;
    if (r.kind == Probe::full && may_insert) {
      // Physically full (the load limit was raced past): finish migrating, then grow.
      while (!help_migrate(t, 64)) {
      }
      maybe_resize(t, false, true);
      continue;
    }
    if (r.kind == Probe::absent || r.kind == Probe::full) {
      (void)decide(ctx, std::nullopt);  // nothing to erase or exchange
      return std::nullopt;
    }
    Bucket& b = *r.bucket;
    Cell c = r.cell;
    for (;;) {
      std::optional<std::uint64_t> cur;
      const std::uint64_t s = c.state();
      if (s == kLive) {
        cur = c.value;
      } else if (s == kFrozen) {
        // t is being migrated: help move this bucket, then retry in the successor.
        move_bucket(t, &b, table(h.current_table.load(std::memory_order_seq_cst)));
        break;
      } else if (s == kMoved || s == kSealed) {
        break;
      }
      const WriteIntent w = decide(ctx, cur);
      if (w.kind == WriteIntent::keep || (w.kind == WriteIntent::erase && !cur)) {
        if (r.over_limit) maybe_resize(t, false);
        return cur;
      }
      if (s == kClaimed) store_key(b, k);
      const bool set = w.kind == WriteIntent::set;
      const std::uint64_t new_value = set ? w.value : 0;
      const std::int64_t delta = set ? (cur ? 0 : 1) : -1;
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
      if (record != nullptr) seq = write_record(*record, offset_of(&b), new_meta, new_value);
      const bool ok = cas128(&b.value, c.value, c.meta, new_value, new_meta);
      if (ok && delta != 0) {
        if (record != nullptr) {
          apply_pending(*record, seq, delta);  // unless a helper was faster
        } else {
          add_size(delta);
        }
      }
      if (record != nullptr) record->pending.store(0, std::memory_order_release);
      if (ok) {
        if (r.over_limit) maybe_resize(t, false);
        if (!set && (++t_erases & 255) == 0) maybe_resize(t, true);
        return cur;
      }
      c = read_cell(b);
    }
  }
}

void MapImpl::finish_migration() const {
  for (;;) {
    PinGuard pin(*this);
    TableHeader* t = table(header().current_table.load(std::memory_order_seq_cst));
    if (help_migrate(t, 256) && t->older.load(std::memory_order_acquire) == 0) return;
  }
}

void MapImpl::for_each(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
  for (;;) {
    finish_migration();
    PinGuard pin(*this);
    TableHeader* t = table(header().current_table.load(std::memory_order_seq_cst));
    // A resize between finish_migration() and our pin: finish that one too, then walk.
    if (t->older.load(std::memory_order_seq_cst) != 0) continue;
    return walk(t, fn, ctx);
  }
}

void MapImpl::walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t),
                   void* ctx) const {
  Bucket* b = buckets(t);
  // t has no older table: every key has exactly one bucket in it, so each is visited once.
  // A bucket MOVED meanwhile (t got a successor during the walk) is followed by a lookup.
  for (std::uint64_t i = 0; i < t->capacity; ++i) {
    const Cell c = read_cell(b[i]);
    const std::uint64_t s = c.state();
    if (s == kLive || s == kFrozen) {
      fn(ctx, load_acquire(b[i].key), c.value);
    } else if (s == kMoved) {
      const std::uint64_t k = load_acquire(b[i].key);
      if (const auto v = find(k)) fn(ctx, k, *v);
    }
  }
}

// ---- point-in-time holds ---------------------------------------------------------------------

bool MapImpl::gate_owner_alive(std::uint64_t gate) const {
  for (std::size_t i = 0; i < max_handles_; ++i) {
    if (slot(i).owner.owner.load(std::memory_order_acquire) == gate) return slot_owner_alive(i);
  }
  return false;  // the holder's slot was freed: it closed or was cleared as dead
}

void MapImpl::wait_for_gate() const {
  SegmentHeader& h = header();
  // Dekker-style with hold_writers(): our pin precedes this load (seq_cst store, or a plain
  // store made visible by the holder's membarrier), and the holder's gate store precedes its
  // scan of the lanes. Either we see the gate, or the holder sees our pin and waits for us.
  for (;;) {
    std::uint64_t g = h.writer_gate.load(std::memory_order_seq_cst);
    if (g == 0 || g == owner_word_) return;
    // A dead holder, or one past its lease (stopped, or just too slow), no longer holds.
    const std::uint64_t deadline = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (!gate_owner_alive(g) || (deadline != 0 && monotonic_ns() > deadline)) {
      h.writer_gate.compare_exchange_strong(g, 0, std::memory_order_seq_cst);
      continue;
    }
    unpin();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    pin();
  }
}

void MapImpl::hold_writers() const {
  SegmentHeader& h = header();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    std::uint64_t g = 0;
    if (h.writer_gate.compare_exchange_strong(g, owner_word_, std::memory_order_seq_cst)) {
      h.writer_gate_deadline.store(monotonic_ns() + kWriterHoldLeaseNs, std::memory_order_release);
      break;
    }
    if (g == owner_word_) break;
    const std::uint64_t lease = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (!gate_owner_alive(g) || (lease != 0 && monotonic_ns() > lease)) {
      h.writer_gate.compare_exchange_strong(g, 0, std::memory_order_seq_cst);
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail(Errc::timeout, name_, "another process holds writers back (point-in-time dump)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Wait for a grace period: every operation pinned before the gate was set has finished.
  const std::uint64_t e = h.global_epoch.fetch_add(1, std::memory_order_seq_cst);
  if (!global_barrier()) {
    release_writers();
    fail(Errc::io_error, name_, "membarrier is unavailable; point-in-time dump impossible");
  }
  const Lane* mine = &my_lane();
  for (std::size_t i = 0; i < max_handles_; ++i) {
    for (const Lane& lane : slot(i).lanes) {
      if (&lane == mine) continue;
      for (;;) {
        const std::uint64_t w = lane.pin.load(std::memory_order_seq_cst);
        if ((w & kPinCountMask) == 0 || (w >> 16) > e || !slot_owner_alive(i)) break;
        if (std::chrono::steady_clock::now() > deadline) {
          release_writers();
          fail(Errc::timeout, name_,
               "a process (pid " +
                   std::to_string(slot(i).owner.owner.load(std::memory_order_relaxed) &
                                  0xffffffffu) +
                   ") stays inside an operation (stopped?); point-in-time dump abandoned");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }
}

bool MapImpl::release_writers() const {
  SegmentHeader& h = header();
  std::uint64_t g = owner_word_;
  h.writer_gate_deadline.store(0, std::memory_order_relaxed);
  return h.writer_gate.compare_exchange_strong(g, 0, std::memory_order_seq_cst);
}

bool MapImpl::still_holding_writers() const {
  return header().writer_gate.load(std::memory_order_seq_cst) == owner_word_;
}

// ---- bulk loads --------------------------------------------------------------------------------

std::uint64_t MapImpl::build_table(std::size_t entries) const {
  const std::uint64_t off = create_table(
      round_pow2(std::max<std::uint64_t>(header().initial_capacity, entries * 2 + 2)), 0);
  // Fault the pages in with one call instead of one fault per page during the fill. Most of
  // a big load is the kernel allocating and zeroing these pages: large tables are populated
  // by two threads, one half each (the fill has nothing to do until the pages exist).
  char* const start = base_ + off;
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
bool put_private(TableHeader* t, Bucket* b, std::uint64_t i, std::uint64_t k, std::uint64_t v) {
  const std::uint64_t mask = t->capacity - 1;
  for (std::uint64_t n = 0; n <= mask; i = (i + 1) & mask, ++n) {
    if (state_of(b[i].meta) == kEmpty) {
      b[i].key = k;
      b[i].value = v;
      b[i].meta = next_meta(b[i].meta, kLive);
      t->used[0].n.store(t->used[0].n.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
      return true;
    }
    if (b[i].key == k) {
      b[i].value = v;  // the last value wins
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
  Bucket* b = buckets(t);
  constexpr std::size_t kAhead = 64;
  std::uint64_t homes[kAhead];
  for (std::size_t base = 0; base < n; base += kAhead) {
    const std::size_t m = std::min(kAhead, n - base);
    for (std::size_t j = 0; j < m; ++j) {
      homes[j] = home(kv[base + j].first, t);
      __builtin_prefetch(&b[homes[j]], 1);
    }
    for (std::size_t j = 0; j < m; ++j) {
      if (!put_private(t, b, homes[j], kv[base + j].first, kv[base + j].second)) {
        fail(Errc::invalid_argument, name_, "bulk load: more entries than the table was built for");
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
    const std::uint64_t cur_off = h.current_table.load(std::memory_order_seq_cst);
    TableHeader* cur = table(cur_off);
    if (cur->older.load(std::memory_order_acquire) != 0) continue;
    // The built table becomes the successor of cur, one that discards cur's entries instead of
    // copying them. Relaxed: published by the CAS below.
    built->older.store(cur_off, std::memory_order_relaxed);
    built->older_capacity = cur->capacity;
    // Count the new entries before publishing: a loader killed right after the CAS must not
    // leave the size low (successors are sized from it); until the old entries are discarded
    // the size reads high, which only makes a successor larger.
    add_size(static_cast<std::int64_t>(count));
    std::uint64_t expected = cur_off;
    if (!h.current_table.compare_exchange_strong(expected, built_off, std::memory_order_seq_cst)) {
      add_size(-static_cast<std::int64_t>(count));
      continue;
    }
    h.resizes.fetch_add(1, std::memory_order_relaxed);
    break;
  }
  finish_migration();
}

}  // namespace shmap::detail
