// shmap — string maps: byte-string keys and values (std::string_view in, std::string out).
//
//   auto m = shmap::StringMap::open_or_create("sessions");
//   m.insert_or_assign("user:42", R"({"cart": 3})");
//   if (auto v = m.find("user:42")) use(*v);
//   m.update("user:42", [](std::string& v) { v += "!"; });  // atomic read-modify-write
//
// A key is hashed to 64 bits (XXH3 with the segment's own random seed); the table holds that
// hash as its key and, as the value, the offset of an immutable record in the arena with the
// key and value bytes (docs/DESIGN.md §5; the record's layout in detail/entry_list.hpp). A
// write fills a new record and publishes it with the bucket's one CAS, so a reader sees the
// whole old value or the whole new one, never a torn mix, under concurrent writers and across
// a SIGKILL. Two keys with the same 64-bit hash share one record.
//
// Sizes: a key and its value take up to kMaxStringEntryBytes together (empty strings too).
// Longer entries are refused with invalid_argument, nothing written.
//
// The segment records its types as string -> string: TypedMap, DynamicMap's value operations
// and shmap::Map refuse it (layout_mismatch), and StringMap refuses every other map.
// Snapshots: dump()/load() (version 3, binary or JSON; not yet replace or merge). Below:
// TypedMap<std::string, V> (struct or number values) and TypedMap<K, std::string> (number
// keys); the multimap is string_multimap.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmap/typed_map.hpp"

namespace shmap {

/// The most bytes a string map's key and value take together, 2 MiB less 96 bytes (a record of
/// the largest class: 2 MiB less the slab header's 64 bytes and the record header's 16, then
/// the entry list's 8-byte header and the entry's 8-byte lengths). So keys of 64 KiB with
/// values of 1 MiB, or any split of the total.
inline constexpr std::size_t kMaxStringEntryBytes = (std::size_t{2} << 20) - 96;

class StringMap {
 public:
  static StringMap create(const std::string& name, const Options& options = {});
  /// options.read_only: find, contains, for_each, size and stats only (values are copied
  /// under a validated read, as Map's read-only attachments do).
  static StringMap open(const std::string& name, const OpenOptions& options = {});
  static StringMap open_or_create(const std::string& name, const Options& options = {},
                                  bool* created = nullptr);
  /// Opens any map of strings (tools, bindings): a string -> string map as open() does, a
  /// TypedMap<std::string, V>'s with values as V's bytes -- every value written must then have
  /// value_bytes() bytes (else invalid_argument, nothing written) -- and a TypedMap<K,
  /// std::string>'s with keys as K's bytes (key_bytes() of them).
  static StringMap open_any(const std::string& name, const OpenOptions& options = {});
  /// The value type the segment records (string_type(), or V's for TypedMap<std::string, V>).
  const TypeInfo& value_type() const { return core_.value_type(); }
  /// 0: values of any length; else every value has exactly this many bytes.
  std::size_t value_bytes() const { return fixed_; }
  /// The key type the segment records (string_type(), or K's for TypedMap<K, std::string>).
  const TypeInfo& key_type() const { return core_.key_type(); }
  /// 0: keys of any length; else every key has exactly this many bytes (a write with another
  /// is invalid_argument, a lookup finds nothing).
  std::size_t key_bytes() const { return key_fixed_; }
  static bool remove(const std::string& name) { return Map::remove(name); }
  static DynamicMap::Layout layout() { return {string_type(), string_type()}; }
  /// Writes a snapshot of the map (version 3: its types, then every entry; "-": standard
  /// output), binary or JSON (options.json), as Map::dump.
  void dump(const std::string& path, const DumpOptions& options = {}) const;
  /// Makes map `name` from a snapshot of a string -> string map (layout_mismatch for other
  /// types), complete or not at all, as Map::load. Not yet: Mode::replace and Mode::merge.
  static StringMap load(const std::string& path, const std::string& name,
                        const LoadOptions& options = {});

