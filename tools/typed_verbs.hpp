// shmap CLI — the verbs on typed maps (maps made by shmap::TypedMap or `shmap create --key T
// --value T`): put, get, del, scan, stat, check, compact, dump through shmap::DynamicMap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "shmap/typed_map.hpp"

namespace shmap::cli {

/// A type as the CLI spells it: u64, i64, u32, i32, u16, i16, u8, i8, f64, f32, or bytes:N
/// (N raw bytes, 1..4080, shown in hex). UsageError naming `flag` otherwise.
TypeInfo parse_type_arg(const std::string& flag, const std::string& text);
/// The CLI spelling of a type ("u64", "bytes:24"), or its recorded name if it has none.
std::string type_label(const TypeInfo& t);

/// The text of one key or value of fixed-size type t (its bytes at p, little-endian): numbers
/// as numbers, other types (and everything with as_hex) as hex bytes.
std::string format(const TypeInfo& t, const void* p, bool as_hex);
/// Parses `text` as a value of fixed-size type t into out (t.size bytes); UsageError naming
/// `what`.
void parse(const TypeInfo& t, const std::string& what, const std::string& text, void* out);

/// The map's types if it holds anything but uint64 -> uint64; nullopt for a uint64 map, and
/// for anything open() cannot read (the uint64 verbs then report that error as usual).
std::optional<DynamicMap::Layout> typed_layout(const std::string& name);

/// Arguments of the verbs below, as parsed by the CLI.
struct TypedArgs {
  std::string name, key, value, limit;
  bool json = false;
  bool hex = false;  // scan/get: values of integer and float types in hex bytes too
  std::string file;  // dump
  bool point_in_time = false;
  bool value_raw = false;    // put: `value` holds a --value-file's bytes, not an argument
  bool value_given = false;  // del: a VALUE was given (multimaps: erase that one value)
};

/// Runs `verb` on the typed map `name`. Returns the exit code; throws UsageError for a verb
/// typed maps do not support yet, or a bad KEY/VALUE for the map's types.
int run_typed_verb(const std::string& verb, const TypedArgs& args);

}  // namespace shmap::cli
