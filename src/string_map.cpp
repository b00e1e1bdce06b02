// shmap — StringMap (include/shmap/string_map.hpp): string keys and values over the typed
// maps' core. The table's key is the string key's 64-bit hash; its value word, the offset of
// an immutable record (records.hpp) holding the entries of that hash (entry_list.hpp).
//
// Writes go through RecordWrite (record_write.hpp): decide() reads the current record, builds
// the new one (the other entries of the hash copied over) and publishes it with the bucket's
// CAS; the replaced record is retired in commit. A write on one key therefore replaces the
// record of every key of its hash -- which is one key, bar a 64-bit collision.
//
// size(): the table counts buckets; the records that hold two or more entries (a collision)
// add theirs through SegmentHeader::extra_entries, updated after the CAS. A process killed
// between the two leaves size() off by that write's change, for maps with colliding keys only
// (about 1 pair in 2^64 per pair of keys).
#include "shmap/string_map.hpp"

// xxHash compiled into this file (inline, header-only), as in snapshot.cpp: libshmap.a
// needs no -lxxhash.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "record_write.hpp"
#include "shmap/detail/entry_list.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"

namespace shmap {

using namespace detail;  // NOLINT(google-build-using-namespace): one .cpp, no header

namespace {

/// The largest entry list: the largest entry, the list header and the entry's lengths.
constexpr std::size_t kMaxListBytes = kMaxStringEntryBytes + 16;

[[noreturn]] void damaged(const MapImpl& m, std::uint64_t w) {
  fail(Errc::corrupt, m.name(),
       "the string record at offset " + std::to_string(w) + " is damaged; run 'shmap check " +
           m.name() + "'");
}

/// The published record at w (pinned: it is not reused while we are), validated.
EntryList list_at(const MapImpl& m, const RecordHeap& heap, std::uint64_t w) {
  // The record's bytes were written before the CAS that published w (a full barrier); this
  // orders our reads after our read of w in the C++ model too.
  std::atomic_thread_fence(std::memory_order_acquire);
  const auto* p = static_cast<const unsigned char*>(heap.value(w, EntryList::kHeaderBytes));
  std::uint32_t bytes = 0;
  std::memcpy(&bytes, p + 4, 4);
  if (bytes < EntryList::kHeaderBytes || bytes > kMaxListBytes) damaged(m, w);
  p = static_cast<const unsigned char*>(heap.value(w, bytes));
  EntryList list(p, bytes);
  if (!list.valid()) damaged(m, w);
  return list;
}

void check_entry(const MapImpl& m, std::string_view key, std::string_view value) {
  if (key.size() + value.size() > kMaxStringEntryBytes) {
    fail(Errc::invalid_argument, m.name(),
         "a key of " + std::to_string(key.size()) + " bytes and a value of " +
             std::to_string(value.size()) + " bytes take " +
             std::to_string(key.size() + value.size()) + " bytes; a string map holds up to " +
             std::to_string(kMaxStringEntryBytes) + " per entry; nothing was written");
  }
}

/// A read-only attachment's read of the entry list under hash h: copied into *copy under a
/// validated read (read_only.cpp), a valid list, or false if h is absent. A read-only pin
/// protects nothing, but a record is reused only after a reclaimer advanced the global epoch
/// past its unlink, so a copy made while the epoch stood still is of a record nobody reused.
/// Throws corrupt for a damaged record.
bool copy_list(const MapImpl& m, std::uint64_t h, std::string* copy) {
  const RecordHeap heap(m);
  std::uint64_t at = 0;
  bool found = false, outside = false;
  m.read_validated("read", [&] {
    found = outside = false;
    const std::optional<std::uint64_t> w = m.ro_lookup(h);
    if (!w) return;
    found = true;
    at = *w;
    const auto* p = static_cast<const unsigned char*>(heap.value_or_null(*w, 8));
    std::uint32_t bytes = 0;
    if (p != nullptr) std::memcpy(&bytes, p + 4, 4);
    if (p == nullptr || bytes < 8 || bytes > kMaxListBytes ||
        (p = static_cast<const unsigned char*>(heap.value_or_null(*w, bytes))) == nullptr) {
      outside = true;  // a stale word (read again) or damage (reported below)
      return;
    }
    copy->assign(reinterpret_cast<const char*>(p), bytes);
  });
  if (!found) return false;
  if (outside) damaged(m, at);
  if (!EntryList(reinterpret_cast<const unsigned char*>(copy->data()), copy->size()).valid()) {
    damaged(m, at);
  }
  return true;
}

/// What a write does with its key, given the key's current value (nullopt: absent).
struct Action {
  enum Kind { keep, put, remove } kind = keep;
  std::string_view value;  // put: the new value (valid until the decide returns)
};

/// One write on one key: decide() builds the record of the key's hash with the key's entry
/// changed as op says. op(std::optional<std::string_view> current) -> Action.
template <class Op>
struct StringWrite {
  const MapImpl& m;
  std::string_view key;
  Op& op;
  bool found = false;      // the key was present (as the last decide saw it)
  std::int64_t extra = 0;  // change of extra_entries if this write lands

