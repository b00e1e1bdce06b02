// shmap CLI — the verbs on string maps (made by shmap::StringMap or `shmap create --key string
// --value string`): put, get, del, scan and stat through shmap::StringMap. check, compact,
// readers and rm are the typed maps' (typed_verbs.cpp), which work on every map.
#pragma once

#include <string>

#include "typed_verbs.hpp"

namespace shmap::cli {

/// True if `verb` is one of the above.
bool is_string_verb(const std::string& verb);
/// Runs `verb` on the string map `name`: KEY and VALUE are the arguments' bytes, or hex with
/// --hex (then values are shown in hex too). Returns the exit code.
int run_string_verb(const std::string& verb, const TypedArgs& args);
/// The same verbs on a multimap (StringMultimap, `shmap create --multimap`): put adds a value,
/// get prints every value of KEY (one a line), del erases all of KEY's values or, with VALUE,
/// that one; scan lists every (key, value); stat says the kind.
int run_multimap_verb(const std::string& verb, const TypedArgs& args);

}  // namespace shmap::cli
