// shmap — typed maps: any trivially copyable key of up to 8 bytes, any trivially copyable
// value (structs, arrays, doubles, pairs) of up to kMaxValueBytes.
//
//   struct Quote { double bid, ask; std::uint64_t ts; };
//   auto q = shmap::TypedMap<std::uint64_t, Quote>::open_or_create("quotes");
//   q.insert_or_assign(42, Quote{1.5, 1.6, now});
//   q.update(42, [](Quote& v) { v.ts += 1; });  // atomic read-modify-write
//   if (auto v = q.find(42)) use(v->bid);
//
// A value of up to 8 bytes lives in its bucket, as in shmap::Map. A larger one lives in an
// immutable record in the segment's arena (docs/DESIGN.md §5): a write fills a new record and
// publishes it with the bucket's one CAS, so a reader sees either the whole old value or the
// whole new one, never a torn mix, under concurrent writers and across a SIGKILL. A replaced
// record is reused only after every reader that could still see it is done.
//
// The segment records both types (size, alignment, kind and name, TypeName<T>): opening it
// with other types, or with shmap::Map when its values are not uint64, fails with
// Errc::layout_mismatch naming both. Keys are compared and hashed as their bytes (zero-padded
// to 8): for floating-point keys 0.0 and -0.0 are different keys and a NaN finds itself.
//
// Snapshots: dump/load (snapshot version 2, binary or JSON; load into a new map). Not yet:
// load --replace/--merge. The CLI reads a typed map's types from its segment.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "shmap/shmap.hpp"

namespace shmap {

namespace detail {
struct SnapshotAccess;
struct SegmentTypes;
}  // namespace detail

/// Largest value a TypedMap stores (one record: a 16-byte record header and the value fill
/// the largest record class, 4 KiB).
inline constexpr std::size_t kMaxValueBytes = 4096 - 16;

/// How a type is recorded in a segment.
struct TypeInfo {
  enum class Kind : std::uint32_t {
    unsigned_integer = 1,
    signed_integer = 2,
    floating_point = 3,
    other = 4,        // a struct, array, enum, pointer-free aggregate: compared by size and name
    byte_string = 5,  // a string of any length (shmap::StringMap): size 0, align 1
  };
  std::uint32_t size = 0;
  std::uint32_t align = 0;
  Kind kind = Kind::other;
  std::string name;  // recorded: its first 47 bytes and a hash of all of it
  bool operator==(const TypeInfo&) const = default;
};

/// The name a type is recorded under: for integers and floating point types their kind and
/// bits ("uint64", "int32", "float64": `unsigned long long` and `uint64_t` are one type here),
/// else the compiler's spelling of it ("Quote", "std::array<char, 8>"). Specialize
/// TypeName<T> with a `static constexpr std::string_view value` to pin a name that stays the
/// same across renames and compilers. The whole name counts (a hash of it is recorded beside
/// its first 47 bytes).
template <class T>
struct TypeName {
 private:
  static constexpr std::string_view spelled() {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool> && sizeof(T) <= 8) {
      constexpr std::string_view u[] = {"", "uint8", "uint16", "", "uint32", "", "", "", "uint64"};
      constexpr std::string_view i[] = {"", "int8", "int16", "", "int32", "", "", "", "int64"};
      return std::is_signed_v<T> ? i[sizeof(T)] : u[sizeof(T)];
    } else if constexpr (std::is_floating_point_v<T> && (sizeof(T) == 4 || sizeof(T) == 8)) {
      return sizeof(T) == 4 ? "float32" : "float64";
    } else {
      constexpr std::string_view f = __PRETTY_FUNCTION__;
      constexpr std::string_view key = "T = ";
      const std::size_t b = f.find(key) + key.size();
      const std::size_t e = f.find_first_of(";]", b);
      return f.substr(b, e - b);
    }
  }

 public:
  static constexpr std::string_view value = spelled();
};

