// shmap — finding tables that nothing will ever free, and giving them back.
//
// A table's extent is freed only by reclamation, and only once it is on the retired stack.
// Three windows leave one off the stack for good if the process in them dies:
//   - migration completion: `newer->older` CAS'd to 0 (the unlink), then retire() pushes
//     the older table (help_migrate's `complete`);
//   - a resizer between create_table() and linking its successor (maybe_resize, grow_stuck);
//   - a bulk loader between build_table() and publish_replace().
// Making each of them a single step would need a multi-word atomic; instead the arena is
// self-describing and a sweep finds what fell out. Every allocated extent starts with a
// table header whose shape validates (table_shape_ok: capacity and bits, extent size); freed
// extents are hole-punched (zeros) and listed on the free list, or lost ranges (zeros). So
// walking the arena from arena_offset to arena_top, extent by extent, meets every table.
// (Slabs of value records, records.hpp, are the other kind of extent: their header can never
// validate as a table's, and the walk steps over them by their size. A slab whose magic is not
// written yet holds no user bytes: blocks are handed out only after it.)
//
// A table is accounted for if it is in the chain (current_table, the successors linked past
// it, and the older tables below), on the retired stack, or on the free list. One that is not,
// and that
//   - has a successor link (`newer` != 0): it was linked once and has been unlinked since, or
//   - was made by a Map that no longer owns a slot (creator word, TableHeader::bulk.key):
//     nobody can link it any more,
// is a suspect. What can race, and why a suspect is still not called leaked too early:
//   - A completer between its unlink and its push is pinned through both. The sweep therefore
//     advances the global epoch to E after its first walk and waits until no live lane is
//     pinned below E (oldest_pin(), the reclaimer's own scan): every operation that was in
//     flight at the first walk has ended. A second walk then must find the same table (same
//     offset and created epoch) unaccounted again. A completer that finished pushed it
//     (accounted); one that died left it off the stack (leaked).
//   - Frees run only under the reclaim lock, which the sweep holds (it finishes a dead
//     holder's journal first), so a table on the stack cannot vanish and reappear between the
//     walks. Creators free their own unpublished tables without the lock: such a table's
//     creator is alive, so it is no suspect; once freed its range reads zeros or another
//     table (another created epoch).
//   - Each walk reads the arena first and the chain and the stack after. A suspect's reason
//     (`newer` set, creator gone) is seen before the chain is read, so the table was linked
//     (if ever) before that read: a chain read that misses it follows an unlink whose
//     completer is pinned until its push, and the grace period after the first walk waits for
//     it. (Chain first, arena after was wrong: a table linked after the chain read and given
//     a successor before the arena read was a suspect no completer explained, and a completer
//     that pinned after the grace epoch could hide it from the second walk as well -- compact()
//     then retired a table in use, which its completer pushed again.
//     Protocol.TableLinkedDuringTheFirstWalkAndUnlinkedDuringTheSecondIsNoLeak.)
//   - The walk reads headers of extents that may be freed or reused under it: relaxed loads
//     of mapped memory, each header validated before its size is trusted; a bucket page can
//     never pass as a header (a non-EMPTY bucket's meta is >= 2^24, not a valid `bits`).
// A stopped process pinned inside an operation makes the grace period wait: after kGrace the
// sweep gives up without deciding (check says so; compact retries next time). A leaked table
// is retired, not freed: ordinary reclamation frees it, so even a wrong suspect (none is
// known) would only be freed after every reader that could see it is gone.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {

namespace {

constexpr std::chrono::milliseconds kGrace{1000};

std::uint64_t field(const std::uint64_t& w) {
  // A header that may be freed or reused under us: atomic, racy by design.
  return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_relaxed);
}

}  // namespace

