// shmap — one write that holds a value record: what the typed maps (typed_map.cpp) and the
// string maps (string_map.cpp) share. Internal to src/.
//
// A write runs inside MapImpl::mutate: its decide callback sees the current value word and
// returns the new one; the commit callback runs once the bucket CAS has landed. Every block a
// write holds enters and leaves its hands inside the write (pinned, writer-marked, past the
// gate), which is what lets RecordHeap::audit() call a block no list holds "leaked":
//   - allocated and filled in decide (once per write: a retried decide refills the same block,
//     which nobody else can see until the CAS publishes it; a retry that needs a block of
//     another class gives the first one back and takes another);
//   - given back in decide when the write decides to keep the current value;
//   - published by the CAS; the record it replaced (or erased) retired in commit.
// A write that throws between decide and the CAS (damage found, out of space) leaks its block
// rather than free it outside the write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "shmap/detail/entry_list.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"

namespace shmap::detail {

class RecordWrite {
 public:
  /// value_bytes: the size of every value of this map (values of up to 8 bytes live in the
  /// bucket's word); 0 for values of any size, always in records (word_for(value, bytes)).
  RecordWrite(const MapImpl& map, std::size_t value_bytes)
      : heap_(map), bytes_(value_bytes), inline_(value_bytes != 0 && value_bytes <= 8) {}

  /// The value word that stores `value` (filling this write's block).
  std::uint64_t word_for(const void* value) { return word_for(value, bytes_); }
  std::uint64_t word_for(const void* value, std::size_t bytes) {
    if (inline_) {
      std::uint64_t w = 0;
      std::memcpy(&w, value, bytes);
      return w;
    }
    const std::size_t cls = RecordHeap::class_for(bytes);
    if (block_ != 0 && block_cls_ != cls) give_back();
    if (block_ == 0) {
      block_ = heap_.allocate(cls);
      block_cls_ = cls;
    }
    heap_.fill(block_, cls, value, bytes);
    if (RecordHeap::after_fill_for_test != nullptr) RecordHeap::after_fill_for_test();
    return block_;
  }
  /// The value a word stores (pinned: a record is not reused while we are). Fixed sizes only.
  void read(std::uint64_t w, void* out) const {
    if (inline_) {
      std::memcpy(out, &w, bytes_);
    } else {
      std::memcpy(out, heap_.value(w, bytes_), bytes_);
    }
  }
  bool equals(std::uint64_t w, const void* value) const {
    if (inline_) {
      std::uint64_t x = 0;
      std::memcpy(&x, value, bytes_);
      return w == x;
    }
    return std::memcmp(heap_.value(w, bytes_), value, bytes_) == 0;
  }
  WriteIntent keep() {
    give_back();
    return {WriteIntent::keep, 0};
  }
  WriteIntent set(std::uint64_t w) { return {WriteIntent::set, w, extra_}; }
  /// A string map's write of an inline entry (entry_list.hpp): no block; one an earlier try
  /// took goes back (never published).
  WriteIntent set_inline(std::uint64_t w) {
    give_back();
    return {WriteIntent::set, w, extra_};
  }
  WriteIntent erase() {
    give_back();
    return {WriteIntent::erase, 0, extra_};
  }
  /// A string map's write: the entries it adds beyond its bucket's own (WriteIntent::extra;
  /// decide sets it on every try). The table counts them with the bucket's change, in the
  /// lane record its CAS is covered by, so a kill between the CAS and the count loses none.
  void set_extra(std::int64_t d) { extra_ = d; }
  void commit(std::optional<std::uint64_t> replaced);
  /// After the write, unpinned: a reclaim pass now and then, so that retired records return.
  void after();

  const RecordHeap& heap() const { return heap_; }
  bool committed() const { return committed_; }
  bool inline_value() const { return inline_; }
  bool holds_block() const { return block_ != 0; }

 private:
  void give_back() {
    if (block_ != 0) heap_.free_unpublished(block_);
    block_ = 0;
  }

  RecordHeap heap_;
  std::size_t bytes_;
  bool inline_;
  std::uint64_t block_ = 0;  // allocated here, not published yet
  std::size_t block_cls_ = 0;
  bool committed_ = false;
  std::int64_t extra_ = 0;
};

/// Runs a write: decide(RecordWrite&, current) -> intent, inside MapImpl::mutate. A full
/// segment is retried once after a reclaim pass. Returns the value word the write found.
template <class Decide>
std::optional<std::uint64_t> run_write(MapImpl& m, RecordWrite& w, std::uint64_t k, bool may_insert,
                                       Decide&& decide) {
  if (m.read_only()) [[unlikely]] {
    // Before anything is touched: the mapping is PROT_READ.
    fail(Errc::permission_denied, m.name(),
         "a write through a read-only attachment; open the map read-write (this needs write "
         "permission on /dev/shm/" +
             m.name() + ")");
  }
  struct Ctx {
    RecordWrite& w;
    Decide& d;
  } ctx{w, decide};
  auto once = [&] {
    return m.mutate_impl(
        k, may_insert,
        [](void* c, std::optional<std::uint64_t> cur) {
          auto& x = *static_cast<Ctx*>(c);
          return x.d(x.w, cur);
        },
        &ctx,
        [](void* c, std::optional<std::uint64_t> replaced) {
          static_cast<Ctx*>(c)->w.commit(replaced);
        });
  };
  std::optional<std::uint64_t> old;
  try {
    old = once();
  } catch (const Error& e) {
    // A full segment may have room waiting in retired records that no reader holds any more
    // (a write reclaims only when the retired bytes fill the reclaim budget, and frees a batch
    // one pass late): reclaim them all, unpinned, and try once more. (The failed write held no
    // block: allocation is what failed. A growth that failed after the write committed is not
    // retried: it happened.)
    if (e.code() != Errc::out_of_space || w.inline_value() || w.holds_block() || w.committed()) {
      throw;
    }
    w.heap().reclaim(true);
    old = once();
  }
  w.after();
  return old;
}

}  // namespace shmap::detail
