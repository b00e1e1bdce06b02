// shmap — the record heap (include/shmap/detail/records.hpp): immutable value records in the
// arena, lock-free allocation, epoch-based reuse.
//
// What can race, and why it stays right:
//   - Allocation pops a class's free stack: read the tagged head, read the top block's link,
//     CAS {top, tag} -> {link, tag + 1}. Another popper may have taken that block and written a
//     value over its link meanwhile; the tag changed with that pop, so our CAS fails and the
//     garbage link is never installed (ABA-free). The block is checked against its slab before
//     its link is read (check_block), so a damaged head never makes us read or write outside
//     a slab.
//   - A record is published by the bucket CAS of the write that filled it (cmpxchg16b is a full
//     barrier: the value's bytes are visible before the offset is). A reader copies the value
//     under its pin and never reads the record's header words, which are the only words that
//     retiring and freeing rewrite (links).
//   - Reuse: a write that unlinks a record (replace, erase) pushes it on the limbo stack, inside
//     the write. A reclaimer (under the reclaim lock) detaches the whole stack as the batch and
//     stamps it with E = global_epoch + 1 after advancing the epoch to E: every record of the
//     batch was unlinked before the detach, so a reader pinned at E or later (pinned after the
//     advance) cannot hold one. The batch is freed once oldest_pin() says every lane is at E or
//     later or quiescent -- the rule reclaim() applies to retired tables.
//   - When: a pass is due whenever the limbo head's tag crosses a multiple of the reclaim
//     budget (each push adds the block's weight, its bytes: retire()), so that the bytes held
//     retired stay bounded in every process at once; writes run those passes, and a full
//     segment and compact() run patient ones. A write's pass issues at most one membarrier
//     (oldest_pin()): it frees the previous batch and detaches the next, which then waits for
//     the following pass -- the limbo stack plus one batch, about two budgets, stay retired. A
//     reader pinned at the old batch's epoch just makes the pass return, and the next crossing
//     tries again: a stale or early scan only delays reuse, never allows it. The tag still
//     changes at every CAS on the head (ABA-free), by more than 1.
//   - Freeing a batch pops its blocks one at a time: the batch head moves past a block before
//     the block is pushed on its free stack, so a reclaimer killed in between leaks that block
//     (check() finds it) and never frees it twice.
//   - A writer killed between allocation and publication, or between its unlinking CAS and the
//     limbo push, leaks one block: never visible half-written (no bucket refers to it), found
//     by audit(). audit() runs under a point-in-time hold (no write is between allocation and
//     publication: allocation, freeing and retiring all happen inside a write, which the hold
//     waits for) and under the reclaim lock (no batch is half-freed), so a block that no bucket,
//     free stack, limbo stack or batch holds is leaked. It is retired, not freed: a reader
//     pinned before a killed writer's CAS may still be copying it.
#include "shmap/detail/records.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "shmap/detail/entry_list.hpp"
#include "shmap/string_map.hpp"

namespace shmap::detail {

namespace {

std::uint64_t load_word(const std::uint64_t& w) {
  // Shared memory another process writes: every read is an atomic load.
  return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_acquire);
}
void store_word(std::uint64_t& w, std::uint64_t v) {
  std::atomic_ref<std::uint64_t>(w).store(v, std::memory_order_release);
}
/// A consistent-enough read of a stack head: a torn pair only makes the following CAS fail.
StackHead read_head(const StackHead& h) { return {load_word(h.top), load_word(h.tag)}; }
constexpr bool classes_hold_whole_words() {
  for (const std::uint32_t b : kRecordClassBytes) {
    if (b % 16 != 0) return false;
  }
  return true;
}
static_assert(classes_hold_whole_words(), "fill() writes the value rounded up to 8 bytes");
static_assert(kRecordClassBytes[kRecordClasses - 1] - kRecordHeaderBytes - 16 ==
                  kMaxStringEntryBytes,
              "the largest string entry fills the largest class (entry list and entry headers: "
              "16 bytes)");
constexpr bool large(std::size_t cls) { return cls >= kSmallRecordClasses; }
constexpr std::uint64_t kMaxBlocks = std::uint64_t{1} << 42;  // bound for list walks

}  // namespace