template <class T>
TypeInfo type_info() {
  TypeInfo t;
  t.size = sizeof(T);
  t.align = alignof(T);
  t.kind = std::is_floating_point_v<T> ? TypeInfo::Kind::floating_point
           : std::is_integral_v<T>     ? (std::is_signed_v<T> ? TypeInfo::Kind::signed_integer
                                                              : TypeInfo::Kind::unsigned_integer)
                                       : TypeInfo::Kind::other;
  t.name = std::string(TypeName<T>::value);
  return t;
}

/// The type of a StringMap's keys and values: byte strings of any length, recorded as
/// "string" (size 0: the length is each string's own). A DynamicMap::Layout may give a string
/// type another name (the Python binding records "utf8" and "pickle"): kind byte_string, size 0
/// and alignment 1 make it a string; the name is compared like any type's.
inline TypeInfo string_type() { return {0, 1, TypeInfo::Kind::byte_string, "string"}; }

/// What the records of a typed map hold (TypedMap::check computes it; exact only while no
/// writer runs, which check arranges).
struct RecordStats {
  std::size_t slabs = 0;           // arena extents carved into records (one per large record)
  std::size_t live = 0;            // records a bucket refers to
  std::size_t free = 0;            // on the free lists, ready for reuse
  std::size_t retired = 0;         // replaced or erased, waiting for readers to move on
  std::size_t leaked = 0;          // none of the above (a writer killed mid-write); compact() frees
  std::size_t record_bytes = 0;    // bytes of one record (header and value, rounded up)
  std::size_t inline_entries = 0;  // a string map's entries held in their bucket, no record
};

/// A typed map whose types are known at run time (tools, language bindings), and the untyped
/// core under every TypedMap: keys are 64-bit words (a key's bytes, zero-padded), values are
/// byte blocks of the size the segment records (src/typed_map.cpp). Templates stay thin: they
/// only convert.
class StringMap;
class StringMultimap;

class DynamicMap {
 public:
  struct Layout {
    TypeInfo key, value;
    bool multimap = false;  // several values per key (StringMultimap): string -> string only
  };
  static DynamicMap create(const std::string& name, const Options& options, const Layout& layout);
  /// Opens a map of exactly these types (else layout_mismatch, naming both).
  static DynamicMap open(const std::string& name, const Layout& layout);
  /// Opens a map of whatever types it holds (key_type(), value_type() say which). read_only:
  /// as OpenOptions::read_only (find and for_each copy values under a validated read).
  static DynamicMap open(const std::string& name, const OpenOptions& options = {});
  static DynamicMap open_or_create(const std::string& name, const Options& options,
                                   const Layout& layout, bool* created);
  DynamicMap(DynamicMap&&) noexcept;
  DynamicMap& operator=(DynamicMap&&) noexcept;
  ~DynamicMap();
  /// The u64 map underneath (keys, and record offsets or inline values), as Map::impl: for the
  /// library's own compiled code and its tests; not a stable API.
  const Map& untyped() const { return map_; }

  /// True for a map with string keys (StringMap, TypedMap<std::string, V>): then the value
  /// operations below (find, insert, ..., for_each, dump) throw layout_mismatch; open it with
  /// those. The others (stats, readers, check, compact) work on every map; size() counts the
  /// table's buckets (one per key hash: the string map's size() is exact).
  bool holds_strings() const { return strings_; }
  /// True for a StringMultimap's segment (several values per key; kind "multimap").
  bool is_multimap() const { return layout_.multimap; }
  const TypeInfo& key_type() const { return layout_.key; }
  const TypeInfo& value_type() const { return layout_.value; }
  /// "uint64 -> Quote (24 bytes)".
  std::string describe() const;

