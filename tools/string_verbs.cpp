// shmap CLI — the verbs on string maps (string_verbs.hpp).
#include "string_verbs.hpp"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "cli_support.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"

namespace shmap::cli {

namespace {

std::string to_hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * s.size());
  for (const char c : s) {
    out += digits[static_cast<unsigned char>(c) >> 4];
    out += digits[static_cast<unsigned char>(c) & 15];
  }
  return out;
}

/// The bytes an argument names: itself, or with --hex its hex digits (an optional 0x first).
std::string from_arg(const std::string& what, const std::string& text, bool hex) {
  if (!hex) return text;
  const std::string h = text.rfind("0x", 0) == 0 ? text.substr(2) : text;
  auto digit = [](char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  };
  std::string out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2) {
    const int hi = digit(h[i]), lo = digit(h[i + 1]);
    if (hi < 0 || lo < 0) break;
    out += static_cast<char>(hi * 16 + lo);
  }
  if (out.size() * 2 != h.size()) {
    throw UsageError(what + " '" + text +
                     "' is not hex bytes (with --hex, give two hex digits "
                     "per byte)");
  }
  return out;
}

/// Well-formed UTF-8 (lead bytes, continuation bytes, no overlong two-byte forms): a JSON
/// string can carry it; anything else goes out as hex.
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80                ? 0
                  : c >= 0xc2 && c < 0xe0 ? 1
                  : (c >> 4) == 0xe       ? 2
                  : c >= 0xf0 && c < 0xf5 ? 3
                                          : -1;
    if (n < 0 || s.size() - i - 1 < static_cast<std::size_t>(n)) return false;
    for (int j = 1; j <= n; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) >> 6) != 2) return false;
    }
    i += 1 + static_cast<std::size_t>(n);
  }
  return true;
}

/// Text for a terminal: printable ASCII as is, everything else escaped (\n, \t, \xNN).
std::string shown(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

/// A JSON member: "name": "text" when the bytes are UTF-8 (and not --hex), else
/// "name_hex": "hex digits".
std::string json_member(const char* name, std::string_view s, bool hex) {
  if (!hex && valid_utf8(s)) return std::string("\"") + name + "\": " + json_string(s);
  return std::string("\"") + name + "_hex\": \"" + to_hex(s) + "\"";
}

StringMap open_for_walk(const std::string& name) {
  try {
    return StringMap::open_any(name);
  } catch (const Error& e) {
    if (e.code() != Errc::permission_denied && e.code() != Errc::handles_exhausted) throw;
  }
  return StringMap::open_any(name, OpenOptions{.read_only = true});
}

/// A value argument as the map stores it: the bytes (string values, or hex with --hex), or a
/// number / hex bytes parsed for the map's fixed-size value type.
std::string value_arg(const StringMap& m, const std::string& text, bool hex) {
  if (m.value_bytes() == 0) return from_arg("VALUE", text, hex);
  std::string out(m.value_bytes(), '\0');
  parse(m.value_type(), "VALUE", text, out.data());
  return out;
}

/// A key argument as the map stores it: the bytes (string keys, or hex with --hex), or a number
/// / hex bytes parsed for the map's fixed-size key type (TypedMap<K, std::string>).
std::string key_arg(const StringMap& m, const std::string& text, bool hex) {
  if (m.key_bytes() == 0) return from_arg("KEY", text, hex);
  std::string out(m.key_bytes(), '\0');
  parse(m.key_type(), "KEY", text, out.data());
  return out;
}

/// A key for a terminal: a fixed-size key type's as `shmap get` prints numbers; else shown().
std::string key_text(const StringMap& m, std::string_view k, bool hex) {
  if (m.key_bytes() == 0 || k.size() != m.key_bytes()) return hex ? to_hex(k) : shown(k);
  return format(m.key_type(), k.data(), hex);
}

/// A value as text: fixed-size types as `shmap get` prints a typed map's; strings as given.
std::string value_text(const StringMap& m, std::string_view v, bool hex) {
  if (m.value_bytes() == 0 || v.size() != m.value_bytes()) return std::string(v);
  return format(m.value_type(), v.data(), hex);
}

int not_found(const std::string& name, const std::string& what) {
  std::fprintf(stderr, "shmap: map '%s': %s\n", name.c_str(), what.c_str());
  return 1;
}

}  // namespace

