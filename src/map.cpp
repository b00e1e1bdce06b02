// shmap — the public Map: thin wrappers over MapImpl, plus stats, readers and check.
#include <algorithm>
#include <bit>
#include <chrono>
#include <thread>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap {

using detail::MapImpl;
using detail::WriteIntent;

Map::Map(std::unique_ptr<MapImpl> impl) : impl_(std::move(impl)) {}
Map::Map(Map&&) noexcept = default;
Map& Map::operator=(Map&&) noexcept = default;
Map::~Map() = default;

Map Map::create(const std::string& name, const Options& options) {
  bool existed = false;
  return Map(MapImpl::create(name, options, true, &existed));
}

Map Map::open(const std::string& name) { return Map(MapImpl::open(name)); }

Map Map::open(const std::string& name, const OpenOptions& options) {
  return Map(MapImpl::open(name, options.clear_stale_handles));
}

Map Map::open_or_create(const std::string& name, const Options& options) {
  // Racing creators: exactly one shm_open(O_EXCL) succeeds; the others open what it made
  // (waiting for its initialisation). A remove() between the two steps just means retry.
  for (int attempt = 0;; ++attempt) {
    bool existed = false;
    if (auto impl = MapImpl::create(name, options, false, &existed)) return Map(std::move(impl));
    try {
      return Map(MapImpl::open(name));
    } catch (const Error& e) {
      if (e.code() != Errc::not_found || attempt > 100) throw;
    }
  }
}

const std::string& Map::name() const { return impl_->name(); }

bool Map::insert(std::uint64_t k, std::uint64_t v) {
  return !impl_
              ->mutate(k, true,
                       [v](std::optional<std::uint64_t> cur) {
                         return cur ? WriteIntent{} : WriteIntent{WriteIntent::set, v};
                       })
              .has_value();
}

bool Map::insert_or_assign(std::uint64_t k, std::uint64_t v) {
  return !impl_
              ->mutate(k, true,
                       [v](std::optional<std::uint64_t>) {
                         return WriteIntent{WriteIntent::set, v};
                       })
              .has_value();
}

namespace detail {
// std::optional<uint64_t> as libstdc++ lays it out: the value, then the engaged flag. GCC 12
// builds an optional return with a byte store followed by a qword load of the same bytes (a
// store-forwarding stall on every lookup); bit_cast from two words avoids it. The layout is
// checked by Layout.OptionalReturnLayout.
struct OptionalWords {
  std::uint64_t value;
  std::uint64_t engaged;
};
static_assert(sizeof(OptionalWords) == sizeof(std::optional<std::uint64_t>));
inline std::optional<std::uint64_t> make_optional_fast(bool engaged, std::uint64_t v) {
  return std::bit_cast<std::optional<std::uint64_t>>(OptionalWords{engaged ? v : 0, engaged});
}
}  // namespace detail

std::optional<std::uint64_t> Map::find(std::uint64_t k) const {
  std::uint64_t v = 0;
  const bool found = impl_->find(k, &v);
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
  return impl_->find_many(keys.data(), keys.size(), out.data());
}

bool Map::erase(std::uint64_t k) {
  return impl_
      ->mutate(k, false,
               [](std::optional<std::uint64_t> cur) {
                 return cur ? WriteIntent{WriteIntent::erase} : WriteIntent{};
               })
      .has_value();
}

bool Map::compare_exchange(std::uint64_t k, std::uint64_t expected, std::uint64_t desired) {
  const auto prev = impl_->mutate(k, false, [=](std::optional<std::uint64_t> cur) {
    return cur && *cur == expected ? WriteIntent{WriteIntent::set, desired} : WriteIntent{};
  });
  return prev && *prev == expected;
}

std::uint64_t Map::fetch_add(std::uint64_t k, std::uint64_t delta) {
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
  impl_->for_each(fn, ctx);
}

std::size_t Map::clear_stale_handles() { return impl_->clear_stale_slots(); }

void Map::compact() {
  impl_->finish_migration();
  impl_->clear_stale_slots();
  impl_->reclaim();
}

Stats Map::stats() const {
  using namespace detail;
  const MapImpl& m = *impl_;
  const SegmentHeader& h = m.header();
  Stats s;
  s.size = size();
  {
    PinGuard pin(m);
    TableHeader* t = m.table(h.current_table.load(std::memory_order_seq_cst));
    s.capacity = t->capacity;
    s.used_buckets = m.used_buckets(t);
    s.tables = 1;
    if (const std::uint64_t o = t->older.load(std::memory_order_acquire); o != 0) {
      s.tables = 2;
      const std::uint64_t ocap = m.table(o)->capacity;
      s.migration_total = ocap / std::min<std::uint64_t>(kChunk, ocap);
      s.migration_done = t->mig_done.load(std::memory_order_relaxed);
    }
  }
  for (std::size_t i = 0; i < m.max_handles(); ++i) {
    if (m.slot(i).owner.owner.load(std::memory_order_relaxed) != 0) ++s.handles_in_use;
  }
  {
    PinGuard pin(m);
    s.retired_pending = m.retired_count();
  }
  s.max_handles = m.max_handles();
  s.segment_bytes = h.file_bytes.load(std::memory_order_relaxed);
  s.allocated_bytes = m.allocated_bytes();
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

std::vector<ReaderInfo> Map::readers() const {
  using namespace detail;
  const MapImpl& m = *impl_;
  std::vector<ReaderInfo> out;
  for (std::size_t i = 0; i < m.max_handles(); ++i) {
    const HandleSlot& s = m.slot(i);
    const std::uint64_t w = s.owner.owner.load(std::memory_order_acquire);
    if (w == 0) continue;
    ReaderInfo r;
    r.slot = i;
    r.pid = static_cast<int>(w & 0xffffffffu);
    r.alive = m.slot_owner_alive(i);
    r.self = w == m.owner_word_;
    r.opened_at_unix_ns = s.owner.opened_at_ns.load(std::memory_order_relaxed);
    r.oldest_pinned_epoch = UINT64_MAX;
    for (const Lane& lane : s.lanes) {
      const std::uint64_t p = lane.pin.load(std::memory_order_acquire);
      if ((p & kPinCountMask) == 0) continue;
      r.pinned_lanes += p & kPinCountMask;
      r.oldest_pinned_epoch = std::min(r.oldest_pinned_epoch, p >> 16);
    }
    if (r.pinned_lanes == 0) r.oldest_pinned_epoch = 0;
    out.push_back(r);
  }
  return out;
}

CheckReport Map::check() const { return impl_->check(); }

}  // namespace shmap

