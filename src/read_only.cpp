// shmap — read-only attachments (OpenOptions::read_only): reads with no handle slot.
//
// Why a reader without a visible pin needs more than the usual protocol
// =====================================================================
// A read-write Map pins its lane (in its handle slot) for every operation; reclaimers free a
// retired table only once every lane is past the table's retire epoch, so a pinned reader can
// never see a table freed under it. A read-only attachment has no slot and may not write the
// segment (it is mapped PROT_READ, possibly by a user with read permission only), so nobody
// can see its pins. Its pins go to a process-private HandleSlot (the code paths stay the
// same), and they protect nothing: a table it reads may be retired, freed (its pages punched
// to zeros) and its extent reused for another table while it reads.
//
// What makes the outcome still right: reads that cannot go astray, and a copy kept only if no
// table was retired while it was made. The read paths of map_ops.cpp re-read a table's capacity
// from shared memory as they go, which is right for a pinned reader but not here (a freed
// table's header reads as zeros, a reused one as another table's): so a read-only attachment
// has its own lookup and walk below. Each reads a table's header once into a View, checks it
// (a capacity of layout.hpp's list, bits to match, every bucket inside this process's mapping) and
// indexes only with those copies, so garbage yields wrong numbers, never a wild address or an
// endless loop. Then:
//
//   e1 = global_epoch                  (seq_cst)
//   copy what the operation needs      (lookups, a whole walk into a vector)
//   acquire fence; e2 = global_epoch   (seq_cst)
//   e1 == e2: the copy stands          else: discard it and read again
//
// A table is freed only after it was retired, and retire() bumps global_epoch (a seq_cst
// fetch_add) after unlinking the table and before pushing it on the retired stack. So:
//  - a table retired before e1 was read had been unlinked before: our chain loads (seq_cst,
//    after the e1 load that read the bump) cannot reach it;
//  - a table retired after e1 was read bumps the epoch, and the bump precedes its free and the
//    reuse of its memory; if any read of the copy saw a byte written by that reuse, the
//    acquire fence makes the bump visible to the e2 load, which then differs from e1.
// This is a seqlock on global_epoch whose writers are the retirers. Its price: a read that
// overlaps a retirement is repeated, so a long walk of a map that resizes without pause may
// never complete: after kReadOnlyPatience it fails with Errc::timeout (retry, or attach
// read-write, whose pins hold reclamation back instead). An exception thrown while reading
// (a garbage table header read as `corrupt`) is likewise believed only if the epoch held.
//
// The lookup follows find_slower's decisions (map_ops.cpp) over the chain, newest table first:
// LIVE or FROZEN answers with the value, TOMB with absent, MOVED or SEALED means a newer table
// decides (look again), CLAIMED or no bucket asks the older table unless this one discards
// its older content. A walk of a single table visits each bucket once (a MOVED one by a
// lookup); during a migration every key found in any table is looked up.
//
// What a read-only attachment never does: write shared memory. Writes are refused in Map
// (permission_denied) before they touch anything; reclaim() returns at once for a Map without
// an owner word; lane_group() gives it no extra slot; lookups and walks never help a
// migration; stats, readers and size only load. check() on a read-only attachment is a lighter
// one (check_read_only): map.cpp's full check walks buckets with re-read capacities.
#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {

namespace {
constexpr auto kReadOnlyPatience = std::chrono::seconds(10);
}

void MapImpl::read_validated(const char* what, void (*read)(void*), void* ctx) const {
  const auto start = std::chrono::steady_clock::now();
  const SegmentHeader& h = header();
  for (unsigned attempt = 0;; ++attempt) {
    const std::uint64_t e1 = h.global_epoch.load(std::memory_order_seq_cst);
    std::exception_ptr failure;
    try {
      read(ctx);
    } catch (...) {
      failure = std::current_exception();
    }
    // Orders every load of the copy before the second epoch load (the seqlock reader's fence).
    std::atomic_thread_fence(std::memory_order_acquire);
    const std::uint64_t e2 = h.global_epoch.load(std::memory_order_seq_cst);
    if (e1 == e2) {
      if (failure) std::rethrow_exception(failure);
      return;
    }
    if (std::chrono::steady_clock::now() - start > kReadOnlyPatience) {
      fail(Errc::timeout, name(),
           std::string("a read-only ") + what + " found the map resizing during each of its " +
               std::to_string(attempt + 1) + " attempts in " +
               std::to_string(kReadOnlyPatience.count()) +
               " s (a read-only attachment cannot hold tables back); retry when it is quieter, "
               "or attach read-write");
    }
    if (attempt >= 8)
      std::this_thread::sleep_for(std::chrono::microseconds(100 << std::min(attempt - 8, 6u)));
  }
}