bool is_string_verb(const std::string& verb) {
  return verb == "put" || verb == "get" || verb == "del" || verb == "scan" || verb == "stat";
}

int run_string_verb(const std::string& verb, const TypedArgs& a) {
  const std::string& name = a.name;
  if (verb == "put") {
    StringMap m = StringMap::open_any(name);
    // A --value-file's bytes are a string value as they are; as text, a fixed-size value's.
    const std::string v = !a.value_raw           ? value_arg(m, a.value, a.hex)
                          : m.value_bytes() == 0 ? a.value
                                                 : value_arg(m, text_of(a.value), a.hex);
    m.insert_or_assign(key_arg(m, a.key, a.hex), v);
    return 0;
  }
  if (verb == "get") {
    const StringMap m = StringMap::open_any(name, OpenOptions{.read_only = true});
    std::string v;
    if (!m.find(key_arg(m, a.key, a.hex), &v)) {
      return not_found(name, "key " + a.key + " not found");
    }
    // A string value's bytes as they are (a script gets exactly them), or hex; a fixed-size
    // value as a typed map's.
    if (m.value_bytes() != 0) {
      v = value_text(m, v, a.hex);
    } else if (a.hex) {
      v = to_hex(v);
    }
    std::fwrite(v.data(), 1, v.size(), stdout);
    std::fputc('\n', stdout);
    return 0;
  }
  if (verb == "del") {
    StringMap m = StringMap::open_any(name);
    if (!m.erase(key_arg(m, a.key, a.hex))) {
      return not_found(name, "key " + a.key + " not found");
    }
    return 0;
  }
  if (verb == "scan") {
    std::size_t limit = SIZE_MAX;
    if (!a.limit.empty()) limit = parse_u64_arg("--limit", a.limit);
    const StringMap m = open_for_walk(name);
    std::size_t n = 0;
    if (a.json) std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
    m.for_each([&](std::string_view k, std::string_view v) {
      if (n >= limit) return;
      const bool fixed = m.value_bytes() != 0;
      const std::string key_json = m.key_bytes() != 0
                                       ? "\"key\": " + json_string(key_text(m, k, a.hex))
                                       : json_member("key", k, a.hex);
      if (a.json) {
        std::printf("%s\n  {%s, %s}", n == 0 ? "" : ",", key_json.c_str(),
                    fixed ? ("\"value\": " + json_string(value_text(m, v, a.hex))).c_str()
                          : json_member("value", v, a.hex).c_str());
      } else if (a.hex) {
        std::printf("%s  %s\n", key_text(m, k, true).c_str(), to_hex(v).c_str());
      } else {
        std::printf("%s  %s\n", key_text(m, k, false).c_str(),
                    fixed ? value_text(m, v, false).c_str() : shown(v).c_str());
      }
      ++n;
    });
    if (a.json) std::printf("%s], \"count\": %zu}\n", n == 0 ? "" : "\n", n);
    return 0;
  }
  if (verb == "stat") {
    const StringMap m = StringMap::open_any(name, OpenOptions{.read_only = true});
    const Stats s = m.stats();
    const std::string vt = type_label(m.value_type());
    const std::string kt = type_label(m.key_type());
    if (a.json) {
      std::printf(
          "{\"map\": %s, \"key_type\": %s, \"value_type\": %s, "
          "\"values_in\": \"records\", \"entries\": %zu, \"capacity\": %zu, \"tables\": %zu, "
          "\"segment_bytes\": %zu, \"allocated_bytes\": %zu, \"handles_in_use\": %zu}\n",
          json_string(name).c_str(), json_string(kt).c_str(), json_string(vt).c_str(), s.size,
          s.capacity, s.tables, s.segment_bytes, s.allocated_bytes, s.handles_in_use);
      return 0;
    }
    Columns c;
    c.row({"map", name});
    c.row({"types", kt + " -> " + vt});
    c.row({"values", "keys and values in records of the arena ('shmap check' counts them)"});
    c.row({"entries", "about " + std::to_string(s.size)});
    c.row({"capacity", std::to_string(s.capacity) + " buckets, " + std::to_string(s.tables) +
                           (s.tables == 1 ? " table" : " tables (migrating)")});
    c.row({"segment bytes",
           human_bytes(s.segment_bytes) + " (allocated " + human_bytes(s.allocated_bytes) + ")"});
    c.row({"handles", std::to_string(s.handles_in_use) + " of " + std::to_string(s.max_handles)});
    c.print();
    return 0;
  }
  throw UsageError("'shmap " + verb + "' is not a string-map verb");
}