std::size_t RecordHeap::class_for(std::size_t bytes) {
  for (std::size_t c = 0; c < kRecordClasses; ++c) {
    if (bytes + kRecordHeaderBytes <= kRecordClassBytes[c]) return c;
  }
  return SIZE_MAX;
}

const SlabHeader* RecordHeap::check_block(std::uint64_t off, std::size_t cls) const noexcept {
  const SegmentHeader& h = m_.header();
  const std::uint64_t limit =
      std::min({h.arena_top.load(std::memory_order_acquire),
                h.file_bytes.load(std::memory_order_acquire), m_.segment().reserved_bytes()});
  const std::uint64_t arena = m_.segment().arena_offset();
  if (off % 16 != 0 || off < arena + sizeof(SlabHeader) || off > limit - kRecordHeaderBytes) {
    return nullptr;
  }
  // ensure_mapped throws (corrupt) for an offset past the object (file_bytes and arena_top
  // damaged high): no block then. This function is noexcept.
  auto mapped = [&](std::uint64_t end) {
    try {
      m_.ensure_mapped(end);
      return true;
    } catch (...) {
      return false;
    }
  };
  if (!mapped(off + kRecordHeaderBytes)) return nullptr;
  const std::uint64_t slab = load_word(block(off)->slab);
  if (slab < arena || slab % kPage != 0 || slab > off - sizeof(SlabHeader)) return nullptr;
  // slab + its header <= off <= limit: mapped (checked above).
  const auto* s = m_.at<SlabHeader>(slab);
  const std::uint64_t extent = load_word(s->extent_bytes);
  const std::uint32_t c =
      std::atomic_ref<const std::uint32_t>(s->cls).load(std::memory_order_relaxed);
  const std::uint32_t bb =
      std::atomic_ref<const std::uint32_t>(s->block_bytes).load(std::memory_order_relaxed);
  if (load_word(s->magic) != kSlabMagic || !slab_shape_ok(c, extent) || extent > limit - slab ||
      bb != kRecordClassBytes[c] || (cls != SIZE_MAX && c != cls)) {
    return nullptr;
  }
  const std::uint64_t rel = off - slab - sizeof(SlabHeader);
  if (rel % bb != 0 || rel / bb >= slab_blocks(c, extent)) return nullptr;
  if (!mapped(slab + extent)) return nullptr;
  return s;
}

std::uint64_t RecordHeap::push_chain(StackHead& head, std::uint64_t first, RecordHeader* last,
                                     std::uint64_t step) {
  for (;;) {
    const StackHead h = read_head(head);
    store_word(last->word0, h.top);
    // cmpxchg16b: a full barrier, so the links are visible before the new head is.
    if (cas128(&head.top, h.top, h.tag, first, h.tag + step)) return h.tag + step;
  }
}

std::uint64_t RecordHeap::allocate(std::size_t cls) const {
  StackHead& head = m_.header().record_free[cls];
  for (;;) {
    const StackHead h = read_head(head);
    if (h.top == 0) return carve(cls);
    if (check_block(h.top, cls) == nullptr) {
      // Re-read: a head that changed meanwhile may have been a block popped and reused.
      if (load_word(head.tag) != h.tag) continue;
      fail(Errc::corrupt, m_.name(),
           "the free list of record class " + std::to_string(cls) +
               " is damaged; run 'shmap check " + m_.name() + "'");
    }
    const std::uint64_t next = load_word(block(h.top)->word0);
    if (!cas128(&head.top, h.top, h.tag, next, h.tag + 1)) continue;
    // The next allocation of this class will read and write the block below ours: fetch it
    // now, so that its cache miss overlaps the rest of this write instead of stalling the next
    // one (freed blocks are scattered, so a pop is otherwise a miss). Only inside the mapping
    // (a prefetch never faults, but the pointer must exist); `next` is validated when popped.
    if (next != 0 && next < m_.segment().mapped_bytes()) __builtin_prefetch(block(next), 1);
    if (large(cls)) {
      // Its pages past the first were given back when it was freed: reserve them again, so a
      // full /dev/shm is out_of_space here and never a SIGBUS in fill().
      const std::uint64_t slab = h.top - sizeof(SlabHeader);
      try {
        m_.segment().reserve_pages(slab + kPage, class_extent(cls) - kPage);
      } catch (...) {
        push_chain(head, h.top, block(h.top));  // back for when space returns
        throw;
      }
    }
    return h.top;
  }
}