  std::optional<std::string> find(std::string_view key) const;
  /// As find(), into *out (its capacity reused); false if absent.
  bool find(std::string_view key, std::string* out) const;
  /// Zero-copy read: calls f(std::string_view value) with key's value where it lies in the
  /// segment, under a read pin, and returns true; returns false, f not called, if key is
  /// absent. The view dies when f returns (the record may be reused after the pin goes) and
  /// points into memory other processes share: copy what you keep. While f runs this thread
  /// holds a pin, which keeps every table and record retired meanwhile from being freed: f
  /// must be short and must not use this map (nor any map in the same segment). An exception
  /// from f propagates, and the pin is released on the way. On a read-only attachment f sees
  /// a validated copy instead (read-only attachments never pin; see find()).
  template <class F>
  bool visit_value(std::string_view key, F&& f) const {
    return view_value(
        key, [](void* c, std::string_view v) { (*static_cast<std::remove_reference_t<F>*>(c))(v); },
        const_cast<void*>(static_cast<const void*>(&f)));
  }
  bool contains(std::string_view key) const;
  /// Inserts key -> value if key is absent; returns whether it did.
  bool insert(std::string_view key, std::string_view value);
  /// Returns true if key was inserted, false if its value was replaced.
  bool insert_or_assign(std::string_view key, std::string_view value);
  bool erase(std::string_view key);
  /// Replaces key's value by `desired` if it equals `expected`.
  bool compare_exchange(std::string_view key, std::string_view expected, std::string_view desired);
  /// Atomic read-modify-write: f(std::string&) edits a copy of key's value, which replaces
  /// the value if no other write came in between (else f runs again on the newer value: f must
  /// depend on its argument only and must not use this map). f may return bool: false leaves
  /// the value as it is. Returns false if key is absent. An exception from f propagates and
  /// changes nothing.
  template <class F>
  bool update(std::string_view key, F&& f) {
    return edit(key, nullptr, &call_edit<F>, &f);
  }
  /// As update if key is present (returns false); else installs make() (returns true).
  template <class Make, class F>
  bool upsert(std::string_view key, Make&& make, F&& f) {
    struct Ctx {
      Make& make;
      F& f;
    } ctx{make, f};
    return edit(
        key, [](void* c, std::string& out) { out = std::string(static_cast<Ctx*>(c)->make()); },
        [](void* c, std::string& v) { return call_edit<F>(&static_cast<Ctx*>(c)->f, v); }, &ctx);
  }
  /// Visits every entry, f(std::string_view key, std::string_view value) (weakly consistent,
  /// as Map::for_each; the views are valid during the call only); f must not use this map.
  template <class F>
  void for_each(F&& f) const {
    visit([](void* c, std::string_view k,
             std::string_view v) { (*static_cast<std::remove_reference_t<F>*>(c))(k, v); },
          const_cast<void*>(static_cast<const void*>(&f)));
  }
  std::size_t size() const;
  bool empty() const { return size() == 0; }
  /// Map::stats, with size as size() counts it (entries, not buckets).
  Stats stats() const;
  std::vector<ReaderInfo> readers() const { return core_.readers(); }
  std::size_t clear_stale_handles() { return core_.clear_stale_handles(); }
  /// Map::check, plus an audit of the records (TypedMap::check).
  CheckReport check(RecordStats* records = nullptr) const { return core_.check(records); }
  /// Map::compact, plus: records leaked by killed writers are given back.
  void compact();
  const std::string& name() const { return core_.name(); }
  bool read_only() const { return core_.read_only(); }

  /// The 64-bit hash a key is stored under (for tests that make keys collide).
  static inline std::uint64_t (*hash_for_test)(std::string_view key) = nullptr;

