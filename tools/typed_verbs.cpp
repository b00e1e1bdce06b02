// shmap CLI — the verbs on typed maps (typed_verbs.hpp).
#include "typed_verbs.hpp"

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cli_support.hpp"
#include "string_verbs.hpp"

namespace shmap::cli {

namespace {

struct Spelling {
  const char* cli;
  const char* name;  // as TypeName<T> records it
  std::uint32_t size;
  TypeInfo::Kind kind;
};
constexpr Spelling kSpellings[] = {
    {"u64", "uint64", 8, TypeInfo::Kind::unsigned_integer},
    {"i64", "int64", 8, TypeInfo::Kind::signed_integer},
    {"u32", "uint32", 4, TypeInfo::Kind::unsigned_integer},
    {"i32", "int32", 4, TypeInfo::Kind::signed_integer},
    {"u16", "uint16", 2, TypeInfo::Kind::unsigned_integer},
    {"i16", "int16", 2, TypeInfo::Kind::signed_integer},
    {"u8", "uint8", 1, TypeInfo::Kind::unsigned_integer},
    {"i8", "int8", 1, TypeInfo::Kind::signed_integer},
    {"f64", "float64", 8, TypeInfo::Kind::floating_point},
    {"f32", "float32", 4, TypeInfo::Kind::floating_point},
};

bool is_u64(const TypeInfo& t) {
  return t.size == 8 && t.kind == TypeInfo::Kind::unsigned_integer && t.name == "uint64";
}

std::string hex(const unsigned char* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

}  // namespace

std::string format(const TypeInfo& t, const void* p, bool as_hex) {
  const auto* b = static_cast<const unsigned char*>(p);
  if (as_hex || t.kind == TypeInfo::Kind::other) return hex(b, t.size);
  if (t.kind == TypeInfo::Kind::floating_point) {
    char buf[64];
    if (t.size == 8) {
      double d;
      std::memcpy(&d, p, 8);
      std::snprintf(buf, sizeof(buf), "%.17g", d);
    } else {
      float f;
      std::memcpy(&f, p, 4);
      std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(f));
    }
    return buf;
  }
  std::uint64_t u = 0;
  std::memcpy(&u, p, t.size);
  if (t.kind == TypeInfo::Kind::signed_integer && t.size < 8 && (u >> (8 * t.size - 1)) != 0) {
    u |= ~std::uint64_t{0} << (8 * t.size);  // sign-extend
  }
  return t.kind == TypeInfo::Kind::signed_integer ? std::to_string(static_cast<std::int64_t>(u))
                                                  : std::to_string(u);
}

void parse(const TypeInfo& t, const std::string& what, const std::string& text, void* out) {
  auto bad = [&](const std::string& why) {
    throw UsageError(what + " '" + text + "' is not " + why);
  };
  if (t.kind == TypeInfo::Kind::other) {
    std::string h = text.rfind("0x", 0) == 0 ? text.substr(2) : text;
    if (h.size() != 2 * t.size) {
      bad("a value of " + std::to_string(t.size) + " bytes: give exactly " +
          std::to_string(2 * t.size) + " hex digits");
    }
    auto* b = static_cast<unsigned char*>(out);
    for (std::size_t i = 0; i < t.size; ++i) {
      const std::string byte = h.substr(2 * i, 2);
      char* end = nullptr;
      const unsigned long v = std::strtoul(byte.c_str(), &end, 16);
      if (end != byte.c_str() + 2 || !std::isxdigit(static_cast<unsigned char>(byte[0]))) {
        bad("hex bytes");
      }
      b[i] = static_cast<unsigned char>(v);
    }
    return;
  }
  if (t.kind == TypeInfo::Kind::floating_point) {
    errno = 0;
    char* end = nullptr;
    const double d = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) bad("a number");
    if (t.size == 8) {
      std::memcpy(out, &d, 8);
    } else {
      const auto f = static_cast<float>(d);
      if (std::isinf(f) && !std::isinf(d)) bad("within the range of f32");
      std::memcpy(out, &f, 4);
    }
    return;
  }
  const bool neg = t.kind == TypeInfo::Kind::signed_integer && !text.empty() && text[0] == '-';
  const std::optional<std::uint64_t> mag = parse_u64(neg ? std::string_view(text).substr(1) : text);
  if (!mag) bad("an integer (decimal or 0x-hex)");
  const unsigned bits = 8 * t.size;
  std::uint64_t u = *mag;
  if (t.kind == TypeInfo::Kind::unsigned_integer) {
    if (bits < 64 && u >> bits != 0) bad("within 0.." + std::to_string((1ull << bits) - 1));
  } else {
    const std::uint64_t limit = std::uint64_t{1} << (bits - 1);  // |min|; max is limit - 1
    if (neg ? u > limit : u >= limit) {
      bad("within the range of a " + std::to_string(bits) + "-bit signed integer");
    }
    u = neg ? ~u + 1 : u;
  }
  std::memcpy(out, &u, t.size);  // little-endian: the low bytes
}

