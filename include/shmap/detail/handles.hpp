// shmap — the handles of one attached map: its handle slot (and the extra slots its threads
// claim), the lanes in them (one per thread: its pin and its size record), the epochs that
// pins hold (RCU's read side, in shared memory), and the reclamation of retired tables.
// Implemented in src/handles.cpp, whose top comment has the race essay: slot ownership, pid
// namespaces, why a lock-free scan of the lanes is safe, and the reclaim journal. MapImpl
// composes one (MapImpl::handles()) and keeps shorthands for what its tables use on every
// operation (pin(), unpin(), lane_of(), retire(), ...).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "shmap/detail/fast_path.hpp"
#include "shmap/detail/layout.hpp"
#include "shmap/detail/segment.hpp"
#include "shmap/shmap.hpp"

namespace shmap::detail {

/// Process identity that survives pid reuse: the kernel's start time of the process.
/// 0 if the process does not exist (or is a zombie), kStartUnknown if it exists but /proc
/// cannot say when it started.
std::uint64_t process_start_time(int pid) noexcept;
inline constexpr std::uint64_t kStartUnknown = UINT64_MAX;
/// This process's start time (recomputed after fork).
std::uint64_t own_start_time() noexcept;
/// True if pid names a running (or stopped) process started at `start_time` (0: any).
bool process_alive(int pid, std::uint64_t start_time) noexcept;
/// Longest walk of the retired stack: a damaged stack may be a cycle. (Far more tables than
/// can be retired at once: each retirement is one resize, and reclaim runs after each.)
inline constexpr std::size_t kMaxRetiredWalk = std::size_t{1} << 20;

/// True when this process registered for membarrier(GLOBAL_EXPEDITED): its pins can then be
/// plain stores, because reclaimers and writer-gate holders issue the fence for them.
bool light_pins_enabled() noexcept;
/// Issues membarrier: after it returns, every pin stored by a thread of any process with light
/// pins is visible to the caller (or that thread's later loads see the caller's earlier stores).
/// False if this process cannot issue it (no kernel support, or seccomp); then only owners that
/// declared fenced pins in their slot (SlotOwner::pin_mode) may be trusted:
/// Handles::global_barrier() checks that.
bool membarrier_fence() noexcept;
/// Inode of this process's pid namespace (0 if /proc cannot say); recomputed after fork.
std::uint64_t own_pid_ns() noexcept;

/// A handle slot's {owner, start_time}, which change together.
/// (ns is the owner's pid namespace, read with them: see read_owner.)
struct SlotOwnerWords {
  std::uint64_t owner;
  std::uint64_t start;
  std::uint64_t ns = 0;
};
inline std::uint64_t* owner_words(HandleSlot& s) {
  return reinterpret_cast<std::uint64_t*>(&s.owner.owner);
}

struct Cell;  // a bucket's {meta, value} (table.hpp)

class Handles {
 public:
  /// How the handles reach a table they retire or free: the map's table(offset), which checks
  /// an offset read from shared memory and the header there, and throws corrupt (Tables::table,
  /// table.cpp). A function and its context rather than the map: retirement and reclamation need
  /// nothing else of the tables.
  struct TableLookup {
    const void* ctx = nullptr;
    TableHeader* (*table)(const void* ctx, std::uint64_t offset) = nullptr;
  };

  /// `seg` may be built after this (it is not used before attach()).
  Handles(const Segment& seg, TableLookup tables) : seg_(seg), tables_(tables) {}
  ~Handles() = default;
  Handles(const Handles&) = delete;
  Handles& operator=(const Handles&) = delete;

  // ---- slots ------------------------------------------------------------------------------
  /// Once the segment is mapped and its header validated: where the slots are and how many
  /// (copied: never re-read from the header). `private_slot` (a read-only attachment): pins
  /// go to a slot in this process's memory, which nobody else reads, and no slot is claimed.
  void attach(std::size_t max_handles, std::uint64_t slots_offset, bool private_slot = false);
  /// Claims this Map's slot; throws handles_exhausted if every slot is owned by a live process.
  void claim_slot();
  /// At close: frees the slots this Map owns, if it claimed them and this is the process that
  /// did (a forked child's copy must not free its parent's). Call while the segment is mapped.
  void close();
  std::size_t max_handles() const { return max_handles_; }
  HandleSlot& slot(std::size_t i) const { return slots_[i]; }
  /// This Map's slot (SIZE_MAX: none) and its owner word (0: none); extra slots have others.
  std::size_t slot_index() const { return slot_index_; }
  std::uint64_t owner_word() const { return owner_word_; }
  /// True if w is the owner word of one of this Map's slots.
  bool owns_slot_word(std::uint64_t w) const;
  /// Frees slots whose owner died. Returns how many.
  std::size_t clear_stale_slots() const;
  /// Recovers a dead owner's lanes and frees its slot; false if someone else got there first.
  bool free_dead_slot(std::size_t i, SlotOwnerWords seen) const;

