// shmap — a lock-free uint64 -> uint64 hash map in a named POSIX shared-memory segment.
//
// Many processes, each with many threads, attach to one map by name and read, write, grow,
// shrink and snapshot it at once, with no server and no lock on the common path:
//
//   auto m = shmap::Map::open_or_create("prices", {.initial_capacity = 1024});
//   m.insert_or_assign(42, 7);
//   if (auto v = m.find(42)) use(*v);
//
// Every key (0 and UINT64_MAX included) and every value is storable: the table keeps its
// bucket states in a separate word, so no value pattern is reserved. The design is in
// docs/DESIGN.md, the segment and table layout in docs/FORMAT.md and
// include/shmap/detail/layout.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmap/detail/fast_path.hpp"
#include "shmap/error.hpp"

namespace shmap {

class DynamicMap;
namespace detail {
class MapImpl;
}  // namespace detail

struct Options {
  /// Buckets of the first table (rounded up to a power of two, at least 8). The map never
  /// shrinks below this.
  std::size_t initial_capacity = 1024;
  /// Handle slots: how many Map objects (across all processes) can be attached at once.
  std::size_t max_handles = 128;
  /// Permission bits of the shared-memory object, applied exactly (not masked by umask).
  unsigned mode = 0600;
  /// Largest size the segment may grow to. Each attached Map reserves this much address space
  /// (not memory); growing past it is an out_of_space error.
  std::size_t max_bytes = std::size_t{64} << 30;
};

struct Stats {
  std::size_t size = 0;            // live entries (exact when no writer is mid-operation)
  std::size_t capacity = 0;        // buckets of the current table
  std::size_t tables = 0;          // length of the table chain: 1, 2 while migrating (more
                                   // while a successor found too small is replaced)
  std::size_t handles_in_use = 0;  // slots owned by a process (live or not yet reclaimed)
  std::size_t max_handles = 0;
  std::size_t segment_bytes = 0;    // size of the shared-memory object
  std::size_t allocated_bytes = 0;  // bytes the segment really occupies (st_blocks)
  std::size_t used_buckets = 0;     // claimed buckets of the current table (live + tombstones)
  std::size_t migration_total = 0;  // chunks of the older table to migrate (0 when none)
  std::size_t migration_done = 0;   // chunks of it already migrated
  std::size_t retired_pending = 0;  // unlinked tables waiting for readers to move on
  std::uint64_t global_epoch = 0;
  std::uint64_t resizes = 0;       // tables created since the map was made
  std::uint64_t tables_freed = 0;  // retired tables given back to the system
  std::uint32_t format_version = 0;
  Options options;  // creation options
};

/// One handle slot in use (what `shmap readers` shows).
struct ReaderInfo {
  std::size_t slot = 0;
  int pid = 0;
  bool alive = false;
  bool self = false;                      // owned by this Map object
  std::size_t pinned_lanes = 0;           // threads of it inside an operation right now
  std::uint64_t oldest_pinned_epoch = 0;  // valid when pinned_lanes > 0
  std::uint64_t opened_at_unix_ns = 0;
};

/// What Map::check() found (what `shmap check` prints).
struct CheckReport {
  bool ok = true;
  std::vector<std::string> problems;  // empty when ok
  std::vector<std::string> notes;     // what was verified
  std::size_t live_entries = 0;       // counted by walking the tables
};

struct OpenOptions {
  /// Free the handle slots of dead processes while attaching (the default). Inspection tools
  /// (`shmap readers`) turn it off so that they can show those slots first. Ignored when
  /// read_only (a read-only attachment writes nothing).
  bool clear_stale_handles = true;
  /// Attach for reading only: the segment is opened O_RDONLY and mapped PROT_READ, so read
  /// permission on it is enough (a map created with mode 0644 can be read by other users), and
  /// the attachment takes no handle slot (it works when every slot is taken) and writes nothing
  /// to shared memory. Lookups, for_each, size, stats, readers, check and dump (not
  /// point-in-time) work; every write (and compact, clear_stale_handles, a point-in-time dump)
  /// throws permission_denied. Without a slot a reader cannot hold back the reclamation of a
  /// table it reads, so each read copies what it finds and keeps it only if no table was
  /// retired meanwhile (the global epoch did not move), else it reads again: a map that resizes
  /// without pause can make a long read-only walk fail with Errc::timeout (docs/DESIGN.md,
  /// "Read-only attachments").
  bool read_only = false;
};

/// Snapshot options (see docs/FORMAT.md). Implemented in src/snapshot.cpp.
struct DumpOptions {
  bool json = false;           // write the JSON form instead of the binary one
  bool point_in_time = false;  // hold writers back while copying (readers never wait)
};

/// A load's choice of creation options for the map it creates: each one left empty is the
/// snapshot's (the source map's options, recorded in every binary snapshot and in the JSON
/// form's header; a JSON file without a header gets the Options defaults).
struct CreationOverrides {
  std::optional<std::size_t> initial_capacity =
      std::nullopt;  // raised to fit the snapshot in any case
  std::optional<std::size_t> max_handles = std::nullopt;
  std::optional<unsigned> mode = std::nullopt;
  std::optional<std::size_t> max_bytes = std::nullopt;
};

struct LoadOptions {
  enum class Mode { create, replace, merge };
  Mode mode = Mode::create;   // create a new map / replace the content / merge into it (file
                              // wins; all or nothing; writers wait while it runs)
  CreationOverrides options;  // for Mode::create: the new map's options, by default the
                              // snapshot's (dump -> rm -> load gives back the same map)
};

class Map {
 public:
  static Map create(const std::string& name, const Options& options = {});
  static Map open(const std::string& name);
  static Map open(const std::string& name, const OpenOptions& options);
  /// Opens map `name`, creating it with `options` if there is none. When the map exists its
  /// own creation options stay: `options` are ignored (compare stats().options to see them).
  static Map open_or_create(const std::string& name, const Options& options = {});
  /// The same; *created says whether this call made the map (false: it opened one).
  static Map open_or_create(const std::string& name, const Options& options, bool* created);
  /// Unlinks the segment; processes attached keep using it until they close. False if absent.
  static bool remove(const std::string& name);
  /// Names of the shmap segments on this machine (objects in /dev/shm with a shmap header).
  static std::vector<std::string> list();
  /// The same; *unreadable receives the regular files in /dev/shm this process may not open
  /// (they may be maps: they cannot be told apart).
  static std::vector<std::string> list(std::vector<std::string>* unreadable);
  /// Throws invalid_argument unless `name` can name a map: 1 to 200 characters of
  /// [A-Za-z0-9._-], not "." or "..".
  static void validate_name(const std::string& name);