  WriteIntent operator()(RecordWrite& x, std::optional<std::uint64_t> cur) {
    std::optional<std::string_view> now;
    std::uint32_t old_count = 0;
    std::optional<EntryList> list;
    if (cur) {
      list.emplace(list_at(m, x.heap(), *cur));
      old_count = list->count();
      std::string_view v;
      if (list->find(key, &v)) now = v;
    }
    found = now.has_value();
    Action a;
    try {
      a = op(now);
    } catch (...) {
      x.keep();  // the block of an earlier try, never published, goes back
      throw;
    }
    if (a.kind == Action::keep || (a.kind == Action::remove && !now)) return x.keep();
    EntryList::Builder b;
    if (list) {
      list->each([&](std::string_view k, std::string_view v) {
        if (k != key) b.add(k, v);
        return true;
      });
    }
    if (a.kind == Action::put) {
      if (key.size() + a.value.size() > kMaxStringEntryBytes) {
        x.keep();
        check_entry(m, key, a.value);
      }
      b.add(key, a.value);
    }
    const auto extra_of = [](std::uint32_t n) { return n > 1 ? std::int64_t{n} - 1 : 0; };
    extra = extra_of(b.count()) - extra_of(old_count);
    if (b.count() == 0) return x.erase();
    if (b.size() > kMaxListBytes) {
      x.keep();
      fail(Errc::out_of_space, m.name(),
           "keys of one 64-bit hash do not fit in one record together (" +
               std::to_string(b.size()) + " bytes); nothing was written");
    }
    return x.set(x.word_for(b.data(), b.size()));
  }
};

template <class Op>
StringWrite<Op> write(MapImpl& m, std::uint64_t h, std::string_view key, bool may_insert, Op&& op,
                      bool* committed) {
  StringWrite<Op> sw{m, key, op};
  RecordWrite w(m, 0);
  run_write(m, w, h, may_insert, sw);
  *committed = w.committed();
  if (*committed && sw.extra != 0) {
    // Relaxed: a count, read by size() only (never exact under concurrent writes anyway).
    m.header().extra_entries.fetch_add(sw.extra, std::memory_order_relaxed);
  }
  return sw;
}

}  // namespace

StringMap::StringMap(DynamicMap core) : core_(std::move(core)) {
  if (!core_.holds_strings() || core_.value_type().kind != TypeInfo::Kind::byte_string) {
    fail(Errc::layout_mismatch, core_.name(),
         "holds " + core_.describe() +
             ", opened as string -> string; open it with the types it "
             "was created with");
  }
}

StringMap::StringMap(Checked, DynamicMap core) : core_(std::move(core)) {
  if (!core_.holds_strings()) {
    fail(Errc::layout_mismatch, core_.name(),
         "holds " + core_.describe() + ", opened as a map with string keys");
  }
  if (core_.value_type().kind != TypeInfo::Kind::byte_string) fixed_ = core_.value_type().size;
}

StringMap StringMap::open_any(const std::string& name, const OpenOptions& options) {
  return StringMap(Checked{}, DynamicMap::open(name, options));
}

void StringMap::check_value(std::string_view value) const {
  if (fixed_ != 0 && value.size() != fixed_) {
    fail(Errc::invalid_argument, name(),
         "a value of " + std::to_string(value.size()) + " bytes; this map's values (" +
             core_.value_type().name + ") have " + std::to_string(fixed_) +
             "; nothing was written");
  }
}

StringMap StringMap::create(const std::string& name, const Options& options) {
  return StringMap(DynamicMap::create(name, options, layout()));
}

StringMap StringMap::open(const std::string& name, const OpenOptions& options) {
  // Any types, then ours or layout_mismatch naming both (the constructor).
  return StringMap(DynamicMap::open(name, options));
}

StringMap StringMap::open_or_create(const std::string& name, const Options& options,
                                    bool* created) {
  return StringMap(DynamicMap::open_or_create(name, options, layout(), created));
}

std::uint64_t StringMap::hash(std::string_view key) const {
  if (hash_for_test != nullptr) return hash_for_test(key);
  return XXH3_64bits_withSeed(key.data(), key.size(), core_.map_.impl().seed());
}

bool StringMap::find(std::string_view key, std::string* out) const {
  const MapImpl& m = core_.map_.impl();
  if (m.read_only()) return find_read_only(key, out);
  PinGuard pin(m);  // the record cannot be reused while we read it
  std::uint64_t w = 0;
  if (!m.find(hash(key), &w)) return false;
  std::string_view v;
  if (!list_at(m, RecordHeap(m), w).find(key, &v)) return false;
  out->assign(v);
  return true;
}

std::optional<std::string> StringMap::find(std::string_view key) const {
  std::string v;
  if (!find(key, &v)) return std::nullopt;
  return v;
}

bool StringMap::contains(std::string_view key) const {
  std::string v;
  return find(key, &v);
}

bool StringMap::find_read_only(std::string_view key, std::string* out) const {
  std::string copy;
  if (!copy_list(core_.map_.impl(), hash(key), &copy)) return false;
  std::string_view v;
  if (!EntryList(reinterpret_cast<const unsigned char*>(copy.data()), copy.size()).find(key, &v)) {
    return false;
  }
  out->assign(v);
  return true;
}

bool StringMap::insert(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, value);
  check_value(value);
  bool committed = false;
  write(
      m, hash(key), key, true,
      [value](std::optional<std::string_view> now) {
        return now ? Action{} : Action{Action::put, value};
      },
      &committed);
  return committed;
}