namespace shmap::detail {

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
  auto valid_table = [&](std::uint64_t off, const char* what) {
    if (off < h.arena_offset || off >= top || off % kPage != 0) {
      problem(std::string(what) + " table offset " + std::to_string(off) + " is outside the arena");
      return false;
    }
    ensure_mapped(off + kTableHeaderBytes);
    const auto* t = at<TableHeader>(off);
    if (off + t->extent_bytes > top) {
      problem(std::string(what) + " table at " + std::to_string(off) + " extends past the arena");
      return false;
    }
    ensure_mapped(off + t->extent_bytes);
    if (t->capacity < kMinCapacity || (t->capacity & (t->capacity - 1)) != 0 || t->bits >= 64 ||
        (std::uint64_t{1} << t->bits) != t->capacity || off + t->extent_bytes > top ||
        t->extent_bytes < table_bytes(t->capacity)) {
      problem(std::string(what) + " table at " + std::to_string(off) + " has a bad header");
      return false;
    }
    return true;
  };
  PinGuard pin(*this);
  const std::uint64_t cur_off = h.current_table.load(std::memory_order_seq_cst);
  if (!valid_table(cur_off, "current")) return rep;
  TableHeader* cur = table(cur_off);
  const std::uint64_t old_off = cur->older.load(std::memory_order_acquire);
  if (old_off != 0 && !valid_table(old_off, "older")) return rep;
  std::vector<std::uint64_t> cur_keys;
  std::size_t live = 0;
  auto walk = [&](TableHeader* t, const char* what, bool is_current) {
    Bucket* b = buckets(t);
    std::vector<std::uint64_t> keys;
    std::size_t bad_states = 0, unreachable = 0, claimed = 0;
    for (std::uint64_t i = 0; i < t->capacity; ++i) {
      const Cell c = read_cell(b[i]);
      const std::uint64_t s = c.state();
      if (s > kSealed) {
        ++bad_states;
        continue;
      }
      if (s == kEmpty || s == kSealed) continue;
      ++claimed;
      const std::uint64_t k = s == kClaimed ? c.value : load_acquire(b[i].key);
      keys.push_back(k);
      if (s == kLive || s == kFrozen) {
        if (is_current || !std::binary_search(cur_keys.begin(), cur_keys.end(), k)) {
          ++live;
        }
      }
      // Linear probing: no EMPTY bucket between the key's home and its bucket.
      for (std::uint64_t j = home(k, t); j != i; j = (j + 1) & (t->capacity - 1)) {
        const std::uint64_t sj = state_of(load_acquire(b[j].meta));
        if (sj == kEmpty) {
          ++unreachable;
          break;
        }
      }
    }
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end())
      problem(std::string(what) + " table holds key " + std::to_string(*dup) + " twice");
    if (bad_states != 0)
      problem(std::string(what) + " table: " + std::to_string(bad_states) +
              " buckets in an unknown state");
    if (unreachable != 0)
      problem(std::string(what) + " table: " + std::to_string(unreachable) +
              " keys not reachable from their home bucket");
    if (claimed > t->capacity)
      problem(std::string(what) + " table: more claimed buckets than capacity");
    rep.notes.push_back(std::string(what) + " table: capacity " + std::to_string(t->capacity) +
                        ", " + std::to_string(claimed) +
                        " claimed buckets, keys unique and reachable");
    return keys;
  };
  cur_keys = walk(cur, "current", true);
  if (old_off != 0) walk(table(old_off), "older", false);
  rep.live_entries = live;
  std::size_t retired = 0;
  for (std::uint64_t off = h.retired_head.load(std::memory_order_acquire);
       off != 0 && retired < 100000; ++retired) {
    if (!valid_table(off, "retired")) break;
    off = at<TableHeader>(off)->retired_next;
  }
  rep.notes.push_back(std::to_string(retired) + " retired tables awaiting reclamation");
  std::size_t dead = 0;
  for (std::size_t i = 0; i < max_handles(); ++i) {
    if (slot(i).owner.owner.load(std::memory_order_acquire) != 0 && !slot_owner_alive(i)) ++dead;
  }
  if (dead != 0)
    rep.notes.push_back(
        std::to_string(dead) +
        " handle slots belong to dead processes ('shmap readers --clear-stale' frees them)");
  const std::int64_t counted = size_estimate();
  if (counted != static_cast<std::int64_t>(live)) {
    rep.notes.push_back("size counter says " + std::to_string(counted) + ", the tables hold " +
                        std::to_string(live) + " (writers under way, or one was killed mid-write)");
  }
  return rep;
}

}  // namespace shmap::detail
