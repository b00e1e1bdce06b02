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
// What makes the outcome still right: reading such memory is harmless (the segment never
// shrinks, and every table offset and header is validated against the mapping before it is
// used, so a read sees zeros or another table's bytes, never an unmapped page), and whatever
// was read is kept only if no table was retired while the read ran:
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
// What a read-only attachment never does: write shared memory. Writes are refused in Map
// (permission_denied) before they touch anything; reclaim() returns at once for a Map without
// an owner word; lane_group() gives it no extra slot; for_each does not help a migration
// (read-write walks finish one first) but looks every key up instead; check, stats, readers
// and size only load.
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
      fail(Errc::timeout, name_,
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

std::optional<std::uint64_t> MapImpl::find_read_only(std::uint64_t k) const {
  std::optional<std::uint64_t> out;
  auto read = [&] { out = find(k); };
  read_validated(
      "lookup", [](void* c) { (*static_cast<decltype(read)*>(c))(); }, &read);
  return out;
}

void MapImpl::for_each_read_only(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> copy;
  auto read = [&] {
    copy.clear();
    PinGuard pin(*this);  // a private lane: keeps the shared code paths as they are
    TableHeader* chain[kMaxChain];
    const std::size_t n = load_chain(table(top_table(false)), chain);
    auto collect = [](void* c, std::uint64_t k, std::uint64_t v) {
      static_cast<decltype(copy)*>(c)->emplace_back(k, v);
    };
    if (n == 1) return walk(chain[0], collect, &copy);  // no migration: each key once
    // A migration is under way and this attachment may not help it finish. Every key with a
    // bucket in any table of the chain is looked up (the lookup knows which table decides).
    // Oldest table first: a key only moves to newer tables, and a moved bucket keeps its key,
    // so a key present for the whole walk is collected from one table or another.
    std::vector<std::uint64_t> keys;
    for (std::size_t i = n; i-- > 0;) {
      const Bucket* b = buckets(chain[i]);
      for (std::uint64_t j = 0; j < chain[i]->capacity; ++j) {
        const Cell c = read_cell(b[j]);
        const std::uint64_t s = c.state();
        if (s == kLive || s == kFrozen || s == kMoved) {
          keys.push_back(load_acquire(b[j].key));
        } else if (s == kClaimed) {
          keys.push_back(c.value);  // a claimed bucket holds its key in the value word
        }
      }
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const std::uint64_t k : keys) {
      if (const auto v = find(k)) copy.emplace_back(k, *v);
    }
  };
  read_validated(
      "walk", [](void* c) { (*static_cast<decltype(read)*>(c))(); }, &read);
  for (const auto& [k, v] : copy) fn(ctx, k, v);
}

}  // namespace shmap::detail