  /// Copies k's value (value_type().size bytes) to out; false if absent.
  bool find(std::uint64_t k, void* out) const;
  bool insert(std::uint64_t k, const void* v);
  /// True if k was inserted, false if its value was replaced.
  bool insert_or_assign(std::uint64_t k, const void* v);
  bool erase(std::uint64_t k);
  bool compare_exchange(std::uint64_t k, const void* expected, const void* desired);
  /// f edits the value in place (a copy); returns false to leave the value as it is.
  using EditFn = bool (*)(void* ctx, void* value);
  /// Applies f to k's value, if present. Returns whether k was present.
  bool update(std::uint64_t k, EditFn f, void* ctx);
  /// k absent: installs make(ctx, value) (returns true); present: applies f (returns false).
  using MakeFn = void (*)(void* ctx, void* value);
  bool upsert(std::uint64_t k, MakeFn make, EditFn f, void* ctx);
  /// fn gets each entry's key word and value bytes (valid during the call only).
  void for_each(void (*fn)(void* ctx, std::uint64_t k, const void* v), void* ctx) const;
  std::size_t size() const;
  Stats stats() const;
  std::vector<ReaderInfo> readers() const;
  std::size_t clear_stale_handles();
  CheckReport check(RecordStats* records) const;
  void compact();
  const std::string& name() const;
  bool read_only() const;

  /// Map::dump for any types: a uint64 map writes snapshot version 1 (as Map::dump), a typed
  /// map version 2 (its types in the header; binary form only for now).
  void dump(const std::string& path, const DumpOptions& options = {}) const;
  /// Map::load for any snapshot: version 1 or JSON makes a uint64 map, version 2 a map of the
  /// types it records (LoadOptions::Mode::create only for now, from a file).
  static DynamicMap load(const std::string& path, const std::string& name,
                         const LoadOptions& options = {});
  /// The same, for a snapshot that must hold exactly these types: else layout_mismatch,
  /// naming both, before anything is created.
  static DynamicMap load(const std::string& path, const std::string& name,
                         const LoadOptions& options, const Layout& expect);

 private:
  friend struct detail::SnapshotAccess;
  friend class StringMap;
  friend class StringMultimap;
  explicit DynamicMap(Map map);
  /// Throws layout_mismatch for a map of strings (value operations take fixed sizes).
  void need_fixed_size(const char* what) const;
  /// create() with the types exactly as a segment records them (a loaded snapshot's).
  static DynamicMap create_recorded(const std::string& name, const Options& options,
                                    const detail::SegmentTypes& types);
  bool find_read_only(std::uint64_t k, void* out) const;
  Map map_;
  Layout layout_;
  std::size_t value_size_ = 0;
  bool inline_ = true;
  bool strings_ = false;
};

namespace detail {

/// The types a segment records for this layout (the names cut at 47 bytes, with the hashes of
/// the whole names); invalid_argument, naming the map, for sizes no typed map takes.
SegmentTypes layout_types(const std::string& name, const DynamicMap::Layout& layout);

template <class T>
std::uint64_t to_word(const T& x) {
  std::uint64_t w = 0;
  std::memcpy(&w, &x, sizeof(T));
  return w;
}
template <class T>
T from_word(std::uint64_t w) {
  T x;
  std::memcpy(&x, &w, sizeof(T));
  return x;
}

}  // namespace detail

template <class K, class V>
class TypedMap {
  static_assert(std::is_trivially_copyable_v<K>,
                "shmap::TypedMap<K, V>: K must be trivially copyable (its bytes are the key); "
                "for std::string keys include <shmap/string_map.hpp>");
  static_assert(std::has_unique_object_representations_v<K> || std::is_floating_point_v<K>,
                "shmap::TypedMap<K, V>: K has padding bytes (or another representation of "
                "equal values), so equal keys could differ in their bytes; use a key without "
                "padding");
  static_assert(sizeof(K) <= 8,
                "shmap::TypedMap<K, V>: a key of more than 8 bytes is held by its bytes, as a "
                "string key is: #include <shmap/string_map.hpp>");
  static_assert(std::is_trivially_copyable_v<V>,
                "shmap::TypedMap<K, V>: V must be trivially copyable (values are copied as bytes "
                "between processes; no pointers, no std::string)");
  static_assert(sizeof(V) <= kMaxValueBytes,
                "shmap::TypedMap<K, V>: V is larger than shmap::kMaxValueBytes");

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

