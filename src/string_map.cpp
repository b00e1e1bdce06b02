// shmap — StringMap (include/shmap/string_map.hpp): string keys and values over the typed
// maps' core. The table's key is the string key's 64-bit hash; its value word, the offset of
// an immutable record (records.hpp) holding the entries of that hash (entry_list.hpp).
//
// Writes go through RecordWrite (record_write.hpp): decide() reads the current record, builds
// the new one (the other entries of the hash copied over) and publishes it with the bucket's
// CAS; the replaced record is retired in commit. A write on one key therefore replaces the
// record of every key of its hash -- which is one key, bar a 64-bit collision.
//
// size(): the table's count, which for a map of strings counts entries: a write that changes a
// list's length by more than its bucket's own change (a collision's second key) says so in
// WriteIntent::extra, and the table counts it with the bucket's change, in the same lane
// record that keeps the count exact when a writer is killed between its CAS and its count.
#include "shmap/string_map.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "record_write.hpp"
#include "shmap/detail/entry_list.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"
#include "string_write.hpp"

namespace shmap {

using namespace detail;  // NOLINT(google-build-using-namespace): one .cpp, no header

namespace {

/// What a write does with its key, given the key's current value (nullopt: absent).
struct Action {
  enum Kind { keep, put, remove } kind = keep;
  std::string_view value;  // put: the new value (valid until the decide returns)
};

/// One write on one key: builds the list of the key's hash with the key's entry changed as op
/// says. op(std::optional<std::string_view> current) -> Action.
template <class Op>
struct StringWrite {
  const MapImpl& m;
  std::string_view key;
  Op& op;
  bool found = false;  // the key was present (as the last try saw it)

  bool operator()(const EntryList* list, EntryList::Builder& b) {
    std::optional<std::string_view> now;
    std::string_view v;
    if (list != nullptr && list->find(key, &v)) now = v;
    found = now.has_value();
    const Action a = op(now);
    if (a.kind == Action::keep || (a.kind == Action::remove && !now)) return false;
    if (list != nullptr) {
      list->each([&](std::string_view k, std::string_view v) {
        if (k != key) b.add(k, v);
        return true;
      });
    }
    if (a.kind == Action::put) {
      check_entry(m, key, a.value);
      b.add(key, a.value);
    }
    return true;
  }
};

template <class Op>
StringWrite<Op> write(MapImpl& m, std::uint64_t h, std::string_view key, bool may_insert, Op&& op,
                      bool* committed) {
  StringWrite<Op> sw{m, key, op};
  *committed = write_list(m, h, may_insert, sw);
  return sw;
}

}  // namespace

StringMap::StringMap(DynamicMap core) : core_(std::move(core)) {
  if (!core_.holds_strings() || core_.value_type().kind != TypeInfo::Kind::byte_string ||
      core_.key_type().kind != TypeInfo::Kind::byte_string || core_.is_multimap()) {
    fail(Errc::layout_mismatch, core_.name(),
         "holds " + core_.describe() +
             ", opened as string -> string; open it with the types it "
             "was created with");
  }
}

StringMap::StringMap(Checked, DynamicMap core) : core_(std::move(core)) {
  if (!core_.holds_strings() || core_.is_multimap()) {
    fail(Errc::layout_mismatch, core_.name(),
         "holds " + core_.describe() + ", opened as a map with string keys");
  }
  if (core_.value_type().kind != TypeInfo::Kind::byte_string) fixed_ = core_.value_type().size;
  if (core_.key_type().kind != TypeInfo::Kind::byte_string) key_fixed_ = core_.key_type().size;
}

void StringMap::check_key(std::string_view key) const {
  if (key_fixed_ != 0 && key.size() != key_fixed_) {
    fail(Errc::invalid_argument, name(),
         "a key of " + std::to_string(key.size()) + " bytes; this map's keys (" +
             core_.key_type().name + ") have " + std::to_string(key_fixed_) +
             "; nothing was written");
  }
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
  return key_hash(core_.map_.impl(), key);
}

bool StringMap::find(std::string_view key, std::string* out) const {
  return view_value(
      key, [](void* c, std::string_view v) { static_cast<std::string*>(c)->assign(v); }, out);
}

std::optional<std::string> StringMap::find(std::string_view key) const {
  std::string v;
  if (!find(key, &v)) return std::nullopt;
  return v;
}

bool StringMap::contains(std::string_view key) const {
  return view_value(
      key, [](void*, std::string_view) {}, nullptr);
}

bool StringMap::view_value(std::string_view key, void (*fn)(void*, std::string_view),
                           void* ctx) const {
  // with_list: pinned (PinGuard, released by an exception from fn too), or on a read-only
  // attachment a validated copy of the list.
  bool found = false;
  with_list(core_.map_.impl(), hash(key), [&](const EntryList& list) {
    std::string_view v;
    if (!list.find(key, &v)) return;  // another key of the same 64-bit hash
    found = true;
    fn(ctx, v);
  });
  return found;
}

bool StringMap::insert(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, value);
  check_value(value);
  check_key(key);
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
  check_key(key);
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
  check_key(key);
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
  check_key(key);
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
  visit_entries(core_.map_, fn, ctx);
}

void StringMap::compact() { core_.compact(); }

std::size_t StringMap::size() const { return core_.size(); }  // entries (see the top)

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
