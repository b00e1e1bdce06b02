// shmap — internals of one attached map, composed of one type per concept: the segment and its
// arena (a Segment, segment.hpp), the handle slots, lanes, pins and reclamation (a Handles,
// handles.hpp), the tables and probing in them (a Tables, table.hpp), the chain of tables and its
// migration (a Migration, migration.hpp), point-in-time holds (a WriterGate, writer_gate.hpp) and
// bulk loads (a BulkLoad, bulk_load.hpp). MapImpl keeps one-line shorthands for what its parts
// and its callers use; its own operations (lookups, writes, for_each) are in src/map_ops.cpp.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmap/detail/bulk_load.hpp"
#include "shmap/detail/fast_path.hpp"
#include "shmap/detail/handles.hpp"
#include "shmap/detail/layout.hpp"
#include "shmap/detail/migration.hpp"
#include "shmap/detail/segment.hpp"
#include "shmap/detail/table.hpp"
#include "shmap/detail/writer_gate.hpp"
#include "shmap/shmap.hpp"

namespace shmap::detail {

/// Throws Error(code, "shmap: map 'name': what").
[[noreturn]] void fail(Errc code, const std::string& name, const std::string& what);
/// The same with strerror(err) appended.
[[noreturn]] void fail_errno(Errc code, const std::string& name, const std::string& what, int err);

void validate_name(const std::string& name);

/// What a write wants to do with the current value of its key.
struct WriteIntent {
  enum Kind { keep, set, erase } kind = keep;
  std::uint64_t value = 0;
  /// A map of strings' write: the entries it adds (removes, if negative) beyond its bucket's
  /// own one, counted in the size with the bucket's (a multimap value added to a key: +1).
  std::int64_t extra = 0;
};

/// The key and value types a segment holds (SegmentHeader::key_type, value_type).
struct SegmentTypes {
  TypeRecord key{};
  TypeRecord value{};
  std::uint64_t kind = kKindMap;  // SegmentHeader::kind
};
/// TypeRecord::kind of a byte string (TypeInfo::Kind::byte_string).
inline constexpr std::uint32_t kByteStringKind = 5;
/// Whether a segment of these types is held as a map of strings (entry lists in records; its
/// count is of entries, not buckets): string keys or values, or keys of more than 8 bytes.
inline bool holds_strings(const SegmentTypes& t) {
  return t.key.kind == kByteStringKind || t.value.kind == kByteStringKind || t.key.size > 8;
}
/// TypeRecord::name_hash of a type name.
std::uint32_t type_name_hash(std::string_view name);
/// shmap::Map's: uint64 -> uint64.
const SegmentTypes& u64_types();
/// True if a and b record the same types (size, alignment, kind and name).
bool same_types(const SegmentTypes& a, const SegmentTypes& b);
/// "uint64 -> Quote (24 bytes)", for messages.
std::string describe_types(const SegmentTypes& t);

class MapImpl {
 public:
  /// Takes fd (the segment's object; closed with it).
  MapImpl(std::string name, int fd, bool read_only);
  ~MapImpl();
  MapImpl(const MapImpl&) = delete;
  MapImpl& operator=(const MapImpl&) = delete;

  // ---- segment.cpp ------------------------------------------------------------------------
  /// `types`: what the segment will hold (recorded in its header).
  static std::unique_ptr<MapImpl> create(const std::string& name, const Options& options,
                                         bool exclusive_only, bool* existed,
                                         const SegmentTypes& types = u64_types());
  /// read_only: O_RDONLY, PROT_READ, no handle slot (pins go to a process-private slot);
  /// see src/read_only.cpp for how its reads stay safe without a pin that others can see.
  /// `expect`: the types the caller handles (nullptr: any); a segment of others fails with
  /// layout_mismatch.
  static std::unique_ptr<MapImpl> open(const std::string& name, bool clear_stale = true,
                                       bool read_only = false,
                                       const SegmentTypes* expect = &u64_types());
  bool read_only() const { return seg_.read_only(); }
  /// The types the segment holds, as validated at open.
  const SegmentTypes& types() const { return types_; }