  // ---- owner liveness ---------------------------------------------------------------------
  static SlotOwnerWords read_owner(const HandleSlot& s);
  static bool owner_alive(SlotOwnerWords o);
  bool slot_owner_alive(std::size_t i) const { return owner_alive(read_owner(slot(i))); }
  /// True if owner word w (a writer gate's, the reclaim lock's, a table's creator) belongs to a
  /// live owner of a slot; false once its slot was freed (it closed or was cleared as dead).
  bool word_owner_alive(std::uint64_t w) const;

  // ---- lanes ------------------------------------------------------------------------------
  // Thread t of the process (thread_number(), process-wide) uses, in this Map:
  //   t < kPrimaryLanes   lane t of the Map's own slot (the hot path below, inline)
  //   t >= kPrimaryLanes  lane (t - kPrimaryLanes) % kLanes of extra slot (t - kPrimaryLanes) /
  //                       kLanes, claimed from the segment the first time one of its threads
  //                       pins, released at close (lane_group())
  // so every thread has a lane of its own: its own pin and its own size record. Only when no
  // slot can be had (max_handles slots owned by live processes, or more than kMaxGroups *
  // kLanes threads) do the threads of that group share the overflow lane, lane kLanes - 1 of
  // the Map's own slot: a pin count keeping the oldest epoch (correct, but it can hold
  // retired tables back while those threads run) and unrecorded size changes.
  static constexpr std::size_t kPrimaryLanes = kLanes - 1;
  static constexpr std::size_t kMaxGroups = 256;
  /// An extra handle slot of this Map, owned by this process like the Map's own.
  struct LaneGroup {
    HandleSlot* slot = nullptr;
    std::size_t index = 0;
    std::uint64_t owner_word = 0;
    std::uint32_t depth[kLanes] = {};  // pin nesting per lane, touched by its thread only
  };
  Lane& overflow_lane() const { return my_slot_->lanes[kLanes - 1]; }
  Lane& lane_of(std::size_t t) const {
    if (t < kPrimaryLanes) return my_slot_->lanes[t];
    const LaneGroup* g = lane_group(t);
    return g != nullptr ? g->slot->lanes[(t - kPrimaryLanes) % kLanes] : overflow_lane();
  }
  Lane& my_lane() const { return lane_of(thread_number()); }
  /// The lanes of the Map's own slot, and the process-local state of its exclusive lanes (pin
  /// nesting, and the views the table code caches there: fast_path.hpp, LocalLane).
  Lane* my_lanes() const { return my_slot_->lanes; }
  LocalLane* local_lanes() const { return local_; }
  /// Pins are plain stores (membarrier registered; see pin_lane).
  bool light() const { return light_; }
  /// Tag for a size-changing write by thread t: slot * kLanes + lane + 1 of t's own lane, whose
  /// record covers the write; 0 on the overflow lane (not recorded). Call pinned.
  std::uint64_t my_tag(std::size_t t) const {
    if (t < kPrimaryLanes) return slot_index_ * kLanes + t + 1;
    const LaneGroup* g = lane_group(t);
    return g != nullptr ? g->index * kLanes + (t - kPrimaryLanes) % kLanes + 1 : 0;
  }