namespace {

std::uint64_t key_word(const DynamicMap& m, const std::string& text) {
  if (m.key_type().size > sizeof(std::uint64_t)) {
    throw UsageError("map '" + m.name() + "': its keys have " + std::to_string(m.key_type().size) +
                     " bytes, more than a key word");
  }
  std::uint64_t w = 0;
  parse(m.key_type(), "KEY", text, &w);
  return w;
}

DynamicMap open_for_walk(const std::string& name) {
  try {
    return DynamicMap::open(name);
  } catch (const Error& e) {
    if (e.code() != Errc::permission_denied && e.code() != Errc::handles_exhausted) throw;
  }
  return DynamicMap::open(name, OpenOptions{.read_only = true});
}

int not_found(const std::string& name, const std::string& what) {
  std::fprintf(stderr, "shmap: map '%s': %s\n", name.c_str(), what.c_str());
  return 1;
}

}  // namespace

TypeInfo parse_type_arg(const std::string& flag, const std::string& text) {
  if (text == "string") return string_type();
  for (const Spelling& s : kSpellings) {
    if (text == s.cli) return TypeInfo{s.size, s.size, s.kind, s.name};
  }
  if (text.rfind("bytes:", 0) == 0) {
    const std::optional<std::uint64_t> n = parse_u64(std::string_view(text).substr(6));
    if (n && *n >= 1 && *n <= kMaxValueBytes) {
      return TypeInfo{static_cast<std::uint32_t>(*n), 1, TypeInfo::Kind::other, text};
    }
  }
  throw UsageError(flag + " '" + text +
                   "' is not a type: use u64, i64, u32, i32, u16, i16, u8, i8, f64, f32, "
                   "string or bytes:N (N from 1 to " +
                   std::to_string(kMaxValueBytes) + ")");
}

std::string type_label(const TypeInfo& t) {
  if (t.kind == TypeInfo::Kind::byte_string) return "string";
  for (const Spelling& s : kSpellings) {
    if (t.name == s.name && t.size == s.size && t.kind == s.kind) return s.cli;
  }
  if (t.name.rfind("bytes:", 0) == 0) return t.name;
  return t.name + " (" + std::to_string(t.size) + " bytes)";
}

std::optional<DynamicMap::Layout> typed_layout(const std::string& name) {
  try {
    const DynamicMap m = DynamicMap::open(name, OpenOptions{.read_only = true});
    if (is_u64(m.key_type()) && is_u64(m.value_type())) return std::nullopt;
    return DynamicMap::Layout{m.key_type(), m.value_type(), m.is_multimap()};
  } catch (const Error&) {
    return std::nullopt;  // the uint64 verb reports it
  }
}