void RecordHeap::give_back_pages(std::uint64_t blk, const SlabHeader* s) const noexcept {
  // A large block's pages past the slab's first (which holds the slab header and the block's
  // links) go back to the system while it is free: the whole extent's, which may be larger than
  // the class needs (a reused extent). Nobody reads them: no bucket refers to a free block, and
  // the leak sweep steps over a slab by its header. (s passed check_block: its extent lies in
  // the arena.)
  const std::uint32_t c =
      std::atomic_ref<const std::uint32_t>(s->cls).load(std::memory_order_relaxed);
  if (large(c))
    m_.segment().release_pages(blk - sizeof(SlabHeader) + kPage,
                               load_word(s->extent_bytes) - kPage);
}

std::uint64_t RecordHeap::carve(std::size_t cls) const {
  std::uint64_t got = 0;
  const std::uint64_t slab =
      m_.segment().allocate(class_extent(cls), &got);  // zeroed, page aligned
  SegmentHeader& h = m_.header();
  auto* s = m_.at<SlabHeader>(slab);
  const std::uint32_t bb = kRecordClassBytes[cls];
  const std::uint64_t n = slab_blocks(cls, got);
  // Atomic stores: the leak sweep (leaks.cpp) reads the first words of every arena extent, this
  // one too while we fill it, and judges it by its magic, which comes last.
  store_word(s->extent_bytes, got);
  std::atomic_ref<std::uint32_t>(s->cls).store(static_cast<std::uint32_t>(cls),
                                               std::memory_order_relaxed);
  std::atomic_ref<std::uint32_t>(s->block_bytes).store(bb, std::memory_order_relaxed);
  store_word(s->blocks, n);
  // Every block knows its slab before anyone can reach it; blocks 1..n-1 are linked in order
  // (block 0 is ours).
  const std::uint64_t first = slab + sizeof(SlabHeader);
  for (std::uint64_t i = 0; i < n; ++i) {
    RecordHeader* r = block(first + i * bb);
    store_word(r->slab, slab);
    store_word(r->word0, i + 1 < n && i != 0 ? first + (i + 1) * bb : 0);
  }
  // The magic last: a slab with it is complete (the leak sweep steps over it by its size).
  store_word(s->magic, kSlabMagic);
  // Into the directory, so that audit() can walk it (a process killed before this loses the
  // slab's 64 KiB, like any extent allocated and never used).
  for (;;) {
    std::uint64_t top = h.slab_head.load(std::memory_order_acquire);
    store_word(s->next, top);
    // Release: a walker that reads the new head sees the slab's header and link.
    if (h.slab_head.compare_exchange_weak(top, slab, std::memory_order_release,
                                          std::memory_order_relaxed)) {
      break;
    }
  }
  h.slabs.fetch_add(1, std::memory_order_relaxed);  // a bound for walks, not a count used else
  if (n > 1) {
    push_chain(h.record_free[cls], first + bb, block(first + (n - 1) * bb));
  }
  return first;
}