  Map(Map&&) noexcept;
  Map& operator=(Map&&) noexcept;
  Map(const Map&) = delete;
  Map& operator=(const Map&) = delete;
  ~Map();

  /// Inserts k -> v if k is absent. Returns false (and changes nothing) if k is present.
  bool insert(std::uint64_t k, std::uint64_t v);
  /// Sets k -> v. Returns true if k was absent.
  bool insert_or_assign(std::uint64_t k, std::uint64_t v);
  /// The value of k, or nullopt. Inline: the common case (the key in the current table, or
  /// absent with no migration running) calls nothing in the library, so that a loop of finds
  /// is short enough for the CPU to overlap the cache misses of several lookups.
  std::optional<std::uint64_t> find(std::uint64_t k) const {
    std::uint64_t v = 0;
    const detail::Fast r =
        front_ != nullptr ? detail::find_front(*front_, k, &v) : detail::Fast::slow;
    if (r == detail::Fast::slow) [[unlikely]] {
      return find_slow(k);
    }
    return detail::make_optional_fast(r == detail::Fast::hit, v);
  }
  /// The same lookup, with no std::optional: true and `value` set if k is present, false (and
  /// `value` unchanged) if not. Always inlined: in a loop of lookups its common case is a
  /// straight run of instructions with no call and no std::optional built in memory, so more
  /// lookups fit in the CPU's window at once and more of their cache misses overlap.
  [[gnu::always_inline]] bool find(std::uint64_t k, std::uint64_t& value) const {
    std::uint64_t v = 0;
    const detail::Fast r =
        front_ != nullptr ? detail::find_front(*front_, k, &v) : detail::Fast::slow;
    if (r == detail::Fast::slow) [[unlikely]] {
      return find_slow(k, &value);
    }
    if (r == detail::Fast::hit) value = v;
    return r == detail::Fast::hit;
  }
  bool contains(std::uint64_t k) const {
    std::uint64_t v;
    return find(k, v);
  }
  /// Looks up every key of `keys`: out[i] is keys[i]'s value, or nullopt when absent. Returns
  /// how many were found. Each lookup is atomic on its own, exactly as find(); the batch as a
  /// whole is not a snapshot. On a map larger than the CPU caches this is several times the
  /// speed of a loop of find(): the buckets of a group of keys are fetched in parallel.
  /// `out` must hold at least keys.size() elements (else invalid_argument, nothing written).
  std::size_t find_many(std::span<const std::uint64_t> keys,
                        std::span<std::optional<std::uint64_t>> out) const;
  /// Removes k. Returns false if k was absent.
  bool erase(std::uint64_t k);
  /// Put-if-match: sets k -> desired only if k is present with value `expected`.
  bool compare_exchange(std::uint64_t k, std::uint64_t expected, std::uint64_t desired);
  /// Adds delta (mod 2^64) and returns the previous value; an absent key counts as 0.
  std::uint64_t fetch_add(std::uint64_t k, std::uint64_t delta);

  std::size_t size() const;
  bool empty() const { return size() == 0; }

  /// Calls f(key, value) for the entries. Weakly consistent: every entry present for the
  /// whole walk is visited exactly once with a value it held during the walk; entries inserted
  /// or erased meanwhile may or may not be. f may call this map's operations.
  template <class F>
  void for_each(F&& f) const {
    auto thunk = [](void* ctx, std::uint64_t k, std::uint64_t v) {
      (*static_cast<std::remove_reference_t<F>*>(ctx))(k, v);
    };
    for_each_impl(thunk, const_cast<void*>(static_cast<const void*>(&f)));
  }

