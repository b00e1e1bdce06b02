// shmap — the public Map: thin wrappers over MapImpl, plus stats, readers and check.
#include <algorithm>
#include <bit>
#include <chrono>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap {

using detail::MapImpl;
using detail::WriteIntent;

Map::Map(std::unique_ptr<MapImpl> impl) : impl_(std::move(impl)), front_(impl_->fast_front()) {}
Map::Map(Map&& other) noexcept
    : impl_(std::move(other.impl_)), front_(std::exchange(other.front_, nullptr)) {}
Map& Map::operator=(Map&& other) noexcept {
  impl_ = std::move(other.impl_);
  front_ = std::exchange(other.front_, nullptr);
  return *this;
}
Map::~Map() = default;

Map Map::create(const std::string& name, const Options& options) {
  bool existed = false;
  return Map(MapImpl::create(name, options, true, &existed));
}

Map Map::open(const std::string& name) { return Map(MapImpl::open(name)); }

Map Map::open(const std::string& name, const OpenOptions& options) {
  return Map(MapImpl::open(name, options.clear_stale_handles, options.read_only));
}

Map Map::open_or_create(const std::string& name, const Options& options) {
  bool created = false;
  return open_or_create(name, options, &created);
}

Map Map::open_or_create(const std::string& name, const Options& options, bool* created) {
  // Racing creators: exactly one shm_open(O_EXCL) succeeds; the others open what it made
  // (waiting for its initialisation). A remove() between the two steps just means retry.
  for (int attempt = 0;; ++attempt) {
    bool existed = false;
    if (auto impl = MapImpl::create(name, options, false, &existed)) {
      if (created != nullptr) *created = true;
      return Map(std::move(impl));
    }
    try {
      Map m(MapImpl::open(name));
      if (created != nullptr) *created = false;
      return m;
    } catch (const Error& e) {
      if (e.code() != Errc::not_found || attempt > 100) throw;
    }
  }
}

const std::string& Map::name() const { return impl_->name(); }

bool Map::read_only() const { return impl_->read_only(); }

namespace {
/// Writes through a read-only attachment are refused before they touch anything.
void refuse_if_read_only(const MapImpl& m, const char* what) {
  if (m.read_only()) [[unlikely]] {
    detail::fail(Errc::permission_denied, m.name(),
                 std::string(what) +
                     " through a read-only attachment; open the map read-write (this needs "
                     "write permission on /dev/shm/" +
                     m.name() + ")");
  }
}
}  // namespace

bool Map::insert(std::uint64_t k, std::uint64_t v) {
  refuse_if_read_only(*impl_, "insert");
  return !impl_
              ->mutate(k, true,
                       [v](std::optional<std::uint64_t> cur) {
                         return cur ? WriteIntent{} : WriteIntent{WriteIntent::set, v};
                       })
              .has_value();
}

bool Map::insert_or_assign(std::uint64_t k, std::uint64_t v) {
  refuse_if_read_only(*impl_, "insert_or_assign");
  return !impl_
              ->mutate(k, true,
                       [v](std::optional<std::uint64_t>) {
                         return WriteIntent{WriteIntent::set, v};
                       })
              .has_value();
}

std::optional<std::uint64_t> Map::find_slow(std::uint64_t k) const {
  if (impl_->read_only()) [[unlikely]]
    return impl_->find_read_only(k);
  std::uint64_t v = 0;
  const bool found = impl_->find(k, &v);
  return detail::make_optional_fast(found, v);
}

bool Map::find_slow(std::uint64_t k, std::uint64_t* value) const {
  if (impl_->read_only()) [[unlikely]] {
    const std::optional<std::uint64_t> v = impl_->find_read_only(k);
    if (v) *value = *v;
    return v.has_value();
  }
  std::uint64_t v = 0;
  if (!impl_->find(k, &v)) return false;
  *value = v;
  return true;
}

Map::Session::Session(const Map& map)
    : m_(map.impl_.get()), thread_(detail::thread_number()), seed_(map.impl_->seed()) {
  m_->pin();
}

Map::Session::~Session() {
  // Only the thread that made the session holds its pin. Destroyed on another thread (invalid,
  // and a destructor cannot say so) it must not end that thread's pins -- their nesting count
  // would wrap and its later operations would run unpinned. The maker's lane then stays
  // pinned until the Map closes: retired tables are held back, nothing is unsafe.
  if (detail::thread_number() == thread_) m_->unpin();  // noexcept: unpin never throws
}

