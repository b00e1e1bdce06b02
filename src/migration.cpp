// shmap — growth by a chain of tables with incremental migration (seed 000, seed 004): the
// Migration type (detail/migration.hpp). The bucket state machine and probing in one table are
// table.cpp's; the map's lookups and writes, which follow the protocol below, are map_ops.cpp's.
//
// The chain is `current -> older` (at most two tables; a new successor is only made once the
// current table has assimilated its older one). Every write first migrates kChunksPerWrite
// chunks of the older table, then settles its own key (moves the key's old bucket, or seals
// the key's whole probe run in the older table), then works in the current table only.
//
// What can race, and why the result is still right (claims in one table: table.cpp):
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
#include "shmap/detail/migration.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "shmap/detail/chaos.hpp"
#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {

void Migration::copy_frozen(BucketRef b, Cell c, TableHeader* newer) const {
  const std::uint64_t k = load_acquire(*b.key);
  if (newer->discard_older == 0) {
    // The value goes to `newer`, or -- when newer is full, or was itself migrated past k's
    // run before this copy landed -- on to newer's successor, and so on up the chain.
    TableHeader* target = newer;
    for (std::size_t hop = 0;; ++hop) {
      if (hop > kMaxChain) {
        fail(Errc::corrupt, m_.name(),
             "table chain longer than " + std::to_string(kMaxChain) +
                 " during migration (damaged segment); run 'shmap check " + m_.name() + "'");
      }
      // A target known to be full (and so replaced) cannot take k, and nobody can claim k in
      // it any more: go straight on. Probing it would walk its whole capacity for every copy
      // (a migration into a full table of 64K buckets ran for minutes under TSan). A claim of
      // k made there before it filled up (a slower copier of this value) stays behind, and
      // may even be filled later: writers never decide in a table with a successor
      // (mutate_impl), and settling k there moves that bucket on, so it is never believed.
      if (full_flag(target).load(std::memory_order_acquire) != 0) {
        if (const std::uint64_t nx = target->newer.load(std::memory_order_acquire); nx != 0) {
          if (read_cell(*b.slot).meta != c.meta) return;  // stale: see below
          target = m_.table(nx);
          continue;
        }
      }
      SHMAP_CHAOS_POINT();
      const ProbeResult r = m_.probe(target, k, true);
      SHMAP_CHAOS_POINT();
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
      target = m_.table(nx);
    }
  }
  SHMAP_CHAOS_POINT();
  if (newer->discard_older != 0) {
    // A replaced entry leaves the map: counted once, by the winner of the CAS, and recorded
    // first so that a mover killed between the CAS and the count cannot lose it.
    counted_cas(*b.slot, c, 0, kMoved, -1);
  } else {
    cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved));
  }
}

bool Migration::counted_cas(Slot& b, const Cell& c, std::uint64_t value, std::uint64_t state,
                            std::int64_t delta) const {
  const std::size_t tn = thread_number();
  const std::uint64_t tag = m_.my_tag(tn);
  const std::uint64_t meta = next_meta(c.meta, state, tag);
  Lane* record = tag != 0 ? &m_.lane_of(tn) : nullptr;
  const std::uint64_t seq =
      record != nullptr ? m_.write_record(*record, m_.offset_of(&b), meta, value) : 0;
  const bool ok = cas128(&b.value, c.value, c.meta, value, meta);
  if (ok) {
    if (record != nullptr) {
      m_.apply_pending(*record, seq, delta);  // unless a helper was faster
    } else {
      m_.add_size(delta);
    }
  }
  if (record != nullptr) record->pending.store(0, std::memory_order_release);
  return ok;
}

void Migration::help_bulk(TableHeader* t) const {
  for (;;) {
    const Cell c = read_cell(t->bulk.slot);
    if (c.state() == kBulk) return m_.help_pending(t->bulk.slot, c);  // added, or its adder is slow
    if (c.state() != kClaimed) return;                                // not a bulk-loaded table
    if (counted_cas(t->bulk.slot, c, c.value, kBulk, static_cast<std::int64_t>(c.value))) return;
  }
}