  // ---- pins -------------------------------------------------------------------------------
  /// Pins this thread's lane with the global epoch (RCU read-side enter; see handles.cpp).
  void pin() const {
    const std::size_t t = thread_number();
    if (t >= kPrimaryLanes) return pin_extra(t);
    pin_lane(my_slot_->lanes[t], local_[t].depth);
  }
  /// Never throws (it runs in PinGuard's destructor): a reclaim that fails is retried at the
  /// thread's next unpin, and by every other reclaimer meanwhile.
  void unpin() const noexcept {
    const std::size_t t = thread_number();
    if (t >= kPrimaryLanes) return unpin_extra(t);
    unpin_lane(my_slot_->lanes[t], local_[t].depth);
  }
  /// Marks this thread's pin as a write (call pinned, before the gate check): a point-in-time
  /// hold waits for pinned writers only, never for readers. The mark lasts until the
  /// outermost unpin; on the shared overflow lane, until the lane is quiescent.
  void mark_writer() const {
    const std::size_t t = thread_number();
    Lane& lane = lane_of(t);
    if (t >= kPrimaryLanes && &lane == &overflow_lane()) {
      lane.pin.fetch_or(kPinWriter, std::memory_order_seq_cst);
      return;
    }
    const std::uint64_t w = lane.pin.load(std::memory_order_relaxed);  // our own lane
    if (light_) {
      // As pin_lane: a plain store; the holder's membarrier orders it before its lane scan.
      lane.pin.store(w | kPinWriter, std::memory_order_release);
      std::atomic_signal_fence(std::memory_order_seq_cst);
    } else {
      lane.pin.store(w | kPinWriter, std::memory_order_seq_cst);
    }
  }
  /// An asymmetric fence over every lane (membarrier_fence()), or, where this process cannot
  /// issue one, true only if no live owner uses light pins (their pins cannot be trusted then:
  /// the caller must neither free nor assume quiescence).
  bool global_barrier() const noexcept;
  /// min(`oldest`, the oldest epoch a live owner's lane is pinned at), after making every
  /// pin visible; dead owners' slots met on the way are freed. nullopt: pins cannot be
  /// trusted from this process (global_barrier()).
  std::optional<std::uint64_t> oldest_pin(std::uint64_t oldest) const;

  // ---- retired tables ---------------------------------------------------------------------
  /// Pushes the table at table_offset, unlinked from the chain, onto the retired stack with a
  /// new epoch. Call pinned: the thread reclaims once it unpins.
  void retire(std::uint64_t table_offset) const;
  /// Tries to free retired tables that no pinned lane can still see. Waits a little (at most
  /// kReclaimLockWaitMs) if another live Map holds the reclaim lock; never throws from unpin.
  void reclaim() const { reclaim_impl(true); }
  static constexpr int kReclaimLockWaitMs = 50;
  /// Runs fn(ctx) under this Map's reclaim mutex and the segment's reclaim lock (a dead
  /// holder's journal finished first). False, fn not run, if the lock could not be had:
  /// another thread of this Map has it and !patient, or another live Map held it past `wait`.
  bool with_reclaim_lock(bool patient, std::chrono::milliseconds wait, void (*fn)(void*),
                         void* ctx) const;
  /// Test hook: reclaim() calls it at each step of freeing one retired table (1: journal
  /// written, 2: unlinked, 3: freed), so a test can kill the reclaimer there.
  static inline void (*in_reclaim_for_test)(int step) = nullptr;

  // ---- size records (one per lane: layout.hpp, struct Lane) --------------------------------
  /// Records (before its CAS) that this lane's next write installs {meta, value} in the
  /// bucket at offset off, with the lane's count at change number seq, and changes the size
  /// by `delta` (0: by what the state it installs says). Returns seq.
  static std::uint64_t write_record(Lane& lane, std::uint64_t off, std::uint64_t meta,
                                    std::uint64_t value, std::int64_t delta = 0);
  /// Adds delta to lane's count if no change was applied to it since seq (exactly once).
  static void apply_pending(Lane& lane, std::uint64_t seq, std::int64_t delta);
  struct SizeWords {
    std::uint64_t size, seq;
  };
  static SizeWords read_size(const Lane& lane);
  /// Before changing a bucket whose meta carries a writer tag: applies that writer's recorded
  /// size change if it is still pending (its CAS landed, its count update did not yet).
  void help_pending(const Slot& b, const Cell& c) const;
  /// Applies the size change of a dead owner's write whose CAS landed but whose size update
  /// did not. Called before a dead owner's slot is freed; its pins kept the bucket's table.
  void recover_lane(Lane& lane) const;
  /// Adds d to this thread's lane's count.
  void add_size(std::int64_t d) const;
  /// The sum of every lane's count (racy: writes in flight may or may not be in it).
  std::int64_t size_estimate() const;