  /// Frees the handle slots of processes that died without closing. Returns how many.
  std::size_t clear_stale_handles();
  Stats stats() const;
  std::vector<ReaderInfo> readers() const;
  /// Walks the segment and verifies every invariant it can. Never modifies the map.
  CheckReport check() const;
  /// Finishes any migration in progress, fits the table to the live entries (the smallest
  /// capacity that holds them at a load of at most 0.7, if smaller than the current one: a
  /// migration like a resize, lock-free, with readers and writers going on) and frees retired
  /// tables nobody can see any more.
  void compact();

  const std::string& name() const;
  /// True for a read-only attachment (OpenOptions::read_only).
  bool read_only() const;

  // Snapshots (src/snapshot.cpp; format and guarantees in docs/FORMAT.md).
  /// Writes a snapshot to `path`, which appears only when complete (a temporary beside it is
  /// renamed into place) with this map's permission bits. Only a regular file is replaced (a
  /// symbolic link is written through to the regular file it names); a FIFO, device or
  /// directory is refused (invalid_argument). "-" is standard output, written as it goes.
  void dump(const std::string& path, const DumpOptions& options = {}) const;
  /// Reads a snapshot (binary or JSON) into map `name`; a bad file changes nothing. `path` must
  /// be a regular file; "-" is standard input (a pipe will do).
  static Map load(const std::string& path, const std::string& name,
                  const LoadOptions& options = {});

  /// A run of lookups under one pin, for a thread that does many in a row (a strategy loop
  /// reading prices): each find() skips the pin, the unpin and the reload of the current
  /// table that Map::find pays, and answers exactly as Map::find would. Like an LMDB read
  /// transaction, a Session holds the tables it can see alive while it lasts (memory, never
  /// correctness), so keep it short: seconds, not hours.
  ///   - It belongs to the thread that made it: use from another thread is invalid_argument.
  ///     Destroyed on another thread, it leaves its thread's lane pinned until the Map closes
  ///     (retired tables are kept until then).
  ///   - On a read-only attachment it holds nothing back and each find() is a validated
  ///     read-only lookup (as Map::find there).
  ///   - The Map must outlive it. Writes through the Map meanwhile are fine, but then a
  ///     point-in-time dump waits for the session to end (at most 1 s, then the dump fails);
  ///     compact() and check() cannot look for leaked tables while it lasts.
  class Session {
   public:
    explicit Session(const Map& map);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    /// As Map::find. Inline: a loop of these is short enough for the CPU to overlap the cache
    /// misses of several lookups.
    std::optional<std::uint64_t> find(std::uint64_t k) {
      std::uint64_t v = 0;
      const detail::Fast r = find_in_view(k, &v);
      if (r == detail::Fast::slow) [[unlikely]] {
        return find_slow(k);
      }
      return detail::make_optional_fast(r == detail::Fast::hit, v);
    }
    /// As Map::find(k, value): no std::optional.
    [[gnu::always_inline]] bool find(std::uint64_t k, std::uint64_t& value) {
      std::uint64_t v = 0;
      const detail::Fast r = find_in_view(k, &v);
      if (r == detail::Fast::slow) [[unlikely]] {
        const std::optional<std::uint64_t> s = find_slow(k);
        if (s) value = *s;
        return s.has_value();
      }
      if (r == detail::Fast::hit) value = v;
      return r == detail::Fast::hit;
    }
    bool contains(std::uint64_t k) {
      std::uint64_t v;
      return find(k, v);
    }

   private:
    /// Both finds' common case: the lookup in the kept view (Fast::slow if the view is gone
    /// or replaced, or the lookup meets a migration state).
    [[gnu::always_inline]] detail::Fast find_in_view(std::uint64_t k, std::uint64_t* v) {
      if (detail::thread_number() != thread_) [[unlikely]] {
        wrong_thread();
      }
      // The view is used only while its table is still the current one (one load of a
      // read-mostly line): a table replaced by a bulk load is not settled key by key, so it
      // must not answer once Map::find would answer from the new one.
      return have_view_ && view_.current->load(std::memory_order_acquire) == view_.table
                 ? detail::find_fast(view_, k, detail::hash_key(k, seed_), v)
                 : detail::Fast::slow;
    }
    [[noreturn]] void wrong_thread() const;
    std::optional<std::uint64_t> find_slow(std::uint64_t k);  // and reads the view again
    const detail::MapImpl* m_;
    std::size_t thread_;
    std::uint64_t seed_;
    detail::FastView view_;
    bool have_view_ = false;
  };

  /// For the library's own compiled code (snapshots, CLI support); not a stable API.
  detail::MapImpl& impl() const { return *impl_; }

 private:
  friend class DynamicMap;
  explicit Map(std::unique_ptr<detail::MapImpl> impl);
  void for_each_impl(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const;
  std::optional<std::uint64_t> find_slow(std::uint64_t k) const;
  bool find_slow(std::uint64_t k, std::uint64_t* value) const;

  std::unique_ptr<detail::MapImpl> impl_;
  const detail::FastFront* front_ = nullptr;  // impl_'s, for the inline find; nullptr: none
};

}  // namespace shmap