void RecordHeap::fill(std::uint64_t blk, std::size_t cls, const void* value,
                      std::size_t bytes) const {
  RecordHeader* r = block(blk);
  store_word(r->word0, bytes | std::uint64_t{cls} << 32);
  // Word by word, atomically (a plain mov each on x86): the leak sweep may be stepping page by
  // page through this slab, having read the arena before the slab's magic was set. Readers copy
  // the value plainly; the CAS that publishes the block orders this copy before theirs. The
  // block holds the value rounded up to 8 bytes (its size is a multiple of 16).
  auto* dst = reinterpret_cast<std::uint64_t*>(reinterpret_cast<char*>(r) + kRecordHeaderBytes);
  const auto* src = static_cast<const char*>(value);
  for (std::size_t i = 0; i < bytes; i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, src + i, std::min<std::size_t>(8, bytes - i));
    std::atomic_ref<std::uint64_t>(dst[i / 8]).store(w, std::memory_order_relaxed);
  }
}

const void* RecordHeap::value_or_null(std::uint64_t off, std::size_t bytes) const noexcept {
  // Bounds only: a damaged offset reads bytes of the arena, never outside the mapping (check()
  // finds the damage). The common case needs only this process's own mapping size: what is
  // mapped lies inside the object, which never shrinks.
  const std::uint64_t mapped = m_.segment().mapped_bytes();
  if (off % 16 == 0 && off >= m_.segment().arena_offset() && off <= mapped &&
      mapped - off >= kRecordHeaderBytes + bytes) [[likely]] {
    return m_.at<char>(off) + kRecordHeaderBytes;
  }
  const SegmentHeader& h = m_.header();
  const std::uint64_t limit =
      std::min({h.arena_top.load(std::memory_order_acquire),
                h.file_bytes.load(std::memory_order_acquire), m_.segment().reserved_bytes()});
  if (off % 16 != 0 || off < m_.segment().arena_offset() || off > limit ||
      limit - off < kRecordHeaderBytes + bytes) {
    return nullptr;
  }
  m_.ensure_mapped(off + kRecordHeaderBytes + bytes);
  return m_.at<char>(off) + kRecordHeaderBytes;
}

const void* RecordHeap::value(std::uint64_t off, std::size_t bytes) const {
  if (const void* p = value_or_null(off, bytes)) return p;
  fail(Errc::corrupt, m_.name(),
       "a bucket refers to a value record at " + std::to_string(off) +
           ", outside the arena; the segment is damaged: run 'shmap check " + m_.name() + "'");
}

void RecordHeap::free_unpublished(std::uint64_t blk) const {
  const SlabHeader* s = check_block(blk, SIZE_MAX);
  if (s == nullptr) return;  // cannot happen for a block allocate() handed out; leak it
  give_back_pages(blk, s);
  push_chain(m_.header().record_free[s->cls], blk, block(blk));
}

std::uint64_t RecordHeap::reclaim_budget_units(const SegmentHeader& h) noexcept {
  // max_bytes is immutable after init: every process computes the same budget.
  const std::uint64_t bytes = std::clamp<std::uint64_t>(h.max_bytes / kReclaimBudgetShare,
                                                        kRecordClassBytes[0], kReclaimBudgetBytes);
  return bytes / kRetireUnit;
}

std::uint64_t RecordHeap::retire_weight(std::uint32_t block_bytes, std::uint64_t budget) noexcept {
  return std::max<std::uint64_t>(block_bytes / kRetireUnit, budget / kReclaimMaxRecords);
}

bool RecordHeap::retire(std::uint64_t off) const noexcept {
  const SlabHeader* s = check_block(off, SIZE_MAX);
  if (s == nullptr) return false;
  RecordHeader* r = block(off);
  // The limbo head's tag, which must change at every CAS on it (ABA), counts the bytes retired
  // since the segment was made (each push adds its weight, each detach 1): a reclaim pass is
  // due whenever it crosses a multiple of the budget. One counter for every process, and no
  // word of the layout spent on it.
  const std::uint64_t budget = reclaim_budget_units(m_.header());
  const std::uint64_t w = retire_weight(
      std::atomic_ref<const std::uint32_t>(s->block_bytes).load(std::memory_order_relaxed), budget);
  const std::uint64_t tag = push_chain(m_.header().limbo, off, r, w);
  return tag / budget != (tag - w) / budget;
}

