// shmap — the record heap: immutable blocks in the segment's arena for values that do not fit
// in a bucket (src/records.cpp has the race essay).
//
// A record is written once by the writer that allocated it, then published by the one CAS
// that puts its offset in a bucket, and never changed after. A write that replaces or erases
// it retires it to the limbo stack, stamped with the global epoch; reclaim() gives it back to
// its class's free stack once no pinned reader can still hold it (the tables' epoch rule).
//
// Layout (layout.hpp): slabs from the extent allocator, each carved into blocks of one class
// (a large class: one block to a slab, its pages given back to the system while it is free); per
// class a free stack, and one limbo stack, all Treiber stacks with tagged heads in the segment
// header; a slab directory (push-only list) so that check() can walk every block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "shmap/detail/map_impl.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::detail {

class RecordHeap {
 public:
  explicit RecordHeap(const MapImpl& m) : m_(m) {}

  /// The class whose blocks hold a record of `bytes` value bytes; SIZE_MAX if none does.
  static std::size_t class_for(std::size_t bytes);

  /// A block of class cls, popped from its free stack (or carved from a new slab). Call inside
  /// a write (pinned, writer-marked, past the gate): a point-in-time hold must be able to wait
  /// for every block between allocation and publication. Throws out_of_space, corrupt.
  std::uint64_t allocate(std::size_t cls) const;
  /// Writes the record header and the value into a block this thread allocated.
  void fill(std::uint64_t block, std::size_t cls, const void* value, std::size_t bytes) const;
  /// The value of the published record at `off`, after checking that it lies in the arena and
  /// in this process's mapping (bounds only: readers pay a few loads of lines they have).
  /// Call pinned. Throws corrupt.
  const void* value(std::uint64_t off, std::size_t bytes) const;
  /// value() without the throw: nullptr where value() would throw.
  const void* value_or_null(std::uint64_t off, std::size_t bytes) const noexcept;
  /// Gives back a block that was never published (inside the write that allocated it).
  void free_unpublished(std::uint64_t block) const;
  /// Retires a published record that a write has just unlinked (inside that write). Never
  /// throws: a record that fails its checks is left alone (check() reports it as leaked).
  /// Returns true if this retirement filled the segment's reclaim budget (counted by the limbo
  /// stack's tag, for every process at once): the caller then runs a reclaim pass, so that
  /// records come back however few each writer retires. A pass is due every
  /// reclaim_budget_units() of weight: a block weighs its bytes, and at least a
  /// kReclaimMaxRecords-th of the budget, so that a pass frees at most that many blocks.
  bool retire(std::uint64_t off) const noexcept;
  /// Moves retired records that no pinned reader can see to their free stacks. patient: wait
  /// for the reclaim lock, and scan the pins twice if need be (the previous batch, then the
  /// one just detached: everything reclaimable now is freed); else give up at once if someone
  /// holds the lock, and scan at most once (one membarrier: the batch detached after freeing
  /// the previous one waits for the next pass). Returns false if the lock was busy (or this
  /// Map has no slot): nothing was done. Call unpinned.
  bool reclaim(bool patient) const noexcept;

  /// The reclaim budget: retired bytes between two passes run by writes, while the pins allow
  /// each pass to free the batch before. A sixteenth of the segment's max_bytes, at most
  /// 4 MiB: the limbo stack and one batch hold at most about twice that (plus the record that
  /// crossed the line, and whatever a reader pinned for long keeps). In kRetireUnit units.
  static constexpr std::uint64_t kRetireUnit = 16;
  static constexpr std::uint64_t kReclaimBudgetBytes = std::uint64_t{4} << 20;
  static constexpr std::uint64_t kReclaimBudgetShare = 16;
  static constexpr std::uint64_t kReclaimMaxRecords = 4096;
  static std::uint64_t reclaim_budget_units(const SegmentHeader& h) noexcept;
  /// What retiring a block of block_bytes adds to the limbo tag, against a budget of `budget`.
  static std::uint64_t retire_weight(std::uint32_t block_bytes, std::uint64_t budget) noexcept;

  const MapImpl& map() const { return m_; }

  struct Audit {
    RecordStats stats;
    bool done = false;    // false: not audited (the reclaim lock was busy)
    std::string problem;  // damage found (then nothing was recovered)
  };
  /// Accounts for every block of every slab: referenced by a bucket of the table chain, free,
  /// retired, or leaked. With recover, retires the leaked ones (a killed writer's). Holds
  /// writers back for its walk (a point-in-time hold). Call unpinned. inline_entries: a
  /// string map's, whose odd value words are inline entries, no records (entry_list.hpp).
  Audit audit(bool recover, bool inline_entries) const;

  /// Test hooks (a child process sets one and dies in it): after a write filled its block and
  /// before its CAS; after a write's CAS and before it retires the record it replaced; while
  /// a batch is freed, after the batch head moved past a block and before the block is freed.
  static inline void (*after_fill_for_test)() = nullptr;
  static inline void (*before_retire_for_test)() = nullptr;
  static inline void (*in_batch_free_for_test)() = nullptr;
  /// Called by audit() once it has loaded the table chain, before it walks the tables.
  static inline void (*audit_walk_for_test)() = nullptr;

 private:
  /// The slab of the block at `off`, if `off` is a block of a slab of class cls (any class if
  /// cls == SIZE_MAX) inside this process's mapping; nullptr otherwise.
  const SlabHeader* check_block(std::uint64_t off, std::size_t cls) const noexcept;
  std::uint64_t carve(std::size_t cls) const;
  /// A large block being freed: its pages past the slab's first go back to the system.
  void give_back_pages(std::uint64_t blk, const SlabHeader* s) const noexcept;
  /// Pushes the chain first..last (linked through word0, last's link is set here) onto a stack,
  /// adding `step` (>= 1) to its tag. Returns the head's new tag.
  static std::uint64_t push_chain(StackHead& head, std::uint64_t first, RecordHeader* last,
                                  std::uint64_t step = 1);
  RecordHeader* block(std::uint64_t off) const { return m_.at<RecordHeader>(off); }

  const MapImpl& m_;
};

}  // namespace shmap::detail