int run_multimap_verb(const std::string& verb, const TypedArgs& a) {
  const std::string& name = a.name;
  if (verb == "put") {
    StringMultimap m = StringMultimap::open(name);
    m.insert(from_arg("KEY", a.key, a.hex),
             a.value_raw ? a.value : from_arg("VALUE", a.value, a.hex));
    return 0;
  }
  if (verb == "get") {
    const StringMultimap m = StringMultimap::open(name, OpenOptions{.read_only = true});
    const std::size_t n = m.for_each_value(from_arg("KEY", a.key, a.hex), [&](std::string_view v) {
      const std::string out = a.hex ? to_hex(v) : std::string(v);
      std::fwrite(out.data(), 1, out.size(), stdout);
      std::fputc('\n', stdout);
    });
    if (n == 0) return not_found(name, "key " + a.key + " not found");
    return 0;
  }
  if (verb == "del") {
    StringMultimap m = StringMultimap::open(name);
    const std::string k = from_arg("KEY", a.key, a.hex);
    if (a.value_given) {
      if (!m.erase(k, from_arg("VALUE", a.value, a.hex))) {
        return not_found(name, "key " + a.key + " has no value " + a.value);
      }
    } else if (m.erase(k) == 0) {
      return not_found(name, "key " + a.key + " not found");
    }
    return 0;
  }
  if (verb == "scan") {
    std::size_t limit = SIZE_MAX;
    if (!a.limit.empty()) limit = parse_u64_arg("--limit", a.limit);
    StringMultimap m = [&] {
      try {
        return StringMultimap::open(name);
      } catch (const Error& e) {
        if (e.code() != Errc::permission_denied && e.code() != Errc::handles_exhausted) throw;
      }
      return StringMultimap::open(name, OpenOptions{.read_only = true});
    }();
    std::size_t n = 0;
    if (a.json) std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
    m.for_each([&](std::string_view k, std::string_view v) {
      if (n >= limit) return;
      if (a.json) {
        std::printf("%s\n  {%s, %s}", n == 0 ? "" : ",", json_member("key", k, a.hex).c_str(),
                    json_member("value", v, a.hex).c_str());
      } else if (a.hex) {
        std::printf("%s  %s\n", to_hex(k).c_str(), to_hex(v).c_str());
      } else {
        std::printf("%s  %s\n", shown(k).c_str(), shown(v).c_str());
      }
      ++n;
    });
    if (a.json) std::printf("%s], \"count\": %zu}\n", n == 0 ? "" : "\n", n);
    return 0;
  }
  if (verb == "stat") {
    const StringMultimap m = StringMultimap::open(name, OpenOptions{.read_only = true});
    const Stats s = m.stats();
    if (a.json) {
      std::printf(
          "{\"map\": %s, \"kind\": \"multimap\", \"key_type\": \"string\", "
          "\"value_type\": \"string\", \"values_in\": \"records\", \"entries\": %zu, "
          "\"capacity\": %zu, \"tables\": %zu, \"segment_bytes\": %zu, "
          "\"allocated_bytes\": %zu, \"handles_in_use\": %zu}\n",
          json_string(name).c_str(), s.size, s.capacity, s.tables, s.segment_bytes,
          s.allocated_bytes, s.handles_in_use);
      return 0;
    }
    Columns c;
    c.row({"map", name});
    c.row({"kind", "multimap (several values per key)"});
    c.row({"types", "string -> string"});
    c.row({"values", std::to_string(s.size) + " (all keys' values)"});
    c.row({"capacity", std::to_string(s.capacity) + " buckets, " + std::to_string(s.tables) +
                           (s.tables == 1 ? " table" : " tables (migrating)")});
    c.row({"segment bytes",
           human_bytes(s.segment_bytes) + " (allocated " + human_bytes(s.allocated_bytes) + ")"});
    c.row({"handles", std::to_string(s.handles_in_use) + " of " + std::to_string(s.max_handles)});
    c.print();
    return 0;
  }
  throw UsageError("'shmap " + verb + "' is not a multimap verb");
}

}  // namespace shmap::cli