void Migration::move_bucket(TableHeader* older, std::uint64_t i, TableHeader* newer) const {
  const BucketRef b = m_.bucket(older, i);
  for (;;) {
    const Cell c = read_cell(*b.slot);
    switch (c.state()) {
      case kEmpty:
        // Before the seal CAS: a lookup reading this bucket's fingerprint 0 did so before the
        // seal, so before anything of this run could reach the successor ("Fingerprints").
        store_fp(m_.fingerprints(older), i, kFpSealing);
        SHMAP_CHAOS_POINT();
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kSealed))) return;
        break;
      case kClaimed: {
        store_key(b, c.value);
        // A claim whose claimer died before its fingerprint: write it before the bucket says
        // MOVED, so that a lookup still holding this table's view (a Session) that reaches it
        // goes on to the MOVED state instead of ending its run at a 0 ("Fingerprints").
        std::uint8_t* fps = m_.fingerprints(older);
        if (load_fp(fps, i) == kFpFree) store_fp(fps, i, fingerprint(hash_key(c.value, m_.seed())));
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      }
      case kTomb:
        m_.help_pending(*b.slot, c);  // the erase that made it is counted before the tag is gone
        if (cas128(&b.slot->value, c.value, c.meta, 0, next_meta(c.meta, kMoved))) return;
        break;
      case kLive: {
        m_.help_pending(*b.slot, c);
        const std::uint64_t m = next_meta(c.meta, kFrozen);
        if (cas128(&b.slot->value, c.value, c.meta, c.value, m)) {
          SHMAP_CHAOS_POINT();
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

void Migration::settle(TableHeader* older, TableHeader* newer, std::uint64_t k) const {
  // A writer's walk (probe, "Fingerprints"): it writes the bytes a claimer left at 0 before
  // it seals the end of the run, so a lookup that stops at such a byte read it before the
  // seal, and so before k can be written in the newer table.
  std::uint8_t* fps = m_.fingerprints(older);
  RunWalk run(fps, hash_key(k, m_.seed()), older->capacity);
  std::uint64_t i = 0;
  std::uint8_t f = 0;
  while (run.at(&i, &f)) {
    const BucketRef bk = m_.bucket(older, i);
    SHMAP_CHAOS_POINT();
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
        if (f == kFpFree) store_fp(fps, i, fingerprint(hash_key(key, m_.seed())));
        break;
      }
    }
    run.step();
  }
}

bool Migration::help_migrate(TableHeader* newer, std::size_t chunks, std::size_t depth) const {
  const std::uint64_t o_off = newer->older.load(std::memory_order_acquire);
  if (o_off == 0) return true;
  TableHeader* older = m_.table(o_off);
  if (older->older.load(std::memory_order_acquire) != 0) {
    // A chain of three: `older` was superseded before it had assimilated its own older table
    // (it was too small). That migration finishes first -- its copies that do not fit in
    // `older` land in `newer` -- and only then is `older` moved into `newer`, so `newer`
    // never unlinks a table whose older one still holds entries.
    if (depth + 2 > kMaxChain) {
      fail(Errc::corrupt, m_.name(),
           "table chain longer than " + std::to_string(kMaxChain) +
               " (damaged segment, or a cycle); run 'shmap check " + m_.name() + "'");
    }
    help_migrate(older, chunks, depth + 1);
    if (older->older.load(std::memory_order_acquire) != 0) return false;
  }
  const std::uint64_t csize = std::min<std::uint64_t>(kChunk, older->capacity);
  const std::uint64_t nchunks = older->capacity / csize;
  std::uint64_t* bitmap = m_.done_bitmap(older);
  // A bulk-loaded replacement counts its entries before it discards the older ones: the size
  // reads high while the discard runs, never low (successors are sized from it).
  if (newer->discard_older != 0) help_bulk(newer);
  // Unlinks and retires the older table; only the winner of the CAS retires it. Called again
  // by anyone who finds the work done, so a finisher killed before its CAS delays nobody.
  auto complete = [&] {
    std::uint64_t expected = o_off;
    SHMAP_CHAOS_POINT();
    if (newer->older.compare_exchange_strong(expected, 0, std::memory_order_seq_cst)) {
      SHMAP_CHAOS_POINT();
      // A completer that dies here leaks o_off: the leak sweep finds it (leaks.cpp).
      if (MapImpl::between_unlink_and_retire_for_test != nullptr)
        MapImpl::between_unlink_and_retire_for_test();
      m_.retire(o_off);
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
      if (i % 8 == 0) SHMAP_CHAOS_POINT();
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

void Migration::maybe_resize(TableHeader* t, bool shrink, bool force, bool fit) const {
  SegmentHeader& h = m_.header();
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
    if (top_table(false) != m_.offset_of(t)) return;  // resized already
    if (t->older.load(std::memory_order_acquire) != 0) {
      // One migration at a time -- unless t (the successor) is nearly full before it has
      // assimilated its older table: then waiting for the migration would only fill it up.
      if (!shrink && m_.used_buckets(t) * 8 >= cap * 7) grow_stuck(t);
      return;
    }
    // Clamped to cap: t (with no older table) holds every live entry, so a larger count is
    // damaged shared memory and must not size a successor as large as max_bytes allows.
    const std::uint64_t live = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, m_.size_estimate())));
    const std::uint64_t used = m_.used_buckets(t);
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
      n_off = m_.create_table(want, m_.offset_of(t));
    } catch (const Error& e) {
      // Growth can wait while t still has room; a physically full table cannot.
      if (e.code() == Errc::out_of_space && !force) return;
      throw;
    }
    if (MapImpl::before_publish_for_test != nullptr)
      std::exchange(MapImpl::before_publish_for_test, nullptr)();
    const std::uint64_t live_now = std::min<std::uint64_t>(
        cap, static_cast<std::uint64_t>(std::max<std::int64_t>(0, m_.size_estimate())));
    if ((fit ? fit_room(live_now) : live_now * 2 + 2) > want) {
      // t grew while the successor was being made. A shrink is called off (always safe: the
      // next 256th erase tries again); growth is decided again with the new count -- a few
      // times, then left to the next claim over the limit, unless t is physically full.
      m_.discard_table(n_off);
      if (shrink || fit || (!force && round >= 3)) return;
      continue;
    }
    if (MapImpl::after_recount_for_test != nullptr)
      std::exchange(MapImpl::after_recount_for_test, nullptr)();
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
void Migration::grow_stuck(TableHeader* t) const {
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
      const std::uint64_t st = state_of(load_acquire(m_.bucket(chain[i], j).slot->meta));
      claimed += st != kEmpty && st != kSealed ? 1 : 0;
    }
    room += std::min<std::uint64_t>(chain[i]->capacity, claimed + claimed / 8 + 64);
  }
  // And never below 1/16 of what must be migrated: each write walks 2 chunks (128 buckets)
  // first and inserts at most one key, so at most to_migrate / 128 new keys arrive meanwhile.
  const std::uint64_t want =
      std::max(next_pow2_capacity(room * 2), next_pow2_capacity(to_migrate / 16));
  link_successor(t, m_.create_table(want, m_.offset_of(t)));
}