  std::optional<V> find(const K& k) const {
    V v;
    if (!core_.find(detail::to_word(k), &v)) return std::nullopt;
    return v;
  }
  bool contains(const K& k) const { return find(k).has_value(); }
  /// Inserts k -> v if k is absent; returns whether it did.
  bool insert(const K& k, const V& v) { return core_.insert(detail::to_word(k), &v); }
  /// Returns true if k was inserted, false if an existing value was replaced.
  bool insert_or_assign(const K& k, const V& v) {
    return core_.insert_or_assign(detail::to_word(k), &v);
  }
  bool erase(const K& k) { return core_.erase(detail::to_word(k)); }
  /// Replaces k's value by `desired` if its bytes equal `expected`'s.
  bool compare_exchange(const K& k, const V& expected, const V& desired) {
    return core_.compare_exchange(detail::to_word(k), &expected, &desired);
  }
  /// Atomic read-modify-write: f(V&) edits a copy of k's value, which then replaces the value
  /// if no other write came in between (else f runs again on the newer value: f must depend
  /// on its argument only, and must not use this map). f may return bool: false leaves the
  /// value as it is. Returns false if k is absent. An exception from f propagates and changes
  /// nothing (the new value's record, if one was filled, stays leaked until compact()).
  template <class F>
  bool update(const K& k, F&& f) {
    return core_.update(detail::to_word(k), &edit<F>, &f);
  }
  /// As update if k is present (returns false); else installs make() (returns true).
  template <class Make, class F>
  bool upsert(const K& k, Make&& make, F&& f) {
    struct Ctx {
      Make& make;
      F& f;
    } ctx{make, f};
    return core_.upsert(
        detail::to_word(k),
        [](void* c, void* out) {
          const V v = static_cast<Ctx*>(c)->make();
          std::memcpy(out, &v, sizeof(V));
        },
        [](void* c, void* value) { return edit<F>(&static_cast<Ctx*>(c)->f, value); }, &ctx);
  }
  /// Visits every entry (weakly consistent, as Map::for_each); f must not use this map.
  template <class F>
  void for_each(F&& f) const {
    core_.for_each(
        [](void* c, std::uint64_t k, const void* v) {
          V value;
          std::memcpy(&value, v, sizeof(V));
          (*static_cast<std::remove_reference_t<F>*>(c))(detail::from_word<K>(k),
                                                         std::as_const(value));
        },
        const_cast<void*>(static_cast<const void*>(&f)));
  }
  std::size_t size() const { return core_.size(); }
  bool empty() const { return size() == 0; }
  Stats stats() const { return core_.stats(); }
  /// Map::check, plus an audit of the value records (holds writers for its walk, as a
  /// point-in-time dump does); `records`, if given, receives their counts.
  CheckReport check(RecordStats* records = nullptr) const { return core_.check(records); }
  /// Map::compact, plus: records leaked by killed writers are given back.
  void compact() { core_.compact(); }
  /// A snapshot (version 2: the types in the header, each entry the key and the value's
  /// bytes), written as Map::dump writes; binary form only for now.
  void dump(const std::string& path, const DumpOptions& options = {}) const {
    core_.dump(path, options);
  }
  /// Loads a typed snapshot into a new map `name` (Mode::create only for now); the snapshot's
  /// types must be K and V (else layout_mismatch, naming both).
  static TypedMap load(const std::string& path, const std::string& name,
                       const LoadOptions& options = {}) {
    return TypedMap(DynamicMap::load(path, name, options, layout()));
  }
  const std::string& name() const { return core_.name(); }

 private:
  explicit TypedMap(DynamicMap core) : core_(std::move(core)) {}
  template <class F>
  static bool edit(void* c, void* value) {
    V v;
    std::memcpy(&v, value, sizeof(V));
    auto& f = *static_cast<std::remove_reference_t<F>*>(c);
    if constexpr (std::is_same_v<std::invoke_result_t<decltype(f), V&>, bool>) {
      if (!f(v)) return false;
    } else {
      f(v);
    }
    std::memcpy(value, &v, sizeof(V));
    return true;
  }
  DynamicMap core_;
};

}  // namespace shmap