bool StringMap::insert_or_assign(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, value);
  check_value(value);
  bool committed = false;
  const auto sw = write(
      m, hash(key), key, true,
      [value](std::optional<std::string_view>) {
        return Action{Action::put, value};
      },
      &committed);
  return !sw.found;
}

bool StringMap::erase(std::string_view key) {
  MapImpl& m = core_.map_.impl();
  bool committed = false;
  write(
      m, hash(key), key, false,
      [](std::optional<std::string_view> now) {
        return now ? Action{Action::remove, {}} : Action{};
      },
      &committed);
  return committed;
}

bool StringMap::compare_exchange(std::string_view key, std::string_view expected,
                                 std::string_view desired) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, desired);
  check_value(desired);
  bool committed = false;
  write(
      m, hash(key), key, false,
      [expected, desired](std::optional<std::string_view> now) {
        return now && *now == expected ? Action{Action::put, desired} : Action{};
      },
      &committed);
  return committed;
}

bool StringMap::edit(std::string_view key, MakeFn make, EditFn f, void* ctx) {
  MapImpl& m = core_.map_.impl();
  std::string buf;
  bool committed = false;
  const auto sw = write(
      m, hash(key), key, make != nullptr,
      [&](std::optional<std::string_view> now) {
        if (!now) {
          if (make == nullptr) return Action{};
          buf.clear();
          make(ctx, buf);
          check_value(buf);
          return Action{Action::put, buf};
        }
        buf.assign(*now);
        if (!f(ctx, buf)) return Action{};
        check_value(buf);
        return Action{Action::put, buf};
      },
      &committed);
  return make == nullptr ? sw.found : committed && !sw.found;
}

void StringMap::visit(void (*fn)(void*, std::string_view, std::string_view), void* ctx) const {
  const MapImpl& m = core_.map_.impl();
  if (m.read_only()) {
    // The hashes from a walk, then each record by a validated read (see find_read_only).
    std::vector<std::uint64_t> hashes;
    core_.map_.for_each([&](std::uint64_t h, std::uint64_t) { hashes.push_back(h); });
    std::string copy;
    for (const std::uint64_t h : hashes) {
      if (!copy_list(m, h, &copy)) continue;  // erased since the walk
      EntryList(reinterpret_cast<const unsigned char*>(copy.data()), copy.size())
          .each([&](std::string_view k, std::string_view v) {
            fn(ctx, k, v);
            return true;
          });
    }
    return;
  }
  struct Ctx {
    void (*fn)(void*, std::string_view, std::string_view);
    void* ctx;
    const MapImpl& m;
  } c{fn, ctx, m};
  // MapImpl::for_each calls back pinned: a record stays put while fn reads it.
  m.for_each(
      [](void* p, std::uint64_t, std::uint64_t w) {
        auto& x = *static_cast<Ctx*>(p);
        list_at(x.m, RecordHeap(x.m), w).each([&](std::string_view k, std::string_view v) {
          x.fn(x.ctx, k, v);
          return true;
        });
      },
      &c);
}

std::size_t StringMap::size() const {
  const std::int64_t extra =
      core_.map_.impl().header().extra_entries.load(std::memory_order_relaxed);
  return core_.size() + static_cast<std::size_t>(std::max<std::int64_t>(extra, 0));
}

Stats StringMap::stats() const {
  Stats s = core_.stats();
  s.size = size();
  return s;
}

void StringMap::bad_value_size(std::size_t got, std::size_t want) const {
  fail(Errc::corrupt, name(),
       "a stored value has " + std::to_string(got) + " bytes where the map's values have " +
           std::to_string(want) + "; the segment is damaged: run 'shmap check " + name() + "'");
}

}  // namespace shmap