 private:
  template <class K, class V>
  friend class TypedMap;
  friend struct detail::SnapshotAccess;
  /// A string -> string map (else layout_mismatch, naming both).
  explicit StringMap(DynamicMap core);
  /// Any string-keyed map whose types the caller has checked (TypedMap<std::string, V>).
  struct Checked {};
  StringMap(Checked, DynamicMap core);
  /// Throws corrupt: a stored value of `got` bytes where the map's values have `want`.
  [[noreturn]] void bad_value_size(std::size_t got, std::size_t want) const;
  using MakeFn = void (*)(void* ctx, std::string& out);
  using EditFn = bool (*)(void* ctx, std::string& value);
  bool edit(std::string_view key, MakeFn make, EditFn f, void* ctx);
  void visit(void (*fn)(void*, std::string_view, std::string_view), void* ctx) const;
  bool view_value(std::string_view key, void (*fn)(void*, std::string_view), void* ctx) const;
  std::uint64_t hash(std::string_view key) const;
  template <class F>
  static bool call_edit(void* c, std::string& v) {
    auto& f = *static_cast<std::remove_reference_t<F>*>(c);
    if constexpr (std::is_same_v<std::invoke_result_t<decltype(f), std::string&>, bool>) {
      return f(v);
    } else {
      f(v);
      return true;
    }
  }

  /// invalid_argument unless `value` has the size this map's values have.
  void check_value(std::string_view value) const;
  /// invalid_argument unless `key` has the size this map's keys have.
  void check_key(std::string_view key) const;

  DynamicMap core_;
  std::size_t fixed_ = 0;      // value_bytes()
  std::size_t key_fixed_ = 0;  // key_bytes()
};

/// A map from byte-string keys to any trivially copyable value (structs, numbers, arrays):
/// StringMap's core with values of sizeof(V) bytes, recorded as string -> V (opening it with
/// other types is layout_mismatch, naming both). A key and its value take up to
/// kMaxStringEntryBytes together.
///
///   struct Quote { double bid, ask; std::uint64_t ts; };
///   auto q = shmap::TypedMap<std::string, Quote>::open_or_create("quotes");
///   q.insert_or_assign("EURUSD", Quote{1.08, 1.09, now});
///   q.update("EURUSD", [](Quote& v) { v.ts = now; });
template <class V>
class TypedMap<std::string, V> {
  static_assert(std::is_trivially_copyable_v<V>,
                "shmap::TypedMap<std::string, V>: V must be trivially copyable (values are "
                "copied as bytes between processes; for string values use shmap::StringMap)");
  static_assert(sizeof(V) < kMaxStringEntryBytes,
                "shmap::TypedMap<std::string, V>: V leaves no room for a key in one entry");

 public:
  using key_type = std::string;
  using mapped_type = V;

  static TypedMap create(const std::string& name, const Options& options = {}) {
    return TypedMap(DynamicMap::create(name, options, layout()));
  }
  static TypedMap open(const std::string& name) {
    return TypedMap(DynamicMap::open(name, layout()));
  }
  static TypedMap open_or_create(const std::string& name, const Options& options = {},
                                 bool* created = nullptr) {
    return TypedMap(DynamicMap::open_or_create(name, options, layout(), created));
  }
  static bool remove(const std::string& name) { return Map::remove(name); }
  static DynamicMap::Layout layout() { return {string_type(), type_info<V>()}; }
  /// As StringMap::dump.
  void dump(const std::string& path, const DumpOptions& options = {}) const {
    core_.dump(path, options);
  }
  /// As StringMap::load, for a snapshot of a map of exactly these types.
  static TypedMap load(const std::string& path, const std::string& name,
                       const LoadOptions& options = {}) {
    return TypedMap(DynamicMap::load(path, name, options, layout()));
  }