bool MapImpl::ro_view(std::uint64_t off, RoView* v) const {
  const TableHeader* t = table(off);  // offset and header checked, the extent mapped
  const std::uint64_t cap =
      std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed);
  const std::uint64_t bits =
      std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed);
  const std::uint64_t mapped = seg_.mapped_bytes();
  // Read again after table() checked them: the values used are the values checked here.
  if (!table_shape_ok(cap, bits) || off + kTableHeaderBytes > mapped ||
      cap > (mapped - off - kTableHeaderBytes) / kBucketBytes) {
    return false;
  }
  v->header = t;
  v->buckets = reinterpret_cast<const char*>(t) + kTableHeaderBytes;
  v->capacity = cap;
  v->older = t->older.load(std::memory_order_seq_cst);
  v->discard_older =
      std::atomic_ref<const std::uint64_t>(t->discard_older).load(std::memory_order_relaxed);
  return true;
}

std::size_t MapImpl::ro_chain(RoView* out) const {
  const SegmentHeader& h = header();
  auto view = [&](std::uint64_t off, RoView* v) {
    if (!ro_view(off, v)) {
      fail(Errc::corrupt, name(),
           "a table header changed under a read-only read (damaged, or freed meanwhile)");
    }
  };
  // The newest table: current_table, or past it a successor linked but not yet published.
  std::uint64_t off = h.current_table.load(std::memory_order_seq_cst);
  RoView top;
  view(off, &top);
  for (std::size_t i = 0;; ++i) {
    const std::uint64_t nx = top.header->newer.load(std::memory_order_acquire);
    if (nx == 0) break;
    if (i == kMaxChain) fail(Errc::corrupt, name(), "the chain of newer tables does not end");
    view(nx, &top);
  }
  std::size_t n = 0;
  out[n++] = top;
  while (out[n - 1].older != 0) {
    if (n == kMaxChain) fail(Errc::corrupt, name(), "the table chain does not end");
    view(out[n - 1].older, &out[n]);
    ++n;
  }
  return n;
}

std::optional<std::uint64_t> MapImpl::ro_lookup(std::uint64_t k) const {
  enum class Look { value, none, forward, sealed, unknown };
  const std::uint64_t hash = hash_key(k, seed_);
  for (int restart = 0; restart < 1000; ++restart) {
    RoView chain[kMaxChain];
    const std::size_t n = ro_chain(chain);
    std::size_t end = n;
    bool again = false;
    for (std::size_t i = 0; i < end && !again;) {
      const RoView& t = chain[i];
      // Probe t without claiming: the bounds are the View's, never re-read.
      Look look = Look::unknown;
      std::uint64_t value = 0;
      for (std::uint64_t j = home_of(hash, t.capacity), m = 0; m < t.capacity;
           j = next_bucket(j, t.capacity), ++m) {
        const Cell c = read_cell(t.slot(j));
        const std::uint64_t s = c.state();
        if (s == kEmpty) break;  // absent here
        if (s == kSealed) {
          look = Look::sealed;
          break;
        }
        const std::uint64_t key = s == kClaimed ? c.value : load_acquire(t.key(j));
        if (key != k) continue;
        if (s == kLive || s == kFrozen) {
          look = Look::value;
          value = c.value;
        } else if (s == kTomb) {
          look = Look::none;
        } else if (s == kMoved) {
          look = Look::forward;
        }  // CLAIMED (an insert or a copy under way) or unknown: ask the older table
        break;
      }
      switch (look) {
        case Look::value:
          return value;
        case Look::none:
          return std::nullopt;
        case Look::sealed:
          if (i == 0) {
            again = true;  // a newer table was linked: read the chain again
            continue;
          }
          if (t.discard_older != 0) return std::nullopt;
          ++i;
          continue;
        case Look::forward:
          // A newer table decides now; if the newest forwarded, a newer one was published.
          if (i == 0) {
            again = true;
          } else {
            end = i;
            i = 0;
          }
          continue;
        case Look::unknown:
          if (t.discard_older != 0) return std::nullopt;
          ++i;
          continue;
      }
    }
    if (!again && chain[0].header->newer.load(std::memory_order_seq_cst) == 0) return std::nullopt;
  }
  fail(Errc::corrupt, name(),
       "a read-only lookup kept being sent to a newer table that does not exist (damaged)");
}