void Map::Session::wrong_thread() const {
  detail::fail(Errc::invalid_argument, m_->name(),
               "a Map::Session was used from a thread other than the one that made it; make one "
               "Session per thread");
}

std::optional<std::uint64_t> Map::Session::find_slow(std::uint64_t k) {
  // A read-only attachment's pin protects nothing: no view is kept (have_view_ stays false),
  // and each lookup is validated on the read-only path.
  if (m_->read_only()) [[unlikely]] {
    return m_->find_read_only(k);
  }
  // The view stays valid while we are pinned (its table cannot be freed), and find() uses it
  // only while its table is still current_table: once another table is published (a resize,
  // or a bulk load's replacement, whose old content is discarded, not settled key by key) the
  // next lookup comes here and the view is read again. A lookup that checked just before the
  // publication answers from the old table concurrently with it: for a resize a writer
  // settles a key in the old table (sealing or freezing its bucket) before writing it
  // anywhere newer, and the fast path leaves those states to the slow path.
  have_view_ = m_->fast_table(&view_);
  std::uint64_t v = 0;
  const bool found = m_->find_slow(k, &v);
  return detail::make_optional_fast(found, v);
}

std::size_t Map::find_many(std::span<const std::uint64_t> keys,
                           std::span<std::optional<std::uint64_t>> out) const {
  if (out.size() < keys.size()) {
    detail::fail(Errc::invalid_argument, impl_->name(),
                 "find_many: " + std::to_string(keys.size()) + " keys but room for only " +
                     std::to_string(out.size()) +
                     " results; pass an output span at least as "
                     "long as the keys");
  }
  if (impl_->read_only()) [[unlikely]] {
    std::size_t found = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      out[i] = impl_->find_read_only(keys[i]);
      found += out[i].has_value();
    }
    return found;
  }
  return impl_->find_many(keys.data(), keys.size(), out.data());
}

bool Map::erase(std::uint64_t k) {
  refuse_if_read_only(*impl_, "erase");
  return impl_
      ->mutate(k, false,
               [](std::optional<std::uint64_t> cur) {
                 return cur ? WriteIntent{WriteIntent::erase} : WriteIntent{};
               })
      .has_value();
}

bool Map::compare_exchange(std::uint64_t k, std::uint64_t expected, std::uint64_t desired) {
  refuse_if_read_only(*impl_, "compare_exchange");
  const auto prev = impl_->mutate(k, false, [=](std::optional<std::uint64_t> cur) {
    return cur && *cur == expected ? WriteIntent{WriteIntent::set, desired} : WriteIntent{};
  });
  return prev && *prev == expected;
}

std::uint64_t Map::fetch_add(std::uint64_t k, std::uint64_t delta) {
  refuse_if_read_only(*impl_, "fetch_add");
  return impl_
      ->mutate(k, true,
               [delta](std::optional<std::uint64_t> cur) {
                 return WriteIntent{WriteIntent::set, cur.value_or(0) + delta};
               })
      .value_or(0);
}

std::size_t Map::size() const {
  return static_cast<std::size_t>(std::max<std::int64_t>(0, impl_->size_estimate()));
}

void Map::for_each_impl(void (*fn)(void*, std::uint64_t, std::uint64_t), void* ctx) const {
  if (impl_->read_only()) return impl_->for_each_read_only(fn, ctx);
  impl_->for_each(fn, ctx);
}

std::size_t Map::clear_stale_handles() {
  refuse_if_read_only(*impl_, "clear_stale_handles");
  return impl_->handles().clear_stale_slots();
}

void Map::compact() {
  refuse_if_read_only(*impl_, "compact");
  impl_->finish_migration();
  impl_->fit_table();
  impl_->handles().clear_stale_slots();
  impl_->sweep_leaks(true);  // tables a killed process left off the retired stack
  impl_->reclaim();
}