  std::optional<V> find(std::string_view k) const {
    std::string b;
    if (!core_.find(k, &b)) return std::nullopt;
    return to_value(b);
  }
  bool contains(std::string_view k) const { return core_.contains(k); }
  bool insert(std::string_view k, const V& v) { return core_.insert(k, bytes(v)); }
  /// Returns true if k was inserted, false if its value was replaced.
  bool insert_or_assign(std::string_view k, const V& v) {
    return core_.insert_or_assign(k, bytes(v));
  }
  bool erase(std::string_view k) { return core_.erase(k); }
  /// Replaces k's value by `desired` if its bytes equal `expected`'s.
  bool compare_exchange(std::string_view k, const V& expected, const V& desired) {
    return core_.compare_exchange(k, bytes(expected), bytes(desired));
  }
  /// As TypedMap<K, V>::update: f(V&) edits a copy (may run more than once); f may return
  /// bool (false: leave the value). Returns false if k is absent.
  template <class F>
  bool update(std::string_view k, F&& f) {
    return core_.update(k, [&f](std::string& b) { return edit(b, f); });
  }
  /// As update if k is present (returns false); else installs make() (returns true).
  template <class Make, class F>
  bool upsert(std::string_view k, Make&& make, F&& f) {
    return core_.upsert(
        k, [&make] { return std::string(bytes(make())); },
        [&f](std::string& b) { return edit(b, f); });
  }
  /// Visits every entry, f(std::string_view key, const V& value) (weakly consistent).
  template <class F>
  void for_each(F&& f) const {
    core_.for_each([this, &f](std::string_view k, std::string_view b) {
      const V v = to_value(b);
      f(k, v);
    });
  }
  std::size_t size() const { return core_.size(); }
  bool empty() const { return size() == 0; }
  Stats stats() const { return core_.stats(); }
  CheckReport check(RecordStats* records = nullptr) const { return core_.check(records); }
  void compact() { core_.compact(); }
  const std::string& name() const { return core_.name(); }

