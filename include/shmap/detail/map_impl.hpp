// shmap — internals of one attached map: the segment and its arena (a Segment, segment.hpp),
// the handle slots, lanes, pins and reclamation (a Handles, handles.hpp), and the tables with
// their migration (table.cpp).
#pragma once

#include <sys/mman.h>
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

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

#include "shmap/detail/fast_path.hpp"
#include "shmap/detail/handles.hpp"
#include "shmap/detail/layout.hpp"
#include "shmap/detail/segment.hpp"
#include "shmap/shmap.hpp"

namespace shmap::detail {

/// Throws Error(code, "shmap: map 'name': what").
[[noreturn]] void fail(Errc code, const std::string& name, const std::string& what);
/// The same with strerror(err) appended.
[[noreturn]] void fail_errno(Errc code, const std::string& name, const std::string& what, int err);

void validate_name(const std::string& name);

/// 16-byte compare-and-swap of {lo, hi} at p (16-byte aligned). lock cmpxchg16b is a full
/// barrier: it orders like a seq_cst read-modify-write.
inline bool cas128(std::uint64_t* p, std::uint64_t exp_lo, std::uint64_t exp_hi,
                   std::uint64_t new_lo, std::uint64_t new_hi) noexcept {
#if defined(__SANITIZE_THREAD__)
  // TSan emulates 16-byte atomics with a lock of its own process, which other processes do
  // not take: the CAS would not be atomic against them. So under TSan it is the instruction
  // itself, and the happens-before it gives (a full barrier: release before, acquire after,
  // on this address) is told to TSan by hand.
  __tsan_release(p);
  bool ok;
  asm volatile("lock cmpxchg16b %1"
               : "=@ccz"(ok), "+m"(*reinterpret_cast<unsigned __int128*>(p)), "+a"(exp_lo),
                 "+d"(exp_hi)
               : "b"(new_lo), "c"(new_hi)
               : "memory");
  __tsan_acquire(p);
  return ok;
#else
  using u128 = unsigned __int128;
  const u128 expected = (u128(exp_hi) << 64) | exp_lo;
  const u128 desired = (u128(new_hi) << 64) | new_lo;
  return __sync_bool_compare_and_swap(reinterpret_cast<u128*>(p), expected, desired);
#endif
}

/// A consistent {meta, value} pair of a bucket, read without writing to its cache line.
struct Cell {
  std::uint64_t meta;
  std::uint64_t value;
  std::uint64_t state() const { return state_of(meta); }
};

/// Seqlock-style read: the version in meta changes on every transition, so equal metas around
/// the value load mean the value belongs to that meta.
inline Cell read_cell(const Slot& b) noexcept {
  for (;;) {
    const std::uint64_t m1 = load_acquire(b.meta);
    const std::uint64_t v = load_acquire(b.value);
    // Acquire on the value load keeps the second meta load after it.
    const std::uint64_t m2 =
        std::atomic_ref<const std::uint64_t>(b.meta).load(std::memory_order_relaxed);
    if (m1 == m2) return {m1, v};
  }
}

/// One bucket of a table: its slot ({value, meta}) and its key word (layout.hpp).
struct BucketRef {
  Slot* slot = nullptr;
  std::uint64_t* key = nullptr;
  std::uint64_t index = 0;  // in its table
  explicit operator bool() const { return slot != nullptr; }
};

/// Outcome of looking a key up in one table.
enum class Probe { found, absent, sealed, full };
struct ProbeResult {
  Probe kind;
  BucketRef bucket{};       // the key's bucket, for Probe::found
  Cell cell{};              // its content when probed
  bool claimed = false;     // this probe claimed the bucket (a new key in this table)
  bool over_limit = false;  // ... and the table passed its load limit with it
};

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
  /// The table at `offset`, mapped here, after checking what a damaged or hostile segment
  /// could get wrong: the offset (page aligned, in the arena, inside the reservation) and the
  /// header (table_shape_ok: a capacity of layout.hpp's list and bits = capacity_bits(it),
  /// extent_bytes >= table_bytes(capacity), the extent inside the object). Throws corrupt.
  TableHeader* table(std::uint64_t offset) const;
  /// table() for paths that must not throw (reclamation runs from unpin, in destructors):
  /// nullptr where table() would throw.
  TableHeader* table_or_null(std::uint64_t offset) const noexcept;
  /// Bucket i of t (i < capacity), as pointers to its slot and its key (layout.hpp).
  BucketRef bucket(TableHeader* t, std::uint64_t i) const {
    char* base = reinterpret_cast<char*>(t) + kTableHeaderBytes;
    return {reinterpret_cast<Slot*>(base + slot_offset(i)),
            reinterpret_cast<std::uint64_t*>(base + key_offset(i)), i};
  }
  /// One fingerprint byte per bucket (layout.hpp, "Fingerprints").
  std::uint8_t* fingerprints(TableHeader* t) const {
    return reinterpret_cast<std::uint8_t*>(t) + kTableHeaderBytes + t->capacity * kBucketBytes;
  }
  /// One bit per chunk of t, set when the chunk has been moved into t's successor.
  std::uint64_t* done_bitmap(TableHeader* t) const {
    return reinterpret_cast<std::uint64_t*>(fingerprints(t) + fp_bytes(t->capacity));
  }

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