  const std::string& name() const { return seg_.name(); }
  std::uint64_t seed() const { return seed_; }
  /// The segment: its mapping in this process and its arena.
  const Segment& segment() const { return seg_; }
  // The segment's view, which every part of the map uses (shorthands for segment()'s).
  SegmentHeader& header() const { return seg_.header(); }
  template <class T>
  T* at(std::uint64_t offset) const {
    return seg_.at<T>(offset);
  }
  void ensure_mapped(std::uint64_t end) const { seg_.ensure_mapped(end); }
  std::uint64_t offset_of(const void* p) const { return seg_.offset_of(p); }

  // ---- the tables (table.hpp) -------------------------------------------------------------
  /// What a table is, and probing in one (a Tables).
  const Tables& tables() const { return tables_; }
  // Shorthands for tables()'s, which every part of the map uses.
  /// The table at `offset`, its offset and header checked (Tables::table). Throws corrupt.
  TableHeader* table(std::uint64_t offset) const { return tables_.table(offset); }
  /// table() for paths that must not throw: nullptr where table() would throw.
  TableHeader* table_or_null(std::uint64_t offset) const noexcept {
    return tables_.table_or_null(offset);
  }
  BucketRef bucket(TableHeader* t, std::uint64_t i) const { return Tables::bucket(t, i); }
  std::uint8_t* fingerprints(TableHeader* t) const { return Tables::fingerprints(t); }
  std::uint64_t* done_bitmap(TableHeader* t) const { return Tables::done_bitmap(t); }

  // ---- the handles (handles.hpp) ----------------------------------------------------------
  /// The handle slots, lanes, pins and retired tables of this Map.
  const Handles& handles() const { return handles_; }
  // Shorthands for what the tables and the records use on every operation.
  void pin() const { handles_.pin(); }
  /// Never throws (it runs in PinGuard's destructor).
  void unpin() const noexcept { handles_.unpin(); }
  void mark_writer() const { handles_.mark_writer(); }
  static constexpr std::size_t kPrimaryLanes = Handles::kPrimaryLanes;
  Lane& lane_of(std::size_t t) const { return handles_.lane_of(t); }
  Lane& my_lane() const { return handles_.my_lane(); }
  Lane& overflow_lane() const { return handles_.overflow_lane(); }
  std::uint64_t my_tag(std::size_t t) const { return handles_.my_tag(t); }
  /// Handle slots, as validated and copied at open; never re-read from the header.
  std::size_t max_handles() const { return handles_.max_handles(); }
  HandleSlot& slot(std::size_t i) const { return handles_.slot(i); }
  bool slot_owner_alive(std::size_t i) const { return handles_.slot_owner_alive(i); }
  bool gate_owner_alive(std::uint64_t gate) const { return handles_.word_owner_alive(gate); }
  std::size_t slot_index_for_test() const { return handles_.slot_index(); }
  void retire(std::uint64_t table_offset) const { handles_.retire(table_offset); }
  void reclaim() const { handles_.reclaim(); }
  static constexpr int kReclaimLockWaitMs = Handles::kReclaimLockWaitMs;
  bool with_reclaim_lock(bool patient, std::chrono::milliseconds wait, void (*fn)(void*),
                         void* ctx) const {
    return handles_.with_reclaim_lock(patient, wait, fn, ctx);
  }
  std::optional<std::uint64_t> oldest_pin(std::uint64_t oldest) const {
    return handles_.oldest_pin(oldest);
  }
  bool global_barrier() const noexcept { return handles_.global_barrier(); }
  static std::uint64_t write_record(Lane& lane, std::uint64_t off, std::uint64_t meta,
                                    std::uint64_t value, std::int64_t delta = 0) {
    return Handles::write_record(lane, off, meta, value, delta);
  }
  static void apply_pending(Lane& lane, std::uint64_t seq, std::int64_t delta) {
    Handles::apply_pending(lane, seq, delta);
  }
  void help_pending(const Slot& b, const Cell& c) const { handles_.help_pending(b, c); }
  void add_size(std::int64_t d) const { handles_.add_size(d); }
  std::int64_t size_estimate() const { return handles_.size_estimate(); }

