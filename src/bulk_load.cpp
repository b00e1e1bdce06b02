// shmap — bulk loads (the BulkLoad type, detail/bulk_load.hpp): a table built by one thread
// where nobody else can see it, then made the map's whole content in one atomic step.
//
// What can race, and why the result is still right:
// - The fill: the table is not linked anywhere, so plain stores will do; the seq_cst CAS that
//   links it publishes them. A loader that dies before the link leaves a table never linked
//   whose creator is gone: the leak sweep retires it (leaks.cpp).
// - The replacement is a write: it waits at the writer gate (a point-in-time dump must not see
//   half of it), and links the built table as the current table's successor, one that
//   *discards* its older table's entries instead of copying them (discard_older). Writers still
//   in the old table are sealed out by its migration and retry in the new one; lookups stop at
//   a table that discards its older one (map_ops.cpp). If the current table gets another
//   successor first, that migration finishes and the replacement tries again.
// - The count: the new entries are added to the size once the table is linked, by whoever
//   first helps its migration (help_bulk, recorded like a write), so a loader killed right
//   after the link loses no count; the old entries leave the size one by one as the discard
//   moves them (copy_frozen). Meanwhile the size reads high, never low.
#include "shmap/detail/bulk_load.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <exception>
#include <thread>
#include <utility>

#include "shmap/detail/map_impl.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it and we fault lazily
#endif

namespace shmap::detail {

std::uint64_t BulkLoad::build_table(std::size_t entries) const {
  const std::uint64_t off = m_.create_table(
      next_capacity(std::max<std::uint64_t>(m_.header().initial_capacity, entries * 2 + 2)), 0);
  // Fault the pages in with one call instead of one fault per page during the fill. Most of
  // a big load is the kernel allocating and zeroing these pages: large tables are populated
  // by two threads, one half each (the fill has nothing to do until the pages exist).
  char* const start = m_.at<char>(off);
  const std::size_t bytes = m_.at<TableHeader>(off)->extent_bytes;
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

void BulkLoad::bulk_put(std::uint64_t table_off, std::uint64_t k, std::uint64_t v) const {
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

void BulkLoad::bulk_put_many(std::uint64_t table_off,
                             const std::pair<std::uint64_t, std::uint64_t>* kv,
                             std::size_t n) const {
  TableHeader* t = m_.table(table_off);
  char* const buckets = reinterpret_cast<char*>(t) + kTableHeaderBytes;
  std::uint8_t* fps = m_.fingerprints(t);
  const std::uint64_t cap = t->capacity;
  constexpr std::size_t kAhead = 64;
  std::uint64_t hashes[kAhead];
  for (std::size_t base = 0; base < n; base += kAhead) {
    const std::size_t m = std::min(kAhead, n - base);
    for (std::size_t j = 0; j < m; ++j) {
      hashes[j] = hash_key(kv[base + j].first, m_.seed());
      __builtin_prefetch(buckets + slot_offset(home_of(hashes[j], cap)), 1);
      __builtin_prefetch(&fps[home_of(hashes[j], cap)], 1);
    }
    for (std::size_t j = 0; j < m; ++j) {
      if (!put_private(t, buckets, fps, hashes[j], kv[base + j].first, kv[base + j].second)) {
        fail(Errc::invalid_argument, m_.name(),
             "bulk load: more entries than the table was built for");
      }
    }
  }
}

void BulkLoad::publish_replace(std::uint64_t built_off) const {
  SegmentHeader& h = m_.header();
  TableHeader* built = m_.table(built_off);
  const std::uint64_t count = m_.used_buckets(built);  // every claimed bucket is LIVE
  built->discard_older = 1;
  for (;;) {
    m_.finish_migration();
    PinGuard pin(m_);
    m_.mark_writer();
    m_.wait_for_gate();  // a replacement is a write: a point-in-time dump must not see half of it
    const std::uint64_t cur_off = m_.top_table(true);
    TableHeader* cur = m_.table(cur_off);
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
  m_.finish_migration();
}

}  // namespace shmap::detail
