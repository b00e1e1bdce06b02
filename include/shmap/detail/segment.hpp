// shmap — one segment as this process sees it: the shared-memory object, the address space
// reserved for it, how far it is mapped, and the arena that hands out page-aligned extents
// (tables, record slabs). Implemented in src/segment.cpp, whose top comment has the mapping
// and arena protocols; the tables, handles and records above it reach shared memory through
// this type only.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "shmap/detail/layout.hpp"

namespace shmap::detail {

class Segment {
 public:
  /// Takes fd (closed by the destructor). Nothing is mapped until reserve() and map_initial().
  Segment(std::string name, int fd, bool read_only)
      : name_(std::move(name)), fd_(fd), read_only_(read_only) {}
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  /// Reserves max_bytes of address space (no memory) for the mapping, starting on a 2 MiB
  /// boundary (so that a huge page of the object can be mapped by one page-table entry);
  /// throws out_of_space.
  void reserve(std::uint64_t max_bytes);
  /// Maps the first `bytes` of the object (clamped to the reservation); throws io_error.
  void map_initial(std::uint64_t bytes);
  /// The start of the arena, once the header that says it has been validated (open, create).
  void set_arena_offset(std::uint64_t offset) { arena_offset_ = offset; }

  const std::string& name() const { return name_; }
  int fd() const { return fd_; }
  bool read_only() const { return read_only_; }
  bool mapped() const { return base_ != nullptr; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }
  template <class T>
  T* at(std::uint64_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }
  std::uint64_t offset_of(const void* p) const {
    return static_cast<std::uint64_t>(static_cast<const char*>(p) - base_);
  }
  /// Maps the segment up to `end` in this process if it is not mapped yet; throws corrupt if
  /// `end` lies past the object or the reservation.
  void ensure_mapped(std::uint64_t end) const {
    if (end > mapped_.load(std::memory_order_acquire)) extend_mapping(end);
  }
  /// How far this process has mapped the segment (never past the object: it never shrinks).
  std::uint64_t mapped_bytes() const { return mapped_.load(std::memory_order_acquire); }
  /// Start of the arena and end of the reservation, as validated at open.
  std::uint64_t arena_offset() const { return arena_offset_; }
  std::uint64_t reserved_bytes() const { return reserved_; }
  /// True if a bucket's slot could live at `offset` (16-byte aligned, in the arena, inside the
  /// object), and it is mapped here. For offsets read from shared memory (a lane's pending
  /// record).
  bool valid_slot_offset(std::uint64_t offset) const noexcept;

  // ---- the arena ------------------------------------------------------------------------
  /// Allocates a zeroed, page-aligned extent; throws out_of_space.
  /// *got receives the extent's real size (>= bytes: a reused extent may be larger).
  std::uint64_t allocate(std::uint64_t bytes, std::uint64_t* got) const;
  /// Gives an extent back: its pages to the system (hole punch), its range to the free list.
  void free_extent(std::uint64_t offset, std::uint64_t bytes) const;
  /// Gives the pages of [offset, offset + bytes) back to the system (they read as zeros after);
  /// the range stays allocated. Page-aligned ranges inside the arena only; never throws.
  void release_pages(std::uint64_t offset, std::uint64_t bytes) const noexcept;
  /// Reserves the pages of an allocated range again (after release_pages), so that stores into
  /// it cannot SIGBUS on a full /dev/shm. Throws out_of_space, io_error.
  void reserve_pages(std::uint64_t offset, std::uint64_t bytes) const;
  /// The extents on the free list, as {offset, bytes} (the leak sweep's view of free space).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> free_extents() const;
  /// Bytes of memory the object holds (its allocated blocks, holes excluded).
  std::uint64_t allocated_bytes() const;

 private:
  void extend_mapping(std::uint64_t end) const;
  int protection() const;
  /// Maps [offset, offset + bytes) of the object at base_ + offset (MAP_FIXED, inside the
  /// reservation); throws io_error with `what`.
  void map_range(std::uint64_t offset, std::uint64_t bytes, const char* what) const;

  std::string name_;
  int fd_ = -1;
  bool read_only_ = false;
  char* base_ = nullptr;
  std::uint64_t reserved_ = 0;
  mutable std::atomic<std::uint64_t> mapped_{0};
  mutable std::mutex map_mutex_;
  // Copied from the header once, after validation: a later change of the shared field (a
  // damaged or hostile attacher) cannot move what this process believes the bounds are.
  std::uint64_t arena_offset_ = UINT64_MAX;
};

}  // namespace shmap::detail