bool RecordHeap::reclaim(bool patient) const noexcept {
  SegmentHeader& h = m_.header();
  if (load_word(h.limbo.top) == 0 && h.limbo_batch.load(std::memory_order_acquire) == 0) {
    return true;
  }
  struct Ctx {
    const RecordHeap* heap;
    SegmentHeader* h;
    bool patient;
  } ctx{this, &h, patient};
  try {
    return m_.with_reclaim_lock(
        patient, std::chrono::milliseconds(patient ? MapImpl::kReclaimLockWaitMs : 0),
        [](void* c) {
          const RecordHeap& heap = *static_cast<Ctx*>(c)->heap;
          SegmentHeader& h = *static_cast<Ctx*>(c)->h;
          const bool patient = static_cast<Ctx*>(c)->patient;
          bool scanned = false;
          for (int round = 0; round < 2; ++round) {
            std::uint64_t batch = h.limbo_batch.load(std::memory_order_acquire);
            if (batch != 0) {
              // A pass run by a write scans the pins once (one membarrier, which interrupts
              // every CPU running an attached process): a batch it detached after freeing the
              // previous one waits for the next pass. compact() and a full segment free both.
              if (scanned && !patient) return;
              scanned = true;
              const std::uint64_t e = h.limbo_batch_epoch.load(std::memory_order_acquire);
              const std::optional<std::uint64_t> oldest =
                  heap.m_.oldest_pin(h.global_epoch.load(std::memory_order_seq_cst));
              if (!oldest || *oldest < e) return;  // readers may still hold some: next time
              // Pop one block at a time: the head moves past it before it is freed.
              for (std::uint64_t n = 0; batch != 0 && n < kMaxBlocks; ++n) {
                const SlabHeader* s = heap.check_block(batch, SIZE_MAX);
                if (s == nullptr) {  // damaged: drop the rest (check() reports them leaked)
                  h.limbo_batch.store(0, std::memory_order_release);
                  break;
                }
                RecordHeader* r = heap.block(batch);
                const std::uint64_t next = load_word(r->word0);
                h.limbo_batch.store(next, std::memory_order_release);
                if (in_batch_free_for_test != nullptr) in_batch_free_for_test();
                heap.give_back_pages(batch, s);
                push_chain(h.record_free[s->cls], batch, r);
                batch = next;
              }
            }
            // Detach the limbo stack as the next batch, and stamp it after advancing the epoch.
            StackHead top;
            do {
              top = read_head(h.limbo);
              if (top.top == 0) return;
            } while (!cas128(&h.limbo.top, top.top, top.tag, 0, top.tag + 1));
            const std::uint64_t e = h.global_epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
            h.limbo_batch_epoch.store(e, std::memory_order_relaxed);
            h.limbo_batch.store(top.top, std::memory_order_release);  // publishes the epoch
            // Round 2 frees it at once if no reader is pinned from before (and the pass has
            // not scanned yet, or is patient).
          }
        },
        &ctx);
  } catch (...) {
    // From reclaim, never throws: a failure (a damaged journal) is left for check().
    return true;  // the pass ran (a retry would meet the same damage)
  }
}

