// shmap — the untyped core of TypedMap (include/shmap/typed_map.hpp): keys are 64-bit words,
// values are blocks of bytes of one size, inline in the bucket's value word when they fit in 8
// bytes and in an immutable record (records.hpp) otherwise.
//
// Writes go through RecordWrite (record_write.hpp), which says when a block is allocated,
// published, retired or given back.
#include "shmap/typed_map.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "record_write.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"
#include "shmap/string_map.hpp"
#include "string_write.hpp"

namespace shmap {

// The internals this file composes (MapImpl, RecordHeap, the layout) are detail's.
using namespace detail;  // NOLINT(google-build-using-namespace): one .cpp, no header

namespace {

TypeRecord to_record(const TypeInfo& t) {
  TypeRecord r{};
  r.size = t.size;
  r.align = t.align;
  r.kind = static_cast<std::uint32_t>(t.kind);
  std::memcpy(r.name, t.name.data(), std::min(t.name.size(), sizeof(r.name) - 1));
  r.name_hash = type_name_hash(t.name);
  return r;
}

}  // namespace

SegmentTypes detail::layout_types(const std::string& name, const DynamicMap::Layout& l) {
  const bool skey = l.key.kind == TypeInfo::Kind::byte_string;
  const bool sval = l.value.kind == TypeInfo::Kind::byte_string;
  // Keys of more than 8 bytes are held as a string map's keys are: by their bytes.
  const bool big_key = !skey && l.key.size > 8;
  if (skey || sval || big_key) {
    // String keys, and keys of more than 8 bytes, take string values or values of one size;
    // string values take keys of any size (TypedMap<K, std::string>); a key and a value fit
    // in one entry together (kMaxStringEntryBytes).
    // A string type may carry another name than "string" (a language binding records "utf8"
    // or "pickle" so that it reopens a map as it wrote it); size 0 and alignment 1 it must have.
    const auto string_like = [](const TypeInfo& t) { return t.size == 0 && t.align == 1; };
    const bool key_ok = skey ? string_like(l.key) : l.key.size != 0;
    const bool value_ok = sval ? string_like(l.value) : l.value.size != 0;
    const bool ok =
        key_ok && value_ok && std::uint64_t{l.key.size} + l.value.size <= kMaxStringEntryBytes;
    if (!ok) {
      fail(Errc::invalid_argument, name,
           "string keys and keys of more than 8 bytes take string values or values of one "
           "size, a key and a value " +
               std::to_string(kMaxStringEntryBytes) + " bytes at most together");
    }
    if (l.multimap && !(skey && sval)) {
      fail(Errc::invalid_argument, name, "a multimap holds string keys and string values");
    }
    return {to_record(l.key), to_record(l.value), l.multimap ? kKindMultimap : kKindMap};
  }
  if (l.multimap) {
    fail(Errc::invalid_argument, name, "a multimap holds string keys and string values");
  }
  if (l.key.size == 0 || l.key.size > 8 || l.value.size == 0 || l.value.size > kMaxValueBytes) {
    fail(Errc::invalid_argument, name,
         "typed maps take keys of 1..8 bytes and values of 1.." + std::to_string(kMaxValueBytes) +
             " bytes");
  }
  return {to_record(l.key), to_record(l.value)};
}

namespace {
SegmentTypes to_types(const std::string& name, const DynamicMap::Layout& l) {
  return layout_types(name, l);
}

}  // namespace

namespace {
TypeInfo from_record(const TypeRecord& r) {
  TypeInfo t;
  t.size = r.size;
  t.align = r.align;
  t.kind = static_cast<TypeInfo::Kind>(r.kind);
  t.name.assign(r.name, strnlen(r.name, sizeof(r.name)));
  return t;
}
}  // namespace

DynamicMap::DynamicMap(Map map) : map_(std::move(map)) {
  const SegmentTypes& t = map_.impl().types();
  const auto string_kind = static_cast<std::uint32_t>(TypeInfo::Kind::byte_string);
  if (detail::holds_strings(t)) {
    const bool sval = t.value.kind == string_kind;
    const bool skey = t.key.kind == string_kind;
    const bool ok = (skey ? t.key.size == 0 : t.key.size != 0) &&
                    (sval ? t.value.size == 0 : t.value.size != 0) &&
                    std::uint64_t{t.key.size} + t.value.size <= kMaxStringEntryBytes;
    if (!ok) {
      fail(Errc::corrupt, map_.name(),
           "the segment header records string types no map has (a string with a size, a key or "
           "value too large); the segment is damaged");
    }
    if (t.kind == kKindMultimap && !(sval && skey)) {
      fail(Errc::corrupt, map_.name(),
           "the segment header records a multimap of fixed-size values, which no map has; the "
           "segment is damaged");
    }
    layout_ = {from_record(t.key), from_record(t.value), t.kind == kKindMultimap};
    value_size_ = sval ? 0 : t.value.size;  // 0: values of any length
    strings_ = true;
    inline_ = false;
    return;
  }
  // The sizes as open() validated them? It checked that they match the caller's, not that
  // they are sane: a damaged header (opened with any types) must not size our copies.
  if (t.key.size == 0 || t.key.size > 8 || t.value.size == 0 || t.value.size > kMaxValueBytes) {
    fail(Errc::corrupt, map_.name(),
         "the segment header records impossible key or value sizes (" + std::to_string(t.key.size) +
             ", " + std::to_string(t.value.size) + "); the segment is damaged");
  }
  layout_ = {from_record(t.key), from_record(t.value)};
  value_size_ = t.value.size;
  inline_ = value_size_ <= 8;
}

void DynamicMap::need_fixed_size(const char* what) const {
  if (strings_) {
    fail(Errc::layout_mismatch, map_.name(),
         "holds " + describe() + ": " + what +
             " takes keys of up to 8 bytes here; open it with shmap::StringMap (string values) "
             "or shmap::TypedMap<std::string, V>");
  }
}

std::string DynamicMap::describe() const { return describe_types(map_.impl().types()); }
DynamicMap::DynamicMap(DynamicMap&&) noexcept = default;
DynamicMap& DynamicMap::operator=(DynamicMap&&) noexcept = default;
DynamicMap::~DynamicMap() = default;

DynamicMap DynamicMap::create(const std::string& name, const Options& options,
                              const Layout& layout) {
  bool existed = false;
  return DynamicMap(Map(MapImpl::create(name, options, true, &existed, to_types(name, layout))));
}

DynamicMap DynamicMap::create_recorded(const std::string& name, const Options& options,
                                       const SegmentTypes& types) {
  bool existed = false;
  return DynamicMap(Map(MapImpl::create(name, options, true, &existed, types)));
}

DynamicMap DynamicMap::open(const std::string& name, const Layout& layout) {
  const SegmentTypes types = to_types(name, layout);
  return DynamicMap(Map(MapImpl::open(name, true, false, &types)));
}

DynamicMap DynamicMap::open(const std::string& name, const OpenOptions& options) {
  return DynamicMap(
      Map(MapImpl::open(name, options.clear_stale_handles, options.read_only, nullptr)));
}

DynamicMap DynamicMap::open_or_create(const std::string& name, const Options& options,
                                      const Layout& layout, bool* created) {
  const SegmentTypes types = to_types(name, layout);
  // As Map::open_or_create: one creator wins; a remove() between the two steps means retry.
  for (int attempt = 0;; ++attempt) {
    bool existed = false;
    if (auto impl = MapImpl::create(name, options, false, &existed, types)) {
      if (created != nullptr) *created = true;
      return DynamicMap(Map(std::move(impl)));
    }
    try {
      DynamicMap c(Map(MapImpl::open(name, true, false, &types)));
      if (created != nullptr) *created = false;
      return c;
    } catch (const Error& e) {
      if (e.code() != Errc::not_found || attempt > 100) throw;
    }
  }
}

bool DynamicMap::find(std::uint64_t k, void* out) const {
  need_fixed_size("find");
  if (inline_) {
    const std::optional<std::uint64_t> v = map_.find(k);
    if (v) std::memcpy(out, &*v, value_size_);
    return v.has_value();
  }
  const MapImpl& m = map_.impl();
  if (m.read_only()) return find_read_only(k, out);
  PinGuard pin(m);  // the record cannot be reused while we copy it
  std::uint64_t w = 0;
  if (!m.find(k, &w)) return false;
  // The record's bytes were written before the CAS that published w (a full barrier); this
  // orders our copy after our read of w in the C++ model too.
  std::atomic_thread_fence(std::memory_order_acquire);
  std::memcpy(out, RecordHeap(m).value(w, value_size_), value_size_);
  return true;
}

bool DynamicMap::insert(std::uint64_t k, const void* v) {
  need_fixed_size("insert");
  RecordWrite w(map_.impl(), value_size_);
  run_write(map_.impl(), w, k, true, [v](RecordWrite& x, std::optional<std::uint64_t> cur) {
    return cur ? x.keep() : x.set(x.word_for(v));
  });
  return w.committed();
}

bool DynamicMap::insert_or_assign(std::uint64_t k, const void* v) {
  need_fixed_size("insert_or_assign");
  RecordWrite w(map_.impl(), value_size_);
  const auto old =
      run_write(map_.impl(), w, k, true,
                [v](RecordWrite& x, std::optional<std::uint64_t>) { return x.set(x.word_for(v)); });
  return !old.has_value();
}

bool DynamicMap::erase(std::uint64_t k) {
  need_fixed_size("erase");
  RecordWrite w(map_.impl(), value_size_);
  run_write(map_.impl(), w, k, false, [](RecordWrite& x, std::optional<std::uint64_t> cur) {
    return cur ? x.erase() : x.keep();
  });
  return w.committed();
}

bool DynamicMap::compare_exchange(std::uint64_t k, const void* expected, const void* desired) {
  need_fixed_size("compare_exchange");
  RecordWrite w(map_.impl(), value_size_);
  run_write(map_.impl(), w, k, false,
            [expected, desired](RecordWrite& x, std::optional<std::uint64_t> cur) {
              return cur && x.equals(*cur, expected) ? x.set(x.word_for(desired)) : x.keep();
            });
  return w.committed();
}

namespace {
/// decide() of update and upsert: a copy of the current value, edited by f.
struct Edit {
  DynamicMap::EditFn f;
  DynamicMap::MakeFn make;  // nullptr: update (absent stays absent)
  void* ctx;
  std::vector<unsigned char> buf;
  WriteIntent operator()(RecordWrite& x, std::optional<std::uint64_t> cur) {
    if (!cur) {
      if (make == nullptr) return x.keep();
      make(ctx, buf.data());
      return x.set(x.word_for(buf.data()));
    }
    x.read(*cur, buf.data());
    if (!f(ctx, buf.data())) return x.keep();
    return x.set(x.word_for(buf.data()));
  }
};
}  // namespace

bool DynamicMap::update(std::uint64_t k, EditFn f, void* ctx) {
  need_fixed_size("update");
  RecordWrite w(map_.impl(), value_size_);
  Edit e{f, nullptr, ctx, std::vector<unsigned char>(value_size_)};
  return run_write(map_.impl(), w, k, false, e).has_value();
}

bool DynamicMap::upsert(std::uint64_t k, MakeFn make, EditFn f, void* ctx) {
  need_fixed_size("upsert");
  RecordWrite w(map_.impl(), value_size_);
  Edit e{f, make, ctx, std::vector<unsigned char>(value_size_)};
  const auto old = run_write(map_.impl(), w, k, true, e);
  return w.committed() && !old.has_value();
}

bool DynamicMap::find_read_only(std::uint64_t k, void* out) const {
  // A read-only attachment's pin protects nothing: copy the value under a validated read
  // (read_only.cpp). A record is reused only after a reclaimer advanced the global epoch past
  // its unlink, so a copy made while the epoch stood still is of a record nobody reused.
  const MapImpl& m = map_.impl();
  const RecordHeap heap(m);
  bool found = false;
  bool outside = false;
  m.read_validated("find", [&] {
    found = outside = false;
    const std::optional<std::uint64_t> w = m.ro_lookup(k);
    if (!w) return;
    found = true;
    const void* p = heap.value_or_null(*w, value_size_);
    if (p == nullptr) {
      outside = true;  // a stale word (retried) or damage (reported below)
      return;
    }
    std::memcpy(out, p, value_size_);
  });
  if (outside) (void)heap.value(UINT64_MAX, value_size_);  // throws corrupt, naming the map
  return found;
}

std::vector<ReaderInfo> DynamicMap::readers() const { return map_.readers(); }
std::size_t DynamicMap::clear_stale_handles() { return map_.clear_stale_handles(); }
bool DynamicMap::read_only() const { return map_.read_only(); }

void DynamicMap::for_each(void (*fn)(void* ctx, std::uint64_t k, const void* v), void* ctx) const {
  need_fixed_size("for_each");
  if (!inline_ && map_.read_only()) {
    // The keys from a walk, then each value by a validated lookup (see find_read_only).
    std::vector<std::uint64_t> keys;
    map_.for_each([&](std::uint64_t k, std::uint64_t) { keys.push_back(k); });
    std::vector<unsigned char> buf(value_size_);
    for (const std::uint64_t k : keys) {
      if (find_read_only(k, buf.data())) fn(ctx, k, buf.data());
    }
    return;
  }
  struct Ctx {
    void (*fn)(void*, std::uint64_t, const void*);
    void* ctx;
    const MapImpl& m;
    std::size_t bytes;
    bool inline_value;
  } c{fn, ctx, map_.impl(), value_size_, inline_};
  // MapImpl::for_each calls back pinned: a record stays put while fn reads it.
  map_.impl().for_each(
      [](void* p, std::uint64_t k, std::uint64_t w) {
        auto& x = *static_cast<Ctx*>(p);
        if (x.inline_value) {
          x.fn(x.ctx, k, &w);
        } else {
          std::atomic_thread_fence(std::memory_order_acquire);
          x.fn(x.ctx, k, RecordHeap(x.m).value(w, x.bytes));
        }
      },
      &c);
}

std::size_t DynamicMap::size() const { return map_.size(); }
Stats DynamicMap::stats() const { return map_.stats(); }
const std::string& DynamicMap::name() const { return map_.name(); }

static_assert(kByteStringKind == static_cast<std::uint32_t>(TypeInfo::Kind::byte_string));

CheckReport DynamicMap::check(RecordStats* records) const {
  CheckReport rep = map_.check();
  if (strings_) {
    // (A read-only attachment walks validated copies of the lists: visit_entries.)
    std::size_t entries = 0;
    try {
      visit_entries(
          map_,
          [](void* n, std::string_view, std::string_view) { ++*static_cast<std::size_t*>(n); },
          &entries);
    } catch (const Error& e) {
      // A damaged list or inline entry (list_at): what check() is for, so reported, not thrown
      // (the error's own advice is to run check).
      if (e.code() != Errc::corrupt) throw;
      rep.ok = false;
      rep.problems.push_back(std::string("entries: ") + e.what());
      entries = SIZE_MAX;
    }
    const std::size_t counted = map_.size();
    if (entries != SIZE_MAX && counted != entries) {
      rep.notes.push_back("size counter says " + std::to_string(counted) + ", the lists hold " +
                          std::to_string(entries) + " entries (writers under way)");
    }
  }
  if (!inline_ && map_.read_only()) {
    rep.notes.push_back(
        "value records: not audited (the audit holds writers back: it needs write permission)");
    if (records != nullptr) *records = {};
    return rep;
  }
  if (inline_) {
    if (records != nullptr) *records = {};
    return rep;
  }
  RecordHeap::Audit a;
  try {
    a = RecordHeap(map_.impl()).audit(false, strings_);
  } catch (const Error& e) {
    a.problem = e.what();
  }
  RecordStats s = a.stats;
  s.record_bytes = strings_ ? 0 : kRecordClassBytes[RecordHeap::class_for(value_size_)];
  if (records != nullptr) *records = s;
  if (!a.problem.empty()) {
    rep.ok = false;
    rep.problems.push_back("value records: " + a.problem);
  } else if (!a.done) {
    rep.notes.push_back(
        "value records: not audited (another process is reclaiming, or a writer is stopped "
        "inside a write); run check again");
  } else if (s.leaked != 0) {
    rep.ok = false;
    rep.problems.push_back(std::to_string(s.leaked) +
                           " value records are leaked (a writer was killed mid-write); "
                           "'compact' gives them back");
  } else {
    rep.notes.push_back(
        "value records: " + std::to_string(s.live) + " live, " + std::to_string(s.free) +
        " free, " + std::to_string(s.retired) + " retired, in " + std::to_string(s.slabs) +
        " slabs; none leaked" +
        (strings_ ? "; " + std::to_string(s.inline_entries) + " short entries in their buckets"
                  : ""));
  }
  return rep;
}

void DynamicMap::compact() {
  map_.compact();
  if (inline_) return;
  const RecordHeap heap(map_.impl());
  heap.audit(true, strings_);
  heap.reclaim(true);
}

}  // namespace shmap