  // ---- what operators see (Map::stats, Map::readers, check) --------------------------------
  /// Tables retired and not yet freed (a racy count, for stats).
  std::size_t retired_count() const;
  /// Slots with an owner (relaxed loads: a count for stats).
  std::size_t slots_in_use() const;
  /// Slots whose owner is dead (check's note).
  std::size_t dead_slots() const;
  /// Every owned slot: its owner, liveness and pinned lanes.
  std::vector<ReaderInfo> readers() const;

 private:
  void release_slot();
  /// Claims a free slot for this process (clearing dead owners' slots if none is free) and
  /// returns its index, with its owner word in *word; SIZE_MAX if every slot is owned.
  std::size_t claim_free_slot(std::uint64_t* word) const;
  /// The group of thread t (t >= kPrimaryLanes), claiming its slot if needed; nullptr: the
  /// overflow lane (decided once per group and Map, so a pin and its unpin agree).
  LaneGroup* lane_group(std::size_t t) const;
  void pin_lane(Lane& lane, std::uint32_t& depth) const {
    if (depth++ != 0) return;  // nested: the outer pin covers it (the lane is ours alone)
    if (light_) {
      light_pin(lane.pin, header_->global_epoch);  // a plain store (fast_path.hpp)
    } else {
      // Acquire: an epoch read after a retirer's fetch_add orders our chain loads after its
      // unlink.
      const std::uint64_t e = header_->global_epoch.load(std::memory_order_acquire);
      lane.pin.store(e << 16 | 1, std::memory_order_seq_cst);  // xchg: a full fence
    }
  }
  void unpin_lane(Lane& lane, std::uint32_t& depth) const noexcept {
    if (--depth != 0) return;
    // Release: everything this operation read happens-before a reclaimer that sees quiescence.
    lane.pin.store(0, std::memory_order_release);
    if (t_reclaim_wanted) reclaim_deferred();
  }
  void pin_extra(std::size_t t) const;
  void unpin_extra(std::size_t t) const noexcept;
  void pin_shared() const;
  void unpin_shared() const noexcept;
  void reclaim_impl(bool patient) const;
  /// reclaim() for unpin: never throws; on failure the thread tries again at its next unpin.
  void reclaim_deferred() const noexcept;
  /// Under the reclaim lock: finishes the journaled table of a holder that died.
  void finish_reclaim_journal() const;
  /// Takes the segment's reclaim lock for this Map, waiting up to `wait` for a live holder
  /// (a dead holder's lock is broken; finish_reclaim_journal() next). Hold reclaim_mutex_.
  bool lock_reclaim(std::chrono::milliseconds wait) const;
  void unlock_reclaim() const noexcept;
  TableHeader* table(std::uint64_t offset) const { return tables_.table(tables_.ctx, offset); }
  /// table() for paths that must not throw: nullptr where table() would throw.
  TableHeader* table_or_null(std::uint64_t offset) const noexcept;

  const Segment& seg_;
  TableLookup tables_;
  // Copied from the header once, after validation: a later change of the shared fields (a
  // damaged or hostile attacher) cannot move what this process believes the bounds are.
  std::size_t max_handles_ = 0;
  HandleSlot* slots_ = nullptr;
  std::size_t slot_index_ = SIZE_MAX;
  HandleSlot* my_slot_ = nullptr;
  // seg_.header(), kept here so that a pin reads the global epoch in one load from `this`
  // (through seg_ it would be two: the reference, then the mapping's base).
  SegmentHeader* header_ = nullptr;
  // A read-only attachment's stand-in for a handle slot, in this process's memory.
  std::unique_ptr<HandleSlot> private_slot_;
  bool light_ = false;
  // Per exclusive lane, touched only by the thread that owns the lane: pin nesting and the
  // view Map::find caches (fast_path.hpp, find_front).
  mutable LocalLane local_[kPrimaryLanes] = {};
  // Extra slots (see lane_of): set once each, under groups_mutex_; read lock-free (acquire).
  // g_overflow_group (handles.cpp) marks a group that could not get a slot: its threads use
  // the overflow lane.
  mutable std::atomic<LaneGroup*> groups_[kMaxGroups] = {};
  mutable std::mutex groups_mutex_;
  // One reclaimer per Map at a time (the shared reclaim lock is per owner word).
  mutable std::mutex reclaim_mutex_;
  std::uint64_t owner_word_ = 0;
  int owner_pid_ = 0;
};

}  // namespace shmap::detail