 private:
  template <class, class>
  friend class TypedMap;  // a map of keys of more than 8 bytes is this map, keyed by their bytes
  explicit TypedMap(DynamicMap core) : core_(StringMap::Checked{}, std::move(core)) {}
  static std::string_view bytes(const V& v) {
    return std::string_view(reinterpret_cast<const char*>(&v), sizeof(V));
  }
  V to_value(std::string_view b) const {
    if (b.size() != sizeof(V)) core_.bad_value_size(b.size(), sizeof(V));
    V v;
    std::memcpy(&v, b.data(), sizeof(V));
    return v;
  }
  template <class F>
  static bool edit(std::string& b, F& f) {
    if (b.size() != sizeof(V)) return false;  // damage: leave it (check() reports it)
    V v;
    std::memcpy(&v, b.data(), sizeof(V));
    if constexpr (std::is_same_v<std::invoke_result_t<F&, V&>, bool>) {
      if (!f(v)) return false;
    } else {
      f(v);
    }
    b.assign(reinterpret_cast<const char*>(&v), sizeof(V));
    return true;
  }
  StringMap core_;
};

/// A map from a fixed-size key (an integer, a double, a struct) to a byte-string
/// value (std::string_view in, std::string out): StringMap's core with keys of sizeof(K) bytes,
/// recorded as K -> string (opening it with other types is layout_mismatch, naming both).
///
///   auto blobs = shmap::TypedMap<std::uint64_t, std::string>::open_or_create("blobs");
///   blobs.insert_or_assign(42, payload);   // up to kMaxStringEntryBytes - 8 bytes
///   if (auto v = blobs.find(42)) use(*v);
template <class K>
requires(!std::is_same_v<K, std::string>) class TypedMap<K, std::string> {
  static_assert(std::is_trivially_copyable_v<K>,
                "shmap::TypedMap<K, std::string>: K must be trivially copyable (its bytes are "
                "the key; for string keys use shmap::StringMap)");
  static_assert(std::has_unique_object_representations_v<K> ||
                    (std::is_floating_point_v<K> && sizeof(K) <= 8),
                "shmap::TypedMap<K, std::string>: K has padding bytes (a long double has some), "
                "so equal keys could differ in their bytes; use a key without padding");
  static_assert(sizeof(K) < kMaxStringEntryBytes,
                "shmap::TypedMap<K, std::string>: K leaves no room for a value in one entry");

 public:
  using key_type = K;
  using mapped_type = std::string;

  static TypedMap create(const std::string& name, const Options& options = {}) {
    return TypedMap(DynamicMap::create(name, options, layout()));
  }
  static TypedMap open(const std::string& name) {
    return TypedMap(DynamicMap::open(name, layout()));
  }
  static TypedMap open_or_create(const std::string& name, const Options& options = {},
                                 bool* created = nullptr) {
    return TypedMap(DynamicMap::open_or_create(name, options, layout(), created));
  }
  static bool remove(const std::string& name) { return Map::remove(name); }
  static DynamicMap::Layout layout() { return {type_info<K>(), string_type()}; }
  /// As StringMap::dump.
  void dump(const std::string& path, const DumpOptions& options = {}) const {
    core_.dump(path, options);
  }
  /// As StringMap::load, for a snapshot of a map of exactly these types.
  static TypedMap load(const std::string& path, const std::string& name,
                       const LoadOptions& options = {}) {
    return TypedMap(DynamicMap::load(path, name, options, layout()));
  }

  std::optional<std::string> find(const K& k) const { return core_.find(bytes(k)); }
  /// As find(), into *out (its capacity reused); false if absent.
  bool find(const K& k, std::string* out) const { return core_.find(bytes(k), out); }
  bool contains(const K& k) const { return core_.contains(bytes(k)); }
  bool insert(const K& k, std::string_view v) { return core_.insert(bytes(k), v); }
  /// Returns true if k was inserted, false if its value was replaced.
  bool insert_or_assign(const K& k, std::string_view v) {
    return core_.insert_or_assign(bytes(k), v);
  }
  bool erase(const K& k) { return core_.erase(bytes(k)); }
  bool compare_exchange(const K& k, std::string_view expected, std::string_view desired) {
    return core_.compare_exchange(bytes(k), expected, desired);
  }
  /// As StringMap::update: f(std::string&) edits a copy (may run more than once).
  template <class F>
  bool update(const K& k, F&& f) {
    return core_.update(bytes(k), std::forward<F>(f));
  }
  template <class Make, class F>
  bool upsert(const K& k, Make&& make, F&& f) {
    return core_.upsert(bytes(k), std::forward<Make>(make), std::forward<F>(f));
  }
  /// Visits every entry, f(const K& key, std::string_view value) (weakly consistent).
  template <class F>
  void for_each(F&& f) const {
    core_.for_each([&f](std::string_view kb, std::string_view v) {
      if (kb.size() != sizeof(K)) return;  // damage: check() reports it
      K k;
      std::memcpy(&k, kb.data(), sizeof(K));
      f(static_cast<const K&>(k), v);
    });
  }
  std::size_t size() const { return core_.size(); }
  bool empty() const { return size() == 0; }
  Stats stats() const { return core_.stats(); }
  CheckReport check(RecordStats* records = nullptr) const { return core_.check(records); }
  void compact() { core_.compact(); }
  const std::string& name() const { return core_.name(); }

 private:
  explicit TypedMap(DynamicMap core) : core_(StringMap::Checked{}, std::move(core)) {}
  static std::string_view bytes(const K& k) {
    return std::string_view(reinterpret_cast<const char*>(&k), sizeof(K));
  }
  StringMap core_;
};

/// A map from a key of more than 8 bytes (a struct, an array, a pair of ids) to any trivially
/// copyable value: held as TypedMap<std::string, V> is, keyed by the key's bytes, and recorded
/// as K -> V (opening it with other types is layout_mismatch, naming both). The API is
/// TypedMap<K, V>'s for small keys.
///
///   struct Pair { std::uint64_t account, instrument; };
///   auto pos = shmap::TypedMap<Pair, Position>::open_or_create("positions");
///   pos.update({7, 42}, [](Position& p) { p.qty += 100; });
template <class K, class V>
requires(sizeof(K) > 8 && !std::is_same_v<K, std::string> &&
         !std::is_same_v<V, std::string>) class TypedMap<K, V> {
  static_assert(std::is_trivially_copyable_v<K>,
                "shmap::TypedMap<K, V>: K must be trivially copyable (its bytes are the key); "
                "for std::string keys include <shmap/string_map.hpp>");
  static_assert(std::has_unique_object_representations_v<K>,
                "shmap::TypedMap<K, V>: K has padding bytes (a long double has some), so equal "
                "keys could differ in their bytes; use a key without padding");
  static_assert(std::is_trivially_copyable_v<V>,
                "shmap::TypedMap<K, V>: V must be trivially copyable (values are copied as bytes "
                "between processes; no pointers, no std::string)");
  static_assert(sizeof(K) + sizeof(V) <= kMaxStringEntryBytes,
                "shmap::TypedMap<K, V>: a key and a value take more than "
                "shmap::kMaxStringEntryBytes together");

 public:
  using key_type = K;
  using mapped_type = V;

  static TypedMap create(const std::string& name, const Options& options = {}) {
    return TypedMap(DynamicMap::create(name, options, layout()));
  }
  static TypedMap open(const std::string& name) {
    return TypedMap(DynamicMap::open(name, layout()));
  }
  static TypedMap open_or_create(const std::string& name, const Options& options = {},
                                 bool* created = nullptr) {
    return TypedMap(DynamicMap::open_or_create(name, options, layout(), created));
  }
  static bool remove(const std::string& name) { return Map::remove(name); }
  static DynamicMap::Layout layout() { return {type_info<K>(), type_info<V>()}; }
  /// As StringMap::dump (snapshot version 3: the keys' bytes, the values' bytes).
  void dump(const std::string& path, const DumpOptions& options = {}) const {
    by_bytes_.dump(path, options);
  }
  /// As StringMap::load, for a snapshot of a map of exactly these types.
  static TypedMap load(const std::string& path, const std::string& name,
                       const LoadOptions& options = {}) {
    return TypedMap(DynamicMap::load(path, name, options, layout()));
  }

  std::optional<V> find(const K& k) const { return by_bytes_.find(bytes(k)); }
  bool contains(const K& k) const { return by_bytes_.contains(bytes(k)); }
  bool insert(const K& k, const V& v) { return by_bytes_.insert(bytes(k), v); }
  /// Returns true if k was inserted, false if its value was replaced.
  bool insert_or_assign(const K& k, const V& v) { return by_bytes_.insert_or_assign(bytes(k), v); }
  bool erase(const K& k) { return by_bytes_.erase(bytes(k)); }
  /// Replaces k's value by `desired` if its bytes equal `expected`'s.
  bool compare_exchange(const K& k, const V& expected, const V& desired) {
    return by_bytes_.compare_exchange(bytes(k), expected, desired);
  }
  /// f(V&) edits a copy (may run more than once); f may return bool (false: leave the value).
  /// Returns false if k is absent.
  template <class F>
  bool update(const K& k, F&& f) {
    return by_bytes_.update(bytes(k), std::forward<F>(f));
  }
  /// As update if k is present (returns false); else installs make() (returns true).
  template <class Make, class F>
  bool upsert(const K& k, Make&& make, F&& f) {
    return by_bytes_.upsert(bytes(k), std::forward<Make>(make), std::forward<F>(f));
  }
  /// Visits every entry, f(const K& key, const V& value) (weakly consistent).
  template <class F>
  void for_each(F&& f) const {
    by_bytes_.for_each([&f](std::string_view kb, const V& v) {
      if (kb.size() != sizeof(K)) return;  // damage: check() reports it
      K k;
      std::memcpy(&k, kb.data(), sizeof(K));
      f(static_cast<const K&>(k), v);
    });
  }
  std::size_t size() const { return by_bytes_.size(); }
  bool empty() const { return size() == 0; }
  Stats stats() const { return by_bytes_.stats(); }
  CheckReport check(RecordStats* records = nullptr) const { return by_bytes_.check(records); }
  void compact() { by_bytes_.compact(); }
  const std::string& name() const { return by_bytes_.name(); }

 private:
  explicit TypedMap(DynamicMap core) : by_bytes_(std::move(core)) {}
  static std::string_view bytes(const K& k) {
    return std::string_view(reinterpret_cast<const char*>(&k), sizeof(K));
  }
  TypedMap<std::string, V> by_bytes_;  // the same map, keyed by K's bytes
};

}  // namespace shmap