Stats Map::stats() const {
  using namespace detail;
  const MapImpl& m = *impl_;
  const SegmentHeader& h = m.header();
  Stats s;
  s.size = size();
  auto tables = [&] {
    PinGuard pin(m);
    TableHeader* t = m.table(h.current_table.load(std::memory_order_seq_cst));
    s.capacity = t->capacity;
    s.used_buckets = m.used_buckets(t);
    TableHeader* chain[kMaxChain];
    s.tables = m.load_chain(t, chain);
    s.migration_total = s.migration_done = 0;
    if (s.tables > 1) {
      const std::uint64_t ocap = chain[1]->capacity;
      s.migration_total = ocap / std::min<std::uint64_t>(kChunk, ocap);
      s.migration_done = t->mig_done.load(std::memory_order_relaxed);
    }
  };
  if (m.read_only()) {
    m.read_validated("stat", tables);
  } else {
    tables();
  }
  s.handles_in_use = m.handles().slots_in_use();
  {
    PinGuard pin(m);
    s.retired_pending = m.handles().retired_count();
  }
  s.max_handles = m.max_handles();
  s.segment_bytes = h.file_bytes.load(std::memory_order_relaxed);
  s.allocated_bytes = m.segment().allocated_bytes();
  s.global_epoch = h.global_epoch.load(std::memory_order_relaxed);
  s.resizes = h.resizes.load(std::memory_order_relaxed);
  s.tables_freed = h.tables_freed.load(std::memory_order_relaxed);
  s.format_version = h.format_version;
  s.options.initial_capacity = h.initial_capacity;
  s.options.max_handles = m.max_handles();
  s.options.mode = static_cast<unsigned>(h.mode);
  s.options.max_bytes = h.max_bytes;
  return s;
}

std::vector<ReaderInfo> Map::readers() const { return impl_->handles().readers(); }

CheckReport Map::check() const {
  return impl_->read_only() ? impl_->check_read_only() : impl_->check();
}

}  // namespace shmap