std::optional<std::uint64_t> MapImpl::find_read_only(std::uint64_t k) const {
  std::optional<std::uint64_t> out;
  read_validated("lookup", [&] { out = ro_lookup(k); });
  return out;
}

void MapImpl::for_each_read_only(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> copy;
  read_validated("walk", [&] {
    copy.clear();
    RoView chain[kMaxChain];
    const std::size_t n = ro_chain(chain);
    if (n == 1) {
      // No migration: each key has one bucket; a bucket MOVED meanwhile (a successor was
      // linked during the walk) is followed by a lookup.
      const RoView& t = chain[0];
      for (std::uint64_t j = 0; j < t.capacity; ++j) {
        const Cell c = read_cell(t.slot(j));
        const std::uint64_t s = c.state();
        if (s == kLive || s == kFrozen) {
          copy.emplace_back(load_acquire(t.key(j)), c.value);
        } else if (s == kMoved) {
          const std::uint64_t k = load_acquire(t.key(j));
          if (const auto v = ro_lookup(k)) copy.emplace_back(k, *v);
        }
      }
      return;
    }
    // A migration is under way and this attachment may not help it finish. Every key with a
    // bucket in any table of the chain is looked up (the lookup knows which table decides).
    // Oldest table first: a key only moves to newer tables, and a moved bucket keeps its key,
    // so a key present for the whole walk is collected from one table or another.
    std::vector<std::uint64_t> keys;
    for (std::size_t i = n; i-- > 0;) {
      const RoView& t = chain[i];
      for (std::uint64_t j = 0; j < t.capacity; ++j) {
        const Cell c = read_cell(t.slot(j));
        const std::uint64_t s = c.state();
        if (s == kLive || s == kFrozen || s == kMoved) {
          keys.push_back(load_acquire(t.key(j)));
        } else if (s == kClaimed) {
          keys.push_back(c.value);  // a claimed bucket holds its key in the value word
        }
      }
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const std::uint64_t k : keys) {
      if (const auto v = ro_lookup(k)) copy.emplace_back(k, *v);
    }
  });
  for (const auto& [k, v] : copy) fn(ctx, k, v);
}

CheckReport MapImpl::check_read_only() const {
  CheckReport rep;
  std::size_t tables = 0;
  read_validated("check", [&] {
    RoView chain[kMaxChain];
    tables = ro_chain(chain);
  });
  rep.notes.push_back("header: magic, format version " + std::to_string(header().format_version) +
                      " and layout signature match this build");
  rep.notes.push_back("table chain: " + std::to_string(tables) +
                      (tables == 1 ? " table" : " tables") +
                      ", every header consistent and inside the segment");
  std::size_t live = 0;
  for_each_read_only([](void* c, std::uint64_t, std::uint64_t) { ++*static_cast<std::size_t*>(c); },
                     &live);
  rep.live_entries = live;
  rep.notes.push_back("entries counted by a read-only walk: " + std::to_string(live));
  rep.notes.push_back(
      "read-only attachment: bucket-level invariants (unique keys, reachability from the home "
      "bucket, the retired-table stack) are verified only by a read-write check");
  note_size_counter(&rep, live);
  return rep;
}

}  // namespace shmap::detail