  // ---- table.cpp --------------------------------------------------------------------------
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
  /// Walks one table that has no older table (see for_each).
  void walk(TableHeader* t, void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const;
  /// Runs migration chunks until the current table has no older table.
  void finish_migration() const;
  std::uint64_t create_table(std::uint64_t capacity, std::uint64_t older) const;
  /// Starts a resize of t if it is over its load limit (or, with shrink, far under it). With
  /// force, resizes even under the limit (t is physically full). With fit (compact()), into
  /// the smallest capacity that holds the live entries at a load of at most 0.7, if that is
  /// smaller than t (layout.hpp, "Table capacities").
  void maybe_resize(TableHeader* t, bool shrink, bool force = false, bool fit = false) const;
  /// compact()'s resize: fits the current table to its live entries (maybe_resize with fit)
  /// and finishes the migration, a few times while that still shrinks it.
  void fit_table() const;
  /// t is (or is about to be) too small for what migration and writers put into it: links a
  /// successor sized for everything the chain below t can hold, unless t has one already, and
  /// publishes it. Works whether or not t is still assimilating an older table.
  void grow_stuck(TableHeader* t) const;
  /// Links n_off as t's successor (or, if t has one already, frees n_off and adopts that one)
  /// and publishes it as the current table. Returns the successor's offset.
  std::uint64_t link_successor(TableHeader* t, std::uint64_t n_off) const;
  /// The newest table: current_table, or past it a successor linked but not yet published
  /// (its linker stopped or died between the two steps). Writers publish what they pass.
  /// *top (if given) receives the newest table's header, validated by table().
  std::uint64_t top_table(bool publish, TableHeader** top = nullptr) const;
  TableHeader* top_header(bool publish) const {
    TableHeader* t = nullptr;
    top_table(publish, &t);
    return t;
  }
  /// The chain from t down: out[0] = t, out[i + 1] = out[i]->older. Returns its length.
  std::size_t load_chain(TableHeader* t, TableHeader** out) const;
  /// Throws corrupt if t, the newest table, has no successor although one of its buckets
  /// says its key moved on (only damage writes that; a retry would spin for ever).
  void check_forward(TableHeader* t) const;
  CheckReport check() const;
  /// Adds a note to rep when the size counter differs from the `live` entries a walk counted.
  void note_size_counter(CheckReport* rep, std::size_t live) const;

  std::uint64_t home(std::uint64_t k, const TableHeader* t) const {
    return home_of(hash_key(k, seed_), t->capacity);
  }

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

  // ---- point-in-time snapshots and bulk loads (table.cpp) -----------------------------------
  /// Holds writers back (they wait before writing; readers never wait) until release_writers().
  /// Returns once every write already under way has finished. A holder that dies is noticed by
  /// the waiting writers, which then proceed.
  /// `extra_bytes`: memory the holder will build under the hold (a merge's new table); the
  /// lease grows with it as with the tables.
  void hold_writers(std::uint64_t extra_bytes = 0) const;
  /// How long a hold taken now may last: kWriterHoldLeaseNs plus 1 s per 256 MiB of tables
  /// (and of extra_bytes).
  std::uint64_t writer_hold_lease_ns(std::uint64_t extra_bytes) const;
  /// A hold gives up waiting for writes in flight after this long (a stopped writer).
  static constexpr std::chrono::milliseconds kInFlightWait{1000};
  /// False if the hold was broken meanwhile (its lease ran out: the copy is not point-in-time).
  bool release_writers() const;
  bool still_holding_writers() const;
  /// A fresh, unpublished table sized for `entries`.
  std::uint64_t build_table(std::size_t entries) const;
  /// Puts k -> v into an unpublished table (single-threaded; the last value wins).
  void bulk_put(std::uint64_t table, std::uint64_t k, std::uint64_t v) const;
  /// The same for n entries at once: their buckets are prefetched first, so the cache misses
  /// of a random fill overlap.
  void bulk_put_many(std::uint64_t table, const std::pair<std::uint64_t, std::uint64_t>* kv,
                     std::size_t n) const;
  /// Makes the table the map's whole content in one atomic step; the old content is discarded
  /// (writers still in the old table are sealed out and retry in the new one).
  void publish_replace(std::uint64_t table) const;
  void discard_table(std::uint64_t table) const;

  // Used by mutate(); exposed for tests of the protocol.
  /// Looks k up in t; with claim, claims an EMPTY bucket for k if k has none. A `writer`
  /// probe (claim implies it) writes the fingerprints a dead or slow claimer left unwritten
  /// on its way (layout.hpp, "Fingerprints"); a reader's never writes.
  ProbeResult probe(TableHeader* t, std::uint64_t k, bool claim, bool writer) const;
  ProbeResult probe(TableHeader* t, std::uint64_t k, bool claim) const {
    return probe(t, k, claim, claim);
  }
  /// Moves bucket i of `older` into `newer` (freeze, copy, mark MOVED); idempotent.
  void move_bucket(TableHeader* older, std::uint64_t i, TableHeader* newer) const;
  /// Makes `newer` authoritative for k: moves k's bucket in `older`, or seals its probe run.
  void settle(TableHeader* older, TableHeader* newer, std::uint64_t k) const;
  /// Migrates up to `chunks` chunks of newer->older; returns true once migration is complete.
  /// A chain of three or more finishes the oldest migration first (depth: recursion guard).
  bool help_migrate(TableHeader* newer, std::size_t chunks, std::size_t depth = 0) const;
  bool note_claim(TableHeader* t) const;
  std::uint64_t used_buckets(const TableHeader* t) const;
  void copy_frozen(BucketRef b, Cell c, TableHeader* newer) const;
  /// A size-changing CAS of b from c to {value, state}, recorded in this thread's lane first
  /// (as a write is), so that `delta` is added to the size exactly once even if this process
  /// dies between the CAS and the count. Returns whether the CAS landed.
  bool counted_cas(Slot& b, const Cell& c, std::uint64_t value, std::uint64_t state,
                   std::int64_t delta) const;
  /// Adds a bulk-loaded table's entry count to the size, exactly once (TableHeader::bulk).
  void help_bulk(TableHeader* t) const;
  /// Returns once no point-in-time hold of another writer is in force (the common case, no
  /// gate set, is one load here; the Dekker argument is at wait_for_gate_slow in table.cpp).
  void wait_for_gate() const {
    if (header().writer_gate.load(std::memory_order_seq_cst) != 0) wait_for_gate_slow();
  }
  void wait_for_gate_slow() const;
  /// The gate is held by this Map *and* this thread (its other threads wait like any writer).
  bool gate_is_mine(std::uint64_t gate) const;
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
  // Which thread of this Map holds the writer gate: its thread_number() + 1, 0 = none.
  mutable std::atomic<std::uint64_t> gate_thread_{0};

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