  // ---- leaks.cpp --------------------------------------------------------------------------
  /// Tables that nothing will ever free: unlinked from the chain but never retired (their
  /// completer died between the two steps), or made by a Map that is gone and never linked
  /// (a resizer or a bulk loader that died before publishing). Found by walking the arena;
  /// confirmed after every operation in flight at the first walk has ended (leaks.cpp).
  struct LeakScan {
    std::size_t tables = 0;   // leaked tables found (and, with recover, retired)
    std::uint64_t bytes = 0;  // their extents
    bool done = false;        // false: not decided (reclaim lock busy, a process stopped
                              // inside an operation, or pins not trustable here)
  };
  /// With recover, retires what it finds (normal reclamation then frees it). Call unpinned.
  LeakScan sweep_leaks(bool recover) const;
  struct TableId {
    std::uint64_t offset, created, bytes;
    bool operator==(const TableId&) const = default;
  };
  /// One walk of the arena: the suspects (tables not accounted for, see leaks.cpp).
  std::vector<TableId> unaccounted_tables() const;

  // ---- map_ops.cpp: the map's lookups and writes -------------------------------------------
  /// Lock-free lookup. The common case (the key LIVE in the current table, or absent from a
  /// table with no older one) is decided here in a handful of loads; anything else goes to
  /// find_slow(), which handles migration states.
  /// (Returns found/absent with the value through *out: a bool in a register, not an
  /// optional built on the stack, keeps consecutive lookups from stalling on each other.)
  [[gnu::always_inline]] bool find(std::uint64_t k, std::uint64_t* out) const {
    const std::size_t t = thread_number();
    pin();
    FastTable ft;
    if (!fast_table(&ft)) {
      unpin();
      return find_slow(k, out);
    }
    // The view Map::find uses inline until current_table changes (fast_path.hpp, find_front).
    if (t < kPrimaryLanes) {
      LocalLane& local = handles_.local_lanes()[t];
      local.view = ft;
      local.capacity = ft.capacity;
    }
    const Fast r = find_fast(ft, k, hash_key(k, seed_), out);
    unpin();
    return r == Fast::slow ? find_slow(k, out) : r == Fast::hit;
  }
  /// What Map::find reads inline (fast_path.hpp, find_front); nullptr if it must always call
  /// find(): a read-only attachment, or pins that must be fenced.
  const FastFront* fast_front() const {
    if (seg_.read_only() || !handles_.light()) return nullptr;
    front_.lanes = handles_.my_lanes();
    front_.local = handles_.local_lanes();
    front_.global_epoch = &header().global_epoch;
    front_.current_table = &header().current_table;
    front_.seed = seed_;
    return &front_;
  }
  /// find() for n keys: out[i] gets keys[i]'s value or nullopt; returns how many were found.
  /// Each lookup is atomic on its own, as find(). Keys go in groups of kFindGroup under one
  /// pin: a group's home buckets are prefetched together, so their cache misses overlap.
  static constexpr std::size_t kFindGroup = 64;
  std::size_t find_many(const std::uint64_t* keys, std::size_t n,
                        std::optional<std::uint64_t>* out) const;
  /// What the fast path needs of the current table, read once per pin (fast_path.hpp).
  using FastTable = FastView;
  /// The current table, if it is mapped here (else the slow path maps it). Call pinned.
  [[gnu::always_inline]] bool fast_table(FastTable* ft) const {
    // seq_cst loads (plain loads on x86). After the pin: a fenced pin is a seq_cst store; a
    // light one is ordered before these loads by the reclaimer's membarrier, not by C++.
    const std::uint64_t t_off = header().current_table.load(std::memory_order_seq_cst);
    const std::uint64_t mapped = seg_.mapped_bytes();
    if (t_off < seg_.arena_offset() || (t_off & (kPage - 1)) != 0 ||
        t_off > mapped - kTableHeaderBytes) {
      return false;
    }
    const TableHeader* t = at<TableHeader>(t_off);
    // The header is shared memory another process could have damaged: each field is read
    // once, and the table is used only if every bucket it implies lies in the mapping (else
    // the slow path's table() maps it, or reports it corrupt). A few ALU ops, no extra miss.
    const std::uint64_t cap =
        std::atomic_ref<const std::uint64_t>(t->capacity).load(std::memory_order_relaxed);
    const std::uint64_t bits =
        std::atomic_ref<const std::uint64_t>(t->bits).load(std::memory_order_relaxed);
    // Buckets and fingerprints (fp_bytes(cap) <= cap + 16) inside the mapping.
    const std::uint64_t room = mapped - t_off - kTableHeaderBytes;
    if (!table_shape_ok(cap, bits) || room < 16 || cap > (room - 16) / (kBucketBytes + 1)) {
      return false;
    }
    ft->older = t->older.load(std::memory_order_seq_cst);
    ft->buckets = reinterpret_cast<const char*>(t) + kTableHeaderBytes;
    ft->fps = reinterpret_cast<const std::uint8_t*>(ft->buckets + cap * kBucketBytes);
    ft->current = &header().current_table;
    ft->table = t_off;
    ft->capacity = cap;
    ft->valid = cap >= 16 ? 0xffffu : (1u << cap) - 1;
    ft->rounds = ((cap - 1) >> 4) + 2;
    return true;
  }
  using Fast = detail::Fast;
  [[gnu::always_inline]] Fast find_fast(const FastTable& ft, std::uint64_t k, std::uint64_t hash,
                                        std::uint64_t* out) const {
    return detail::find_fast(ft, k, hash, out);
  }
  bool find_slow(std::uint64_t k, std::uint64_t* out) const;
  std::optional<std::uint64_t> find_slower(std::uint64_t k) const;
  std::optional<std::uint64_t> find(std::uint64_t k) const {
    std::uint64_t v = 0;
    if (find(k, &v)) return v;
    return std::nullopt;
  }
  /// Applies `decide` (current value or nullopt -> intent) atomically to k. Returns the value
  /// k had when the intent was applied (nullopt: absent).
  template <class Decide>
  std::optional<std::uint64_t> mutate(std::uint64_t k, bool may_insert, Decide&& decide) {
    using D = std::remove_reference_t<Decide>;
    return mutate_impl(
        k, may_insert,
        [](void* ctx, std::optional<std::uint64_t> cur) { return (*static_cast<D*>(ctx))(cur); },
        &decide);
  }
  using DecideFn = WriteIntent (*)(void* ctx, std::optional<std::uint64_t> current);
  /// Called once the intent's CAS has landed, with the value it replaced (nullopt: k was
  /// absent), still inside the write: pinned, and waited for by a point-in-time hold. The
  /// typed maps retire the record the write unlinked here (typed_map.cpp).
  using CommitFn = void (*)(void* ctx, std::optional<std::uint64_t> replaced);
  std::optional<std::uint64_t> mutate_impl(std::uint64_t k, bool may_insert, DecideFn decide,
                                           void* ctx, CommitFn commit = nullptr);
  void for_each(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const;

  // ---- map.cpp ----------------------------------------------------------------------------
  CheckReport check() const;
  /// Adds a note to rep when the size counter differs from the `live` entries a walk counted.
  void note_size_counter(CheckReport* rep, std::size_t live) const;

  // ---- the tables (table.hpp), shorthands -------------------------------------------------
  /// Walks one table that has no older table (see for_each).
  void walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
    tables_.walk(t, fn, ctx);
  }
  std::uint64_t create_table(std::uint64_t capacity, std::uint64_t older) const {
    return tables_.create_table(capacity, older);
  }
  void discard_table(std::uint64_t table) const { tables_.discard_table(table); }
  std::uint64_t home(std::uint64_t k, const TableHeader* t) const { return tables_.home(k, t); }