RecordHeap::Audit RecordHeap::audit(bool recover, bool inline_entries) const {
  Audit out;
  struct Ctx {
    const RecordHeap* heap;
    Audit* out;
    bool recover;
    bool inline_entries;
  } ctx{this, &out, recover, inline_entries};
  // The reclaim lock first, the hold on writers second: waiting for the lock must not eat the
  // hold's lease (nothing waits for the reclaim lock inside a write, so this order cannot
  // deadlock with a writer the hold waits for).
  const bool locked = m_.with_reclaim_lock(
      true, std::chrono::milliseconds(1000),
      [](void* c) {
        auto& x = *static_cast<Ctx*>(c);
        const RecordHeap& heap = *x.heap;
        const MapImpl& m = heap.m_;
        SegmentHeader& h = m.header();
        Audit& a = *x.out;
        try {
          // The lease covers the walk of the slabs too (the audit reads every block's state).
          m.hold_writers(h.slabs.load(std::memory_order_acquire) * kSlabBytes);
        } catch (const Error& e) {
          if (e.code() == Errc::timeout) return;  // a writer stopped inside a write: not now
          throw;
        }
        struct Release {
          const MapImpl& m;
          Audit& a;
          ~Release() {
            // A hold broken during the walk (its holder stopped past the lease) means writers
            // ran under it: nothing the walk saw can be trusted, damage included.
            if (!m.release_writers()) a = Audit{};
          }
        } release{m, a};
        // The slabs, from the directory.
        struct SlabState {
          std::uint64_t off;
          std::uint64_t extent;
          std::uint32_t block_bytes;
          std::uint64_t blocks;
          std::vector<std::uint8_t> state;  // 0 unknown, 1 live, 2 free, 3 retired
        };
        std::vector<SlabState> slabs;
        const std::uint64_t bound = h.slabs.load(std::memory_order_acquire) + 1;
        for (std::uint64_t s = h.slab_head.load(std::memory_order_acquire); s != 0;) {
          if (slabs.size() > bound) {
            a.problem = "the slab directory is longer than the slab count (a cycle: damaged)";
            return;
          }
          const SlabHeader* sh = heap.check_block(s + sizeof(SlabHeader), SIZE_MAX);
          if (sh == nullptr || m.offset_of(sh) != s) {
            a.problem = "the slab directory names a damaged slab at " + std::to_string(s);
            return;
          }
          const std::uint64_t bb = sh->block_bytes;
          const std::uint64_t extent = load_word(sh->extent_bytes);
          const std::uint64_t n = slab_blocks(sh->cls, extent);
          slabs.push_back(
              {s, extent, static_cast<std::uint32_t>(bb), n, std::vector<std::uint8_t>(n)});
          s = load_word(sh->next);
        }
        std::sort(slabs.begin(), slabs.end(),
                  [](const SlabState& l, const SlabState& r) { return l.off < r.off; });
        // Slabs never overlap (nor repeat): a damaged extent that reaches into the next slab
        // would make that slab's blocks look unaccounted for under this one.
        for (std::size_t i = 1; i < slabs.size(); ++i) {
          if (slabs[i - 1].off + slabs[i - 1].extent > slabs[i].off) {
            a.problem = "the slabs at " + std::to_string(slabs[i - 1].off) + " and " +
                        std::to_string(slabs[i].off) + " overlap (a damaged slab header)";
            return;
          }
        }
        a.stats.slabs = slabs.size();
        // Marks a block; false if it is no block of a slab, or was marked already.
        auto mark = [&](std::uint64_t off, std::uint8_t st) {
          auto it = std::upper_bound(slabs.begin(), slabs.end(), off,
                                     [](std::uint64_t o, const SlabState& s) { return o < s.off; });
          if (it == slabs.begin()) return false;
          --it;
          if (off < it->off + sizeof(SlabHeader)) return false;
          const std::uint64_t rel = off - it->off - sizeof(SlabHeader);
          if (rel % it->block_bytes != 0 || rel / it->block_bytes >= it->blocks) return false;
          std::uint8_t& cell = it->state[rel / it->block_bytes];
          if (cell != 0) return false;
          cell = st;
          return true;
        };
        // Buckets: every table of the chain, oldest first. (A migration copies a bucket into
        // the newer table before it marks the older one MOVED: read in this order, a record
        // being moved is seen in one of the two.) Writers are held and the reclaim lock is
        // ours: no table is freed under the walk.
        TableHeader* top = m.top_header(false);
        TableHeader* chain[kMaxChain];
        const std::size_t len = m.load_chain(top, chain);
        if (audit_walk_for_test != nullptr) audit_walk_for_test();
        std::size_t bad_refs = 0;
        std::size_t shared = 0;
        std::vector<std::uint64_t> refs;
        for (std::size_t i = len; i-- > 0;) {
          TableHeader* t = chain[i];
          refs.clear();
          for (std::uint64_t b = 0; b < t->capacity; ++b) {
            const Cell cell = read_cell(*m.bucket(t, b).slot);
            if (cell.state() != kLive && cell.state() != kFrozen) continue;
            if (x.inline_entries && InlineEntry::is_inline(cell.value)) {
              // No record (a bucket mid-migration counts twice); a word that does not decode
              // under its key's word (a long key's, a bad length or reserved bit) is damage.
              InlineEntry::Payload p;
              if (InlineEntry::decode(load_word(*m.bucket(t, b).key), cell.value, p)) {
                ++a.stats.inline_entries;
              } else {
                ++bad_refs;
              }
              continue;
            }
            refs.push_back(cell.value);
            if (mark(cell.value, 1)) {
              ++a.stats.live;
            } else if (heap.check_block(cell.value, SIZE_MAX) == nullptr) {
              ++bad_refs;  // (a record seen in two tables, mid-migration, marks once)
            }
          }
          // Within one table, two buckets never share a record (each write has its own).
          std::sort(refs.begin(), refs.end());
          for (std::size_t j = 1; j < refs.size(); ++j) shared += refs[j] == refs[j - 1];
        }
        if (bad_refs != 0 || shared != 0) {
          a.problem = std::to_string(bad_refs) +
                      " buckets refer to no record block (or hold a damaged short entry) and " +
                      std::to_string(shared) + " share a record with another (damaged)";
          return;
        }
        auto walk = [&](std::uint64_t off, std::uint8_t st, std::size_t* count) {
          for (std::uint64_t n = 0; off != 0; ++n) {
            if (n > kMaxBlocks || !mark(off, st)) return false;
            ++*count;
            off = load_word(heap.block(off)->word0);
          }
          return true;
        };
        for (std::size_t c = 0; c < kRecordClasses; ++c) {
          if (!walk(load_word(h.record_free[c].top), 2, &a.stats.free)) {
            a.problem = "the free list of record class " + std::to_string(c) + " is damaged";
            return;
          }
        }
        if (!walk(load_word(h.limbo.top), 3, &a.stats.retired) ||
            !walk(h.limbo_batch.load(std::memory_order_acquire), 3, &a.stats.retired)) {
          a.problem = "the list of retired records is damaged";
          return;
        }
        // The hold stops writers, not migration: a compact() or a for_each in another process
        // finishes a migration (and a copy that finds its target full links a successor) while
        // we walk. Copies within the chain we loaded are seen (oldest table walked first, a
        // bucket copied up before it is marked MOVED), but a table linked after we loaded the
        // chain may have taken records out of the tables we walked: they would look
        // unaccounted for here, and retiring them would hand live records out again. So the
        // walk counts only if no table was linked since (a new one becomes the top; none is
        // freed under us: the reclaim lock is ours).
        if (m.top_header(false) != top || top->newer.load(std::memory_order_acquire) != 0) {
          a = Audit{};
          return;
        }
        std::vector<std::uint64_t> leaked;
        for (const SlabState& s : slabs) {
          for (std::uint64_t i = 0; i < s.blocks; ++i) {
            if (s.state[i] == 0) leaked.push_back(s.off + sizeof(SlabHeader) + i * s.block_bytes);
          }
        }
        // Only if no writer ran during the walk: a holder stopped past its lease (SIGSTOP, a
        // debugger, a starved CPU) has had its hold broken by the writers, which then
        // allocated and published blocks this walk may have seen as unaccounted. Retiring
        // those would hand a live record out again. The hold still ours now means it was ours
        // throughout (only its owner sets it again), and blocks unaccounted then stay so: a
        // writer that starts now allocates from the free lists, where they are not.
        if (!m.still_holding_writers()) {
          a = Audit{};
          return;
        }
        a.stats.leaked = leaked.size();
        if (x.recover) {
          for (const std::uint64_t off : leaked) heap.retire(off);
        }
        a.done = true;
      },
      &ctx);
  if (!locked) out = Audit{};
  return out;
}

}  // namespace shmap::detail