std::vector<MapImpl::TableId> MapImpl::unaccounted_tables() const {
  SegmentHeader& h = header();
  // The arena first, the lists that account for tables after: a suspect's reason (a successor
  // link, or a creator gone) is seen before the chain is read, so whatever linked the suspect
  // into the chain did so before that read. If the chain read misses it anyway, an unlink came
  // in between and its completer (pinned until it retires the table) is waited for by the
  // grace period. (Read the other way round, a table linked *after* the chain read and given a
  // successor before the arena read was a suspect the grace period explained nothing about:
  // a completer starting after the grace period's epoch could hide it from the second walk
  // too, and compact() retired a table in use -- pushed twice, freed while on the stack.)
  std::vector<TableId> suspects;
  {
    // Free extents are skipped whole (their pages are holes anyway): by offset -> bytes.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> free = seg_.free_extents();
    std::sort(free.begin(), free.end());
    const std::uint64_t arena_top = h.arena_top.load(std::memory_order_acquire);
    // A top past the object is damage (check() reports it): judge nothing.
    struct stat st {};
    if (::fstat(seg_.fd(), &st) != 0 || arena_top > static_cast<std::uint64_t>(st.st_size) ||
        arena_top > seg_.reserved_bytes()) {
      return {};
    }
    std::uint64_t x = seg_.arena_offset();
    while (x < arena_top) {
      const auto k =
          std::lower_bound(free.begin(), free.end(), std::pair<std::uint64_t, std::uint64_t>{x, 0});
      if (k != free.end() && k->first == x && k->second % kPage == 0 && k->second != 0) {
        x += k->second;
        continue;
      }
      const TableHeader* s = table_or_null(x);  // shape validated, extent inside the object
      if (s == nullptr && x + kPage <= arena_top) {
        // A slab of value records (records.hpp): complete once its magic is set; step over it
        // whole (its blocks hold user bytes, which must never be read as a table header).
        ensure_mapped(x + kPage);
        const auto* slab = at<SlabHeader>(x);
        // The magic first (acquire): carve() stores it after the size and class.
        const bool magic =
            std::atomic_ref<const std::uint64_t>(slab->magic).load(std::memory_order_acquire) ==
            kSlabMagic;
        const std::uint64_t bytes = field(slab->extent_bytes);
        const std::uint32_t cls =
            std::atomic_ref<const std::uint32_t>(slab->cls).load(std::memory_order_relaxed);
        if (magic && slab_shape_ok(cls, bytes) && bytes <= arena_top - x) {
          x += bytes;
          continue;
        }
      }
      if (s == nullptr) {
        // A lost free range (a hole), or an extent being set up: on to the next page that
        // holds data (holes are skipped whole, so a walk over freed space costs nothing).
        const off_t next = ::lseek(seg_.fd(), static_cast<off_t>(x + kPage), SEEK_DATA);
        x = next < 0 ? arena_top  // ENXIO: no data up to the end of the object
                     : std::max(x + kPage, static_cast<std::uint64_t>(next) / kPage * kPage);
        continue;
      }
      const std::uint64_t bytes = field(s->extent_bytes);
      const std::uint64_t creator = field(s->bulk.key);
      if (s->newer.load(std::memory_order_acquire) != 0 ||
          (creator != 0 && !gate_owner_alive(creator))) {
        suspects.push_back({x, field(s->created_epoch), bytes});
      }
      x += std::max<std::uint64_t>(bytes, kPage);
    }
  }
  if (sweep_mid_walk_for_test != nullptr) sweep_mid_walk_for_test();
  if (suspects.empty()) return {};

  // Tables accounted for, by offset.
  std::vector<std::uint64_t> known;
  // The chain: current_table, successors linked past it, then every older table below.
  const TableHeader* top = table_or_null(h.current_table.load(std::memory_order_seq_cst));
  if (top == nullptr) return {};  // damaged: check() reports it, nothing is judged
  known.push_back(offset_of(top));
  for (std::size_t i = 0; i < kMaxChain; ++i) {
    const TableHeader* n = table_or_null(top->newer.load(std::memory_order_acquire));
    if (n == nullptr) break;
    known.push_back(offset_of(n));
    top = n;
  }
  const TableHeader* t = top;
  for (std::size_t i = 0; i < 2 * kMaxChain; ++i) {
    t = table_or_null(t->older.load(std::memory_order_acquire));
    if (t == nullptr) break;
    known.push_back(offset_of(t));
  }
  // The retired stack (bounded: a damaged one may be a cycle). A stack not walked to its end
  // (a bad link, or longer than the bound) hides what it holds: judge nothing then.
  std::size_t n = 0;
  std::uint64_t off = h.retired_head.load(std::memory_order_acquire);
  for (; off != 0 && n < kMaxRetiredWalk; ++n) {
    const TableHeader* r = table_or_null(off);
    if (r == nullptr) return {};
    known.push_back(off);
    off = std::atomic_ref<const std::uint64_t>(r->retired_next).load(std::memory_order_acquire);
  }
  if (off != 0) return {};
  std::sort(known.begin(), known.end());
  std::vector<TableId> out;
  for (const TableId& id : suspects) {
    if (!std::binary_search(known.begin(), known.end(), id.offset)) out.push_back(id);
  }
  return out;
}

MapImpl::LeakScan MapImpl::sweep_leaks(bool recover) const {
  LeakScan scan;
  SegmentHeader& h = header();
  // Under this Map's reclaim mutex and the segment's reclaim lock (a dead holder's journal
  // finished first), as a reclaimer: nothing is freed or retired by others meanwhile.
  auto sweep = [&] {
    std::vector<TableId> first = unaccounted_tables();
    if (first.empty()) {
      scan.done = true;
      return;
    }
    // Grace period: every operation pinned before this epoch ends (or its process is found
    // dead and its slot freed) before the second walk.
    const std::uint64_t e = h.global_epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
    if (sweep_grace_for_test != nullptr) sweep_grace_for_test();
    const auto give_up = std::chrono::steady_clock::now() + kGrace;
    for (;;) {
      const std::optional<std::uint64_t> oldest = oldest_pin(e);
      if (!oldest) return;
      if (*oldest >= e) break;
      if (std::chrono::steady_clock::now() >= give_up) return;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    const std::vector<TableId> second = unaccounted_tables();
    for (const TableId& id : first) {
      if (std::find(second.begin(), second.end(), id) == second.end()) continue;
      ++scan.tables;
      scan.bytes += id.bytes;
      if (recover) retire(id.offset);
    }
    scan.done = true;
  };
  using Sweep = decltype(sweep);
  handles_.with_reclaim_lock(
      true, kGrace, [](void* f) { (*static_cast<Sweep*>(f))(); }, &sweep);
  return scan;
}

}  // namespace shmap::detail