namespace shmap::detail {

void MapImpl::note_size_counter(CheckReport* rep, std::size_t live) const {
  // A map of strings counts entries, which a walk of buckets does not see: DynamicMap::check
  // compares its count with the lists' entries.
  if (holds_strings(types())) return;
  const std::int64_t counted = size_estimate();
  if (counted != static_cast<std::int64_t>(live)) {
    rep->notes.push_back("size counter says " + std::to_string(counted) + ", the tables hold " +
                         std::to_string(live) +
                         " (writers under way, or one was killed mid-write)");
  }
}

CheckReport MapImpl::check() const {
  CheckReport rep;
  auto problem = [&](std::string s) {
    rep.ok = false;
    rep.problems.push_back(std::move(s));
  };
  const SegmentHeader& h = header();
  rep.notes.push_back("header: magic, format version " + std::to_string(h.format_version) +
                      " and layout signature match this build");
  const std::uint64_t fb = h.file_bytes.load(std::memory_order_acquire);
  const std::uint64_t top = h.arena_top.load(std::memory_order_acquire);
  if (top > fb) problem("arena top " + std::to_string(top) + " lies past the object size");
  if (h.initial_capacity < kMinCapacity || (h.initial_capacity & (h.initial_capacity - 1)) != 0) {
    problem("initial capacity " + std::to_string(h.initial_capacity) + " is not a power of two");
  }
  // Validates a table's offset and header. The arena top is read again each time: the arena
  // grows under a live map, and a table allocated after our first read is not damage.
  auto table_ok = [&](std::uint64_t off, std::string* why) {
    const std::uint64_t arena_top = h.arena_top.load(std::memory_order_acquire);
    if (off < h.arena_offset || off >= arena_top || off % kPage != 0) {
      *why = "offset " + std::to_string(off) + " is outside the arena";
      return false;
    }
    ensure_mapped(off + kTableHeaderBytes);
    const auto* t = at<TableHeader>(off);
    // Atomic reads, each once: a retired table may be freed and its extent reused under us.
    auto word = [](const std::uint64_t& w) {
      return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_relaxed);
    };
    const std::uint64_t cap = word(t->capacity), bits = word(t->bits);
    const std::uint64_t ext = word(t->extent_bytes);
    if (!table_shape_ok(cap, bits) || ext < table_bytes(cap) || ext > arena_top - off) {
      *why = "table at " + std::to_string(off) + " has a bad header";
      return false;
    }
    ensure_mapped(off + ext);
    return true;
  };
  // Leaked tables (before pinning: the sweep waits for every pinned operation to end).
  const LeakScan leaks = sweep_leaks(false);
  if (!leaks.done) {
    rep.notes.push_back(
        "leaked tables: not looked for (another process is reclaiming, or one is stopped "
        "inside an operation); run check again");
  } else if (leaks.tables != 0) {
    problem(std::to_string(leaks.tables) + " tables (" + std::to_string(leaks.bytes >> 10) +
            " KiB) are leaked: unlinked but never retired, or made by a process that died "
            "before linking them; 'shmap compact " +
            name() + "' gives them back");
  } else {
    rep.notes.push_back("every table extent is in use, retired or free: nothing leaked");
  }
  PinGuard pin(*this);
  // The chain, newest first: current_table, past it a successor linked but not yet published,
  // and the older tables being assimilated.
  std::vector<TableHeader*> chain;
  {
    std::string why;
    std::uint64_t off = h.current_table.load(std::memory_order_seq_cst);
    if (!table_ok(off, &why)) {
      problem("current " + why);
      return rep;
    }
    for (std::size_t i = 0; i < kMaxChain; ++i) {
      const std::uint64_t nx = at<TableHeader>(off)->newer.load(std::memory_order_acquire);
      if (nx == 0) break;
      if (!table_ok(nx, &why)) {
        problem("successor " + why);
        return rep;
      }
      if (i == 0) rep.notes.push_back("a successor is linked but not yet published");
      off = nx;
    }
    for (;;) {
      chain.push_back(at<TableHeader>(off));
      off = chain.back()->older.load(std::memory_order_acquire);
      if (off == 0) break;
      if (chain.size() == kMaxChain) {
        problem("the table chain is longer than " + std::to_string(kMaxChain) +
                " tables (damaged, or a cycle)");
        return rep;
      }
      if (!table_ok(off, &why)) {
        problem("older " + why);
        return rep;
      }
    }
  }
  std::vector<std::uint64_t> newer_keys;  // keys with a bucket in a newer table (sorted)
  std::size_t live = 0;
  auto walk = [&](TableHeader* t, const std::string& what) {
    auto slot = [&](std::uint64_t i) -> const Slot& { return *bucket(t, i).slot; };
    const std::uint8_t* fps = fingerprints(t);
    auto fp_at = [&](std::uint64_t i) {
      return std::atomic_ref<const std::uint8_t>(fps[i]).load(std::memory_order_acquire);
    };
    std::vector<std::uint64_t> keys;
    std::size_t bad_states = 0, unreachable = 0, claimed = 0, bad_fps = 0;
    for (std::uint64_t i = 0; i < t->capacity; ++i) {
      // The bucket, then its fingerprint, then the bucket's meta again: if the meta did not
      // change, the fingerprint was read while the bucket was in that state, and the state
      // bounds what it may be (layout.hpp, "Fingerprints"). A bucket that keeps changing
      // under us (a writer loop) is judged by its last reading without the fingerprint.
      Cell c = read_cell(slot(i));
      std::uint8_t f = fp_at(i);
      bool fp_known = false;
      for (int tries = 0; tries < 64; ++tries) {
        const std::uint64_t again = load_acquire(slot(i).meta);
        if (again == c.meta) {
          fp_known = true;
          break;
        }
        c = read_cell(slot(i));
        f = fp_at(i);
      }
      const std::uint64_t s = c.state();
      if (s > kSealed) {
        ++bad_states;
        continue;
      }
      if (!fp_known) f = kFpSealing;  // legal with any state: not judged
      // 1 (sealing) is legal on any bucket of a migrated table.
      if (s == kEmpty || s == kSealed) {
        if (f != kFpFree && f != kFpSealing) ++bad_fps;
        continue;
      }
      ++claimed;
      const std::uint64_t k = s == kClaimed ? c.value : load_acquire(*bucket(t, i).key);
      keys.push_back(k);
      if ((s == kLive || s == kFrozen) &&
          !std::binary_search(newer_keys.begin(), newer_keys.end(), k)) {
        ++live;
      }
      const std::uint8_t want = fingerprint(hash_key(k, seed_));
      // A written key (LIVE, TOMB, FROZEN) has its fingerprint; a CLAIMED or MOVED bucket may
      // still have 0 (its claimer died before writing it).
      if (f != want && f != kFpSealing &&
          (f != kFpFree || s == kLive || s == kTomb || s == kFrozen)) {
        ++bad_fps;
      }
      // Linear probing: no EMPTY bucket between the key's home and its bucket, and no
      // fingerprint 0 (a lookup stops there; writers write them before claiming further on).
      for (std::uint64_t j = home(k, t); j != i; j = next_bucket(j, t->capacity)) {
        const std::uint64_t sj = state_of(load_acquire(slot(j).meta));
        if (sj == kEmpty || fp_at(j) == kFpFree) {
          ++unreachable;
          break;
        }
      }
    }
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end()) problem(what + " table holds key " + std::to_string(*dup) + " twice");
    if (bad_states != 0)
      problem(what + " table: " + std::to_string(bad_states) + " buckets in an unknown state");
    if (unreachable != 0)
      problem(what + " table: " + std::to_string(unreachable) +
              " keys not reachable from their home bucket");
    if (bad_fps != 0)
      problem(what + " table: " + std::to_string(bad_fps) +
              " fingerprints that disagree with their bucket (lookups may miss keys)");
    rep.notes.push_back(what + " table: capacity " + std::to_string(t->capacity) + ", " +
                        std::to_string(claimed) +
                        " claimed buckets, keys unique and reachable, fingerprints agree");
    std::vector<std::uint64_t> merged;
    std::merge(newer_keys.begin(), newer_keys.end(), keys.begin(), keys.end(),
               std::back_inserter(merged));
    newer_keys.swap(merged);
    return claimed;
  };
  for (std::size_t i = 0; i < chain.size(); ++i) {
    const std::size_t claimed =
        walk(chain[i],
             i == 0 ? std::string("current") : "older (" + std::to_string(i) + " below current)");
    // A table still assimilating an older one must have room for what is left to copy. A
    // full one with no successor cannot finish its migration until a write links one (this
    // build's writers do so at once; a map left so by an earlier build heals on its next
    // write or on compact()). Looked at again before it is called a problem: under load the
    // writer that filled it replaces it within microseconds.
    if (i == 0 && chain.size() > 1 && claimed >= chain[0]->capacity) {
      bool still = true;
      for (int again = 0; again < 3 && still; ++again) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        still = h.current_table.load(std::memory_order_seq_cst) == offset_of(chain[0]) &&
                chain[0]->newer.load(std::memory_order_acquire) == 0 &&
                chain[0]->older.load(std::memory_order_acquire) != 0;
      }
      if (still) {
        problem(
            "the current table is full but still assimilating an older table: its "
            "migration cannot finish until a write (or 'compact') replaces it with a larger "
            "one");
      }
    }
  }
  rep.live_entries = live;
  if (chain.size() > 1) {
    rep.notes.push_back("migration under way: " + std::to_string(chain.size()) +
                        " tables in the chain");
  }
  // The retired stack changes under a live map (reclaimers pop it whole and free what they
  // can), so a link read from a table freed meanwhile is not damage: the walk is trusted only
  // if no table was freed while it ran, and tried again otherwise.
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t freed_before = h.tables_freed.load(std::memory_order_acquire);
    std::size_t retired = 0;
    std::string bad;
    for (std::uint64_t off = h.retired_head.load(std::memory_order_acquire);
         off != 0 && retired <= 1000000; ++retired) {
      std::string why;
      if (!table_ok(off, &why)) {
        bad = "retired " + why;
        break;
      }
      // Acquire: pairs with the reclaimer's release store of the link.
      off = std::atomic_ref<const std::uint64_t>(at<TableHeader>(off)->retired_next)
                .load(std::memory_order_acquire);
    }
    if (retired > 1000000) bad = "the retired-table stack does not end (a cycle)";
    if (h.tables_freed.load(std::memory_order_acquire) != freed_before) {
      if (attempt < 5) continue;
      rep.notes.push_back("retired tables: being reclaimed while checked; not verified");
      break;
    }
    if (!bad.empty()) problem(bad);
    rep.notes.push_back(std::to_string(retired) + " retired tables awaiting reclamation");
    break;
  }
  const std::size_t dead = handles_.dead_slots();
  if (dead != 0)
    rep.notes.push_back(
        std::to_string(dead) +
        " handle slots belong to dead processes ('shmap readers --clear-stale' frees them)");
  note_size_counter(&rep, live);
  return rep;
}

}  // namespace shmap::detail