std::uint64_t Migration::link_successor(TableHeader* t, std::uint64_t n_off) const {
  SegmentHeader& h = m_.header();
  std::uint64_t linked = 0;
  if (n_off == 0 ||
      // seq_cst: the successor's header (older, capacity) is written before anyone can
      // follow this link; one CAS winner per table, so t has exactly one successor.
      !t->newer.compare_exchange_strong(linked, n_off, std::memory_order_seq_cst)) {
    if (n_off != 0) m_.discard_table(n_off);  // another thread linked first; nobody saw ours
    n_off = linked != 0 ? linked : t->newer.load(std::memory_order_acquire);
  } else {
    h.resizes.fetch_add(1, std::memory_order_relaxed);
    SHMAP_CHAOS_POINT();
  }
  // Publish. If t is no longer current, someone published it (or something newer) already.
  std::uint64_t expected = m_.offset_of(t);
  h.current_table.compare_exchange_strong(expected, n_off, std::memory_order_seq_cst);
  return n_off;
}

std::uint64_t Migration::top_table(bool publish, TableHeader** top) const {
  SegmentHeader& h = m_.header();
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
      TableHeader* t = m_.table(off);
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
  fail(Errc::corrupt, m_.name(),
       "the tables linked past the current one form a cycle (damaged segment); run 'shmap "
       "check " +
           m_.name() + "'");
}

void Migration::check_forward(TableHeader* t) const {
  // A bucket of t says "moved on" (FROZEN, MOVED, SEALED): t has a successor -- linked
  // (this build), or published over it (a format-1 successor, so t is no longer current).
  // Neither: the state was written by damage, and retrying would spin for ever.
  if (t->newer.load(std::memory_order_acquire) == 0 && top_table(false) == m_.offset_of(t)) {
    fail(Errc::corrupt, m_.name(),
         "a bucket of the current table is in a migration state but the table has no "
         "successor (damaged segment); run 'shmap check " +
             m_.name() + "'");
  }
}

std::size_t Migration::load_chain(TableHeader* t, TableHeader** out) const {
  std::size_t n = 0;
  for (;;) {
    out[n++] = t;
    const std::uint64_t o = t->older.load(std::memory_order_acquire);
    if (o == 0) return n;
    if (n == kMaxChain) {
      fail(Errc::corrupt, m_.name(),
           "the table chain is longer than " + std::to_string(kMaxChain) +
               " (damaged segment, or a cycle); run 'shmap check " + m_.name() + "'");
    }
    t = m_.table(o);
  }
}

void Migration::fit_table() const {
  for (int i = 0; i < 8; ++i) {  // each pass shrinks to at least 1/16 (maybe_resize)
    std::uint64_t before = 0;
    {
      // Linking a table is a write: it waits for a point-in-time hold as writes do (a dump's
      // or an audit's), so that what a hold sees as the chain stays the chain.
      PinGuard pin(m_);
      m_.mark_writer();
      m_.wait_for_gate();
      TableHeader* t = top_header(true);
      before = t->capacity;
      if (t->older.load(std::memory_order_acquire) == 0) maybe_resize(t, true, false, true);
    }
    finish_migration();
    PinGuard pin(m_);
    if (top_header(true)->capacity >= before) return;
  }
}

void Migration::finish_migration() const {
  for (;;) {
    PinGuard pin(m_);
    TableHeader* t = top_header(true);
    if (help_migrate(t, 256) && t->older.load(std::memory_order_acquire) == 0) return;
  }
}

}  // namespace shmap::detail