  // ---- the chain and its migration (migration.hpp) ----------------------------------------
  /// Resizing, and moving entries up the chain of tables (a Migration).
  const Migration& migration() const { return migration_; }
  // Shorthands for migration()'s.
  /// Runs migration chunks until the current table has no older table.
  void finish_migration() const { migration_.finish_migration(); }
  void maybe_resize(TableHeader* t, bool shrink, bool force = false, bool fit = false) const {
    migration_.maybe_resize(t, shrink, force, fit);
  }
  /// compact()'s resize.
  void fit_table() const { migration_.fit_table(); }
  void grow_stuck(TableHeader* t) const { migration_.grow_stuck(t); }
  std::uint64_t link_successor(TableHeader* t, std::uint64_t n_off) const {
    return migration_.link_successor(t, n_off);
  }
  /// The newest table (Migration::top_table).
  std::uint64_t top_table(bool publish, TableHeader** top = nullptr) const {
    return migration_.top_table(publish, top);
  }
  TableHeader* top_header(bool publish) const { return migration_.top_header(publish); }
  std::size_t load_chain(TableHeader* t, TableHeader** out) const {
    return migration_.load_chain(t, out);
  }
  void check_forward(TableHeader* t) const { migration_.check_forward(t); }

  // ---- read_only.cpp: reads of a read-only attachment ---------------------------------------
  /// Runs read(ctx), which copies what it needs out of the tables, again and again until no
  /// table was retired while it ran (global_epoch unchanged); Errc::timeout after 10 s.
  void read_validated(const char* what, void (*read)(void*), void* ctx) const;
  template <class F>
  void read_validated(const char* what, F&& f) const {
    read_validated(
        what, [](void* c) { (*static_cast<std::remove_reference_t<F>*>(c))(); }, &f);
  }
  std::optional<std::uint64_t> find_read_only(std::uint64_t k) const;
  /// For a test that caught a wrong answer about k: the chain from the newest table down, and
  /// every bucket that holds k in each table (state, value, fingerprint byte, distance from
  /// k's home), read under a pin. A diagnostic: it scans whole tables.
  std::string describe_key(std::uint64_t k) const;
  /// A table as a read-only read uses it: its header read once and checked, every bucket
  /// inside this process's mapping. Indexing uses these copies only.
  struct RoView {
    const TableHeader* header;
    const char* buckets;  // bucket i: slot at + slot_offset(i), key at + key_offset(i)
    const Slot& slot(std::uint64_t i) const {
      return *reinterpret_cast<const Slot*>(buckets + slot_offset(i));
    }
    const std::uint64_t& key(std::uint64_t i) const {
      return *reinterpret_cast<const std::uint64_t*>(buckets + key_offset(i));
    }
    std::uint64_t capacity;
    std::uint64_t older;
    std::uint64_t discard_older;
  };
  /// False if the header at off is not one a table can have (throws corrupt as table() does).
  bool ro_view(std::uint64_t off, RoView* v) const;
  /// The chain, newest first (past current_table to a linked successor); returns its length.
  std::size_t ro_chain(RoView* out) const;
  /// A lookup with the bounds of RoViews only; call inside read_validated.
  std::optional<std::uint64_t> ro_lookup(std::uint64_t k) const;
  /// check() for a read-only attachment: the chain's headers and an exact count.
  CheckReport check_read_only() const;
  /// for_each without a visible pin: copies the entries under read_validated, then calls fn.
  void for_each_read_only(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const;

  // ---- point-in-time holds (writer_gate.hpp) ----------------------------------------------
  /// The writer gate (a WriterGate).
  const WriterGate& writer_gate() const { return gate_; }
  // Shorthands for writer_gate()'s.
  /// Holds writers back until release_writers() (WriterGate::hold_writers).
  void hold_writers(std::uint64_t extra_bytes = 0) const { gate_.hold_writers(extra_bytes); }
  std::uint64_t writer_hold_lease_ns(std::uint64_t extra_bytes) const {
    return gate_.writer_hold_lease_ns(extra_bytes);
  }
  /// False if the hold was broken meanwhile (its lease ran out: the copy is not point-in-time).
  bool release_writers() const { return gate_.release_writers(); }
  bool still_holding_writers() const { return gate_.still_holding_writers(); }
  /// Returns once no point-in-time hold of another writer is in force (one load, commonly).
  void wait_for_gate() const { gate_.wait_for_gate(); }
  bool gate_is_mine(std::uint64_t gate) const { return gate_.gate_is_mine(gate); }

  // ---- bulk loads (bulk_load.hpp) ---------------------------------------------------------
  /// Building a table out of sight and publishing it in place of the content (a BulkLoad).
  const BulkLoad& bulk_load() const { return bulk_; }
  // Shorthands for bulk_load()'s.
  std::uint64_t build_table(std::size_t entries) const { return bulk_.build_table(entries); }
  void bulk_put(std::uint64_t table, std::uint64_t k, std::uint64_t v) const {
    bulk_.bulk_put(table, k, v);
  }
  void bulk_put_many(std::uint64_t table, const std::pair<std::uint64_t, std::uint64_t>* kv,
                     std::size_t n) const {
    bulk_.bulk_put_many(table, kv, n);
  }
  void publish_replace(std::uint64_t table) const { bulk_.publish_replace(table); }

  // Used by mutate(); exposed for tests of the protocol (shorthands for tables()'s and
  // migration()'s).
  /// Looks k up in t (Tables::probe); with claim, claims an EMPTY bucket for k if k has none.
  ProbeResult probe(TableHeader* t, std::uint64_t k, bool claim, bool writer) const {
    return tables_.probe(t, k, claim, writer);
  }
  ProbeResult probe(TableHeader* t, std::uint64_t k, bool claim) const {
    return probe(t, k, claim, claim);
  }
  void move_bucket(TableHeader* older, std::uint64_t i, TableHeader* newer) const {
    migration_.move_bucket(older, i, newer);
  }
  void settle(TableHeader* older, TableHeader* newer, std::uint64_t k) const {
    migration_.settle(older, newer, k);
  }
  bool help_migrate(TableHeader* newer, std::size_t chunks, std::size_t depth = 0) const {
    return migration_.help_migrate(newer, chunks, depth);
  }
  bool note_claim(TableHeader* t) const { return tables_.note_claim(t); }
  std::uint64_t used_buckets(const TableHeader* t) const { return Tables::used_buckets(t); }
  void copy_frozen(BucketRef b, Cell c, TableHeader* newer) const {
    migration_.copy_frozen(b, c, newer);
  }
  bool counted_cas(Slot& b, const Cell& c, std::uint64_t value, std::uint64_t state,
                   std::int64_t delta) const {
    return migration_.counted_cas(b, c, value, state, delta);
  }
  void help_bulk(TableHeader* t) const { migration_.help_bulk(t); }
  /// Test hook: open() calls it right after its first read of the header's mutable fields
  /// (current_table, file_bytes), where another process may grow the segment.
  static inline void (*open_after_first_read_for_test)() = nullptr;
  /// Test hook: maybe_resize() calls it (once: it is cleared first) between allocating a
  /// successor and publishing it, where concurrent writers could be inserting.
  static inline thread_local void (*before_publish_for_test)() = nullptr;
  /// Test hook: maybe_resize() calls it (once) after its last count, right before it links and
  /// publishes the successor: a refill here makes a published successor too small.
  static inline thread_local void (*after_recount_for_test)() = nullptr;
  /// Test hook: migration completion calls it between unlinking the older table and retiring
  /// it, the window the leak sweep covers.
  static inline void (*between_unlink_and_retire_for_test)() = nullptr;
  /// Test hook: the leak sweep calls it once it has found suspects and waits for the
  /// operations in flight to end (its grace period).
  static inline void (*sweep_grace_for_test)() = nullptr;
  /// Test hook: each walk of the leak sweep calls it between its two halves (the arena, then
  /// the lists that account for tables: chain, retired stack), where writers may resize.
  static inline void (*sweep_mid_walk_for_test)() = nullptr;
  /// Test hook: a write calls it right after its CAS landed, before it counts the change.
  static inline void (*after_write_cas_for_test)() = nullptr;
  /// Called (once, then cleared) by a write of this thread that read a top table which is
  /// still assimilating an older one, before it helps the migration and settles its key.
  static inline thread_local void (*migrating_write_for_test)() = nullptr;

 private:
  // First, at offset 0: a Handles method called from a MapImpl one (pin()'s out-of-line
  // branches, unpin()'s reclaim) gets the same `this`, with no address to compute. It holds a
  // reference to seg_, used only after seg_ is built; ~MapImpl frees its slots while seg_ is
  // still mapped.
  Handles handles_;
  Segment seg_;
  std::uint64_t seed_ = 0;
  SegmentTypes types_;
  // What Map::find reads inline (fast_front()).
  mutable FastFront front_;
  // The parts that hold a reference back to this map (they reach the segment, the handles and
  // the seed through the shorthands above; none of them is used before the segment is attached).
  Tables tables_{*this};
  Migration migration_{*this};
  WriterGate gate_{*this, seg_};
  BulkLoad bulk_{*this};

  friend class ::shmap::Map;
};

/// A pinned region: the calling thread's lane holds the global epoch until destruction.
class PinGuard {
 public:
  explicit PinGuard(const MapImpl& m) : m_(m) { m_.pin(); }
  ~PinGuard() { m_.unpin(); }  // noexcept: unpin never throws
  PinGuard(const PinGuard&) = delete;
  PinGuard& operator=(const PinGuard&) = delete;

 private:
  const MapImpl& m_;
};

}  // namespace shmap::detail