int run_typed_verb(const std::string& verb, const TypedArgs& a) {
  const std::string& name = a.name;
  if (is_string_verb(verb)) {
    const auto layout = typed_layout(name);
    if (layout && layout->multimap) return run_multimap_verb(verb, a);
    // Maps held as string maps are: string keys or values, or keys of more than 8 bytes.
    if (layout && (layout->key.kind == TypeInfo::Kind::byte_string ||
                   layout->value.kind == TypeInfo::Kind::byte_string || layout->key.size > 8)) {
      return run_string_verb(verb, a);
    }
  }
  if (verb == "del" && a.value_given) {
    throw UsageError("del takes a VALUE on a multimap only; map '" + name + "' is not one");
  }
  if (verb == "put") {
    DynamicMap m = DynamicMap::open(name);
    std::vector<unsigned char> v(m.value_type().size);
    const std::uint64_t k = key_word(m, a.key);
    parse(m.value_type(), "VALUE", a.value_raw ? text_of(a.value) : a.value, v.data());
    m.insert_or_assign(k, v.data());
    return 0;
  }
  if (verb == "get") {
    const DynamicMap m = DynamicMap::open(name, OpenOptions{.read_only = true});
    std::vector<unsigned char> v(m.value_type().size);
    if (!m.find(key_word(m, a.key), v.data()))
      return not_found(name, "key " + a.key + " not found");
    std::printf("%s\n", format(m.value_type(), v.data(), a.hex).c_str());
    return 0;
  }
  if (verb == "del") {
    DynamicMap m = DynamicMap::open(name);
    if (!m.erase(key_word(m, a.key))) return not_found(name, "key " + a.key + " not found");
    return 0;
  }
  if (verb == "scan") {
    std::size_t limit = SIZE_MAX;
    if (!a.limit.empty()) limit = parse_u64_arg("--limit", a.limit);
    const DynamicMap m = open_for_walk(name);
    std::size_t n = 0;
    if (a.json) std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
    struct Ctx {
      const DynamicMap& m;
      const TypedArgs& a;
      std::size_t& n;
      std::size_t limit;
    } ctx{m, a, n, limit};
    m.for_each(
        [](void* c, std::uint64_t k, const void* v) {
          auto& x = *static_cast<Ctx*>(c);
          if (x.n >= x.limit) return;
          const std::string ks = format(x.m.key_type(), &k, false);
          const std::string vs = format(x.m.value_type(), v, x.a.hex);
          if (x.a.json) {
            std::printf("%s\n  {\"key\": %s, \"value\": %s}", x.n == 0 ? "" : ",",
                        json_string(ks).c_str(), json_string(vs).c_str());
          } else {
            std::printf("%20s  %s\n", ks.c_str(), vs.c_str());
          }
          ++x.n;
        },
        &ctx);
    if (a.json) std::printf("%s], \"count\": %zu}\n", n == 0 ? "" : "\n", n);
    return 0;
  }
  if (verb == "stat") {
    const DynamicMap m = DynamicMap::open(name, OpenOptions{.read_only = true});
    const Stats s = m.stats();
    const bool records = m.value_type().size > 8;
    if (a.json) {
      std::printf(
          "{\"map\": %s, \"key_type\": %s, \"value_type\": %s, \"value_bytes\": %u, "
          "\"values_in\": \"%s\", \"entries\": %zu, \"capacity\": %zu, \"tables\": %zu, "
          "\"segment_bytes\": %zu, \"allocated_bytes\": %zu, \"handles_in_use\": %zu}\n",
          json_string(name).c_str(), json_string(type_label(m.key_type())).c_str(),
          json_string(type_label(m.value_type())).c_str(), m.value_type().size,
          records ? "records" : "buckets", s.size, s.capacity, s.tables, s.segment_bytes,
          s.allocated_bytes, s.handles_in_use);
      return 0;
    }
    Columns c;
    c.row({"map", name});
    c.row({"types", type_label(m.key_type()) + " -> " + type_label(m.value_type())});
    c.row({"values",
           records ? "in records of the arena ('shmap check' counts them)" : "in the buckets"});
    c.row({"entries", "about " + std::to_string(s.size)});
    c.row({"capacity", std::to_string(s.capacity) + " buckets, " + std::to_string(s.tables) +
                           (s.tables == 1 ? " table" : " tables (migrating)")});
    c.row({"segment bytes",
           human_bytes(s.segment_bytes) + " (allocated " + human_bytes(s.allocated_bytes) + ")"});
    c.row({"handles", std::to_string(s.handles_in_use) + " of " + std::to_string(s.max_handles)});
    c.print();
    return 0;
  }
  if (verb == "check") {
    const DynamicMap m = open_for_walk(name);
    RecordStats rs;
    const CheckReport r = m.check(&rs);
    char records[256];
    std::snprintf(records, sizeof(records),
                  "\"records\": {\"slabs\": %zu, \"live\": %zu, \"free\": %zu, \"retired\": "
                  "%zu, \"leaked\": %zu, \"inline_entries\": %zu}, ",
                  rs.slabs, rs.live, rs.free, rs.retired, rs.leaked, rs.inline_entries);
    print_check_report(name, r, a.json, records);
    if (!r.ok) {
      std::fflush(stdout);
      throw Error(Errc::corrupt, "shmap: map '" + name + "': check found " +
                                     std::to_string(r.problems.size()) + " problem(s)");
    }
    return 0;
  }
  if (verb == "dump") {
    const DynamicMap m = a.point_in_time ? DynamicMap::open(name) : open_for_walk(name);
    m.dump(a.file, {.json = a.json, .point_in_time = a.point_in_time});
    if (a.file != "-") {
      std::printf("dumped map '%s' to '%s': %zu entries (%s)%s\n", name.c_str(), a.file.c_str(),
                  m.size(),
                  (type_label(m.key_type()) + " -> " + type_label(m.value_type())).c_str(),
                  a.point_in_time ? " (point in time)" : "");
    }
    return 0;
  }
  if (verb == "compact") {
    DynamicMap m = DynamicMap::open(name);
    m.compact();
    return 0;
  }
  const auto layout = typed_layout(name);
  throw UsageError(
      "'shmap " + verb + "' works on uint64 -> uint64 maps only for now; map '" + name +
      "' holds " +
      (layout ? type_label(layout->key) + " -> " + type_label(layout->value) : "other types") +
      " (typed maps: put, get, del, scan, stat, check, compact, dump, load, readers, rm; "
      "string maps: put, get, del, scan, stat, check, compact, readers, rm)");
}

}  // namespace shmap::cli
