// shmap — a multimap: byte-string keys, each with any number of byte-string values.
//
//   auto tags = shmap::StringMultimap::open_or_create("tags");
//   tags.insert("order:42", "urgent");
//   tags.insert("order:42", "export");
//   tags.count("order:42");                 // 2
//   for (const auto& v : tags.find("order:42")) use(v);  // in insertion order
//   tags.erase("order:42", "urgent");       // one value
//   tags.erase("order:42");                 // all of them
//
// The same core as StringMap (docs/DESIGN.md §5): the table's key is the key's 64-bit hash and
// its value word the offset of an immutable record, the hash's entry list, in which a key's
// values are entries of that key, in the order they were added. So a key's values are found
// together, in one record, and counted without a second lookup; every change to a key's values
// builds the key's new list and publishes it with the bucket's one CAS (copy-on-write): a
// reader sees all of a key's values before a write or all after it, never a mix, across a
// SIGKILL too. A write copies the key's list: cheap for tens or hundreds of values; a key's
// values (and keys colliding with it, 1 in 2^64) share one record of at most 2 MiB.
//
// The segment records its kind as a multimap (string -> string): StringMap, TypedMap and
// shmap::Map refuse it (layout_mismatch, naming it), and StringMultimap refuses every map.
// Snapshots: dump()/load() (binary, version 3). Not yet: values of other types than strings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shmap/string_map.hpp"

namespace shmap {

class StringMultimap {
 public:
  static StringMultimap create(const std::string& name, const Options& options = {});
  /// options.read_only: the reads only (find, count, contains, for_each, size, stats).
  static StringMultimap open(const std::string& name, const OpenOptions& options = {});
  static StringMultimap open_or_create(const std::string& name, const Options& options = {},
                                       bool* created = nullptr);
  static bool remove(const std::string& name) { return Map::remove(name); }
  static DynamicMap::Layout layout() { return {string_type(), string_type(), true}; }
  /// A binary snapshot (version 3, marked as a multimap's; every key's values in their order),
  /// as StringMap::dump.
  void dump(const std::string& path, const DumpOptions& options = {}) const {
    core_.dump(path, options);
  }
  /// Makes multimap `name` from a multimap's snapshot (others: layout_mismatch), as
  /// StringMap::load.
  static StringMultimap load(const std::string& path, const std::string& name,
                             const LoadOptions& options = {}) {
    return StringMultimap(DynamicMap::load(path, name, options, layout()));
  }

  /// Adds `value` to key's values, after the ones it has (a value may occur more than once).
  /// A key and one value take up to kMaxStringEntryBytes (invalid_argument, nothing written);
  /// all of a key's values together up to 2 MiB (out_of_space, nothing written).
  void insert(std::string_view key, std::string_view value);
  /// Adds `value` unless key has it already; returns whether it did.
  bool insert_unique(std::string_view key, std::string_view value);
  /// How many values key has (0: absent).
  std::size_t count(std::string_view key) const;
  bool contains(std::string_view key) const { return count(key) != 0; }
  /// Whether `value` is one of key's values.
  bool contains(std::string_view key, std::string_view value) const;
  /// Key's values, in the order they were added (empty: absent).
  std::vector<std::string> find(std::string_view key) const;
  /// f(std::string_view value) for each of key's values, all from one version of the key's
  /// list (the views are valid during the call only; f must not use this map). Returns how
  /// many there were.
  template <class F>
  std::size_t for_each_value(std::string_view key, F&& f) const {
    return visit_key(
        key, [](void* c, std::string_view v) { (*static_cast<std::remove_reference_t<F>*>(c))(v); },
        const_cast<void*>(static_cast<const void*>(&f)));
  }
  /// Erases one occurrence of `value` from key's values (the first); returns whether there was.
  bool erase(std::string_view key, std::string_view value);
  /// Erases all of key's values; returns how many there were.
  std::size_t erase(std::string_view key);
  /// Visits every (key, value), f(std::string_view key, std::string_view value) (weakly
  /// consistent, as Map::for_each; a key's values together, in order).
  template <class F>
  void for_each(F&& f) const {
    visit([](void* c, std::string_view k,
             std::string_view v) { (*static_cast<std::remove_reference_t<F>*>(c))(k, v); },
          const_cast<void*>(static_cast<const void*>(&f)));
  }
  /// Values in the map (every key's count, summed).
  std::size_t size() const;
  bool empty() const { return size() == 0; }
  Stats stats() const;
  std::vector<ReaderInfo> readers() const { return core_.readers(); }
  std::size_t clear_stale_handles() { return core_.clear_stale_handles(); }
  /// Map::check, plus an audit of the records (TypedMap::check).
  CheckReport check(RecordStats* records = nullptr) const { return core_.check(records); }
  /// StringMap::compact: records leaked by killed writers are given back.
  void compact();
  const std::string& name() const { return core_.name(); }
  bool read_only() const { return core_.read_only(); }

 private:
  friend struct detail::SnapshotAccess;
  explicit StringMultimap(DynamicMap core);
  std::size_t visit_key(std::string_view key, void (*fn)(void*, std::string_view), void* ctx) const;
  void visit(void (*fn)(void*, std::string_view, std::string_view), void* ctx) const;

  DynamicMap core_;
};

}  // namespace shmap
