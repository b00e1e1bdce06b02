// shmap — the map's operations on its tables (MapImpl, detail/map_impl.hpp): lookups that the
// inline fast path hands on (find_slow, find_slower), batched lookups (find_many), every write
// (mutate_impl) and for_each. They follow the chain's protocol (migration.cpp's essay): a write
// first migrates kChunksPerWrite chunks of the older table, settles its own key in every older
// table, oldest first, then works in the newest table only; a lookup reads the chain before it
// probes, newest table first, and the first table that decides the key answers.
#include <algorithm>
#include <optional>

#include "shmap/detail/chaos.hpp"
#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {
namespace {

thread_local unsigned t_erases = 0;

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
      SHMAP_CHAOS_POINT();
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
    SHMAP_CHAOS_POINT();
    if (t->older.load(std::memory_order_acquire) != 0) {
      if (migrating_write_for_test != nullptr) std::exchange(migrating_write_for_test, nullptr)();
      help_migrate(t, kChunksPerWrite);
      // Settle k in every older table, oldest first: each hands k on to the next newer one,
      // so when we write in t no older table can still answer for k.
      TableHeader* chain[kMaxChain];
      for (std::size_t i = load_chain(t, chain) - 1; i > 0; --i) {
        settle(chain[i], chain[i - 1], k);
        SHMAP_CHAOS_POINT();
      }
    }
    SHMAP_CHAOS_POINT();
    const ProbeResult r = probe(t, k, may_insert, true);
    SHMAP_CHAOS_POINT();
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
      // t got a successor after we read the top: this bucket is not the whole story any more. A
      // copy out of an older table that found t full went straight on to t's successor and left
      // k's bucket here CLAIMED by a slower copier of the same value (which may yet fill it: a
      // stale duplicate). Deciding here lost erases ("absent") and overwrote the duplicate
      // instead of the value above. So nothing is decided in a table that has a successor: the
      // retry settles k in t (moving this bucket on) and decides in the newest table.
      // Why the load sees such a successor: the hop that left the claim behind read it before
      // it read k's older bucket still FROZEN, and we read that bucket MOVED (settle, or the
      // migration's completion) before reading this one (x86-TSO; the seq_cst load pairs with
      // the link's seq_cst CAS). Same cache line as `older`, which every write loads already.
      if (t->newer.load(std::memory_order_seq_cst) != 0) break;
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
      SHMAP_CHAOS_POINT();
      const bool ok = cas128(&b.value, c.value, c.meta, new_value, new_meta);
      SHMAP_CHAOS_POINT();
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

std::string MapImpl::describe_key(std::uint64_t k) const {
  static constexpr const char* kStates[] = {"EMPTY",  "CLAIMED", "LIVE",   "TOMB",
                                            "FROZEN", "MOVED",   "SEALED", "BULK"};
  PinGuard pin(*this);
  std::string out = "key " + std::to_string(k) + ":";
  TableHeader* chain[kMaxChain];
  const std::size_t n = load_chain(top_header(false), chain);
  for (std::size_t i = 0; i < n; ++i) {
    TableHeader* t = chain[i];
    out += "\n  table @" + std::to_string(offset_of(t)) + " cap " + std::to_string(t->capacity) +
           " newer " + std::to_string(t->newer.load(std::memory_order_acquire)) + " older " +
           std::to_string(t->older.load(std::memory_order_acquire)) + " full_flag " +
           std::to_string(full_flag(t).load(std::memory_order_acquire)) + " home " +
           std::to_string(home(k, t));
    const std::uint8_t* fps = fingerprints(t);
    for (std::uint64_t j = 0; j < t->capacity; ++j) {
      const BucketRef b = bucket(t, j);
      const Cell c = read_cell(*b.slot);
      const std::uint64_t s = c.state();
      if (s == kEmpty || s == kSealed || key_of(b, c) != k) continue;
      out += "\n    bucket " + std::to_string(j) + " " + kStates[s & 7] + " value " +
             std::to_string(c.value) + " fp " + std::to_string(load_fp(fps, j)) + " (want " +
             std::to_string(fingerprint(hash_key(k, seed()))) + ") distance " +
             std::to_string((j + t->capacity - home(k, t)) % t->capacity);
    }
  }
  return out;
}

}  // namespace shmap::detail
