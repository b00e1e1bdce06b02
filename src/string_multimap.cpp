// shmap — StringMultimap (include/shmap/string_multimap.hpp): several values per string key,
// on the string maps' core (string_write.hpp).
//
// A key's values are the entries of that key in its hash's entry list, in the order they were
// added. Every write builds the hash's new list from the current one (copy-on-write) and
// publishes it with the bucket's one CAS; a write that lost a race builds again from the newer
// list. What can race: two writers on one key (the CAS lets one in, the other rebuilds, so no
// value is lost or doubled), a reader and a writer (the reader holds one published list under
// its pin: it sees all of a key's values before the write or all after), a migration moving
// the bucket (the record moves by its offset; the list is immutable). size() is the table's
// count, which counts entries: each write's change of its list's length goes into the count
// with its CAS's lane record (WriteIntent::extra), exact across a SIGKILL at any instruction.
#include "shmap/string_multimap.hpp"

#include <utility>

#include "string_write.hpp"

namespace shmap {

using namespace detail;  // NOLINT(google-build-using-namespace): one .cpp, no header

namespace {

/// Copies every entry of `list` for which keep(key, value) is true into b; returns how many
/// it left out.
template <class Keep>
std::size_t copy_if(const EntryList* list, EntryList::Builder& b, Keep&& keep) {
  std::size_t dropped = 0;
  if (list == nullptr) return 0;
  list->each([&](std::string_view k, std::string_view v) {
    if (keep(k, v)) {
      b.add(k, v);
    } else {
      ++dropped;
    }
    return true;
  });
  return dropped;
}

bool has(const EntryList* list, std::string_view key, std::string_view value) {
  bool found = false;
  if (list == nullptr) return false;
  list->each([&](std::string_view k, std::string_view v) {
    found = k == key && v == value;
    return !found;
  });
  return found;
}

}  // namespace

StringMultimap::StringMultimap(DynamicMap core) : core_(std::move(core)) {
  if (!core_.is_multimap()) {
    fail(Errc::layout_mismatch, core_.name(),
         "holds " + core_.describe() +
             ", opened as a multimap string -> string; open it with the types it was created "
             "with");
  }
}

StringMultimap StringMultimap::create(const std::string& name, const Options& options) {
  return StringMultimap(DynamicMap::create(name, options, layout()));
}

StringMultimap StringMultimap::open(const std::string& name, const OpenOptions& options) {
  return StringMultimap(DynamicMap::open(name, options));
}

StringMultimap StringMultimap::open_or_create(const std::string& name, const Options& options,
                                              bool* created) {
  return StringMultimap(DynamicMap::open_or_create(name, options, layout(), created));
}

void StringMultimap::insert(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, value);
  auto edit = [&](const EntryList* list, EntryList::Builder& b) {
    copy_if(list, b, [](std::string_view, std::string_view) { return true; });
    b.add(key, value);
    return true;
  };
  write_list(m, key_hash(m, key), true, edit);
}

bool StringMultimap::insert_unique(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  check_entry(m, key, value);
  auto edit = [&](const EntryList* list, EntryList::Builder& b) {
    if (has(list, key, value)) return false;
    copy_if(list, b, [](std::string_view, std::string_view) { return true; });
    b.add(key, value);
    return true;
  };
  return write_list(m, key_hash(m, key), true, edit);
}

bool StringMultimap::erase(std::string_view key, std::string_view value) {
  MapImpl& m = core_.map_.impl();
  auto edit = [&](const EntryList* list, EntryList::Builder& b) {
    if (!has(list, key, value)) return false;
    bool dropped = false;
    copy_if(list, b, [&](std::string_view k, std::string_view v) {
      if (dropped || k != key || v != value) return true;
      dropped = true;  // the first occurrence only
      return false;
    });
    return true;
  };
  return write_list(m, key_hash(m, key), false, edit);
}

std::size_t StringMultimap::erase(std::string_view key) {
  MapImpl& m = core_.map_.impl();
  std::size_t erased = 0;  // as the try that landed counted them
  auto edit = [&](const EntryList* list, EntryList::Builder& b) {
    erased = copy_if(list, b, [&](std::string_view k, std::string_view) { return k != key; });
    return erased != 0;
  };
  return write_list(m, key_hash(m, key), false, edit) ? erased : 0;
}

std::size_t StringMultimap::visit_key(std::string_view key, void (*fn)(void*, std::string_view),
                                      void* ctx) const {
  const MapImpl& m = core_.map_.impl();
  std::size_t n = 0;
  with_list(m, key_hash(m, key), [&](const EntryList& list) {
    list.each([&](std::string_view k, std::string_view v) {
      if (k == key) {
        ++n;
        if (fn != nullptr) fn(ctx, v);
      }
      return true;
    });
  });
  return n;
}

std::size_t StringMultimap::count(std::string_view key) const {
  return visit_key(key, nullptr, nullptr);
}

bool StringMultimap::contains(std::string_view key, std::string_view value) const {
  bool found = false;
  for_each_value(key, [&](std::string_view v) { found = found || v == value; });
  return found;
}

std::vector<std::string> StringMultimap::find(std::string_view key) const {
  std::vector<std::string> out;
  for_each_value(key, [&](std::string_view v) { out.emplace_back(v); });
  return out;
}

void StringMultimap::visit(void (*fn)(void*, std::string_view, std::string_view), void* ctx) const {
  visit_entries(core_.map_, fn, ctx);
}

std::size_t StringMultimap::size() const { return core_.size(); }

Stats StringMultimap::stats() const {
  Stats s = core_.stats();
  s.size = size();
  return s;
}

void StringMultimap::compact() { core_.compact(); }

}  // namespace shmap
