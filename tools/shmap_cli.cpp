// shmap — the command-line tool. Each verb is a thin layer over the public API (like LMDB's
// mdb_stat / mdb_dump / mdb_load, and redis-cli's verbs). Exit codes: 0 success, 1 not found
// (get/del/mget/exists), 2 usage error (one line naming the argument as typed, plus a hint),
// 3 any other failure (one line on stderr naming the map and the problem).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "shmap/detail/temporaries.hpp"
#include "shmap/shmap.hpp"
#include "shmap/typed_map.hpp"
#include "typed_verbs.hpp"

#ifndef SHMAP_VERSION
#define SHMAP_VERSION "unknown"
#endif

namespace {

using shmap::Map;
using namespace shmap::cli;

constexpr int kExitOk = 0;
constexpr int kExitNotFound = 1;
constexpr int kExitUsage = 2;
constexpr int kExitError = 3;

/// Work at least this large (entries, or 16-byte entries' worth of file) gets a progress bar.
constexpr std::uint64_t kProgressMinEntries = 1u << 18;

std::string u64s(std::uint64_t v) { return std::to_string(v); }

std::string octal(unsigned mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0%o", mode);
  return buf;
}

/// Fails like the library does: "shmap: map 'name': what", exit code 3.
[[noreturn]] void map_error(shmap::Errc code, const std::string& name, const std::string& what) {
  throw shmap::Error(code, "shmap: map '" + name + "': " + what);
}

int not_found(const std::string& name, const std::string& what) {
  std::fprintf(stderr, "shmap: map '%s': %s\n", name.c_str(), what.c_str());
  return kExitNotFound;
}

/// A JSON number, or with --json-strings a JSON string: exact for tools whose numbers are
/// doubles (JavaScript, jq before 1.7 lose precision above 2^53).
std::string jnum(std::uint64_t v, bool strings) {
  return strings ? "\"" + std::to_string(v) + "\"" : std::to_string(v);
}

/// Read-only attachment: no handle slot, read permission suffices, nothing written.
Map open_read_only(const std::string& name) {
  return Map::open(name, shmap::OpenOptions{.read_only = true});
}

/// For walks (scan, export, dump, check): a read-write attachment, whose pin holds tables back
/// so that a long walk never has to start again; read-only when this process may not write the
/// map or every handle slot is taken.
Map open_for_walk(const std::string& name) {
  try {
    return Map::open(name);
  } catch (const shmap::Error& e) {
    if (e.code() != shmap::Errc::permission_denied && e.code() != shmap::Errc::handles_exhausted) {
      throw;
    }
  }
  return open_read_only(name);
}

// Options shared by `create`, `load` and `import` (a new map's creation options). Kept as
// strings so that an error names the flag as typed.
struct CreateArgs {
  std::string capacity, max_handles, mode, max_bytes;
  void add_to(CLI::App* cmd, const std::string& note = "") {
    cmd->add_option("--capacity", capacity,
                    "Buckets of the first table, 1 to 2^36 (rounded up to a power of 2; the map "
                    "never shrinks below it)" +
                        note)
        ->type_name("N");
    cmd->add_option(
           "--max-handles", max_handles,
           "Handle slots, 1 to 4095: Map objects attached at once, across processes" + note)
        ->type_name("N");
    cmd->add_option("--mode", mode, "Permission bits of the segment, octal (0600)" + note)
        ->type_name("OCTAL");
    cmd->add_option("--max-bytes", max_bytes,
                    "Largest size the segment may grow to, in bytes, 2^20 to 2^46 (64 GiB)" + note)
        ->type_name("BYTES");
  }
  bool any() const {
    return !capacity.empty() || !max_handles.empty() || !mode.empty() || !max_bytes.empty();
  }
  shmap::CreationOverrides overrides() const {
    shmap::CreationOverrides o;
    if (!capacity.empty())
      o.initial_capacity = parse_range_arg("--capacity", capacity, 1, 1ull << 36);
    if (!max_handles.empty())
      o.max_handles = parse_range_arg("--max-handles", max_handles, 1, 4095);
    if (!mode.empty()) o.mode = parse_mode_arg(mode);
    if (!max_bytes.empty()) {
      o.max_bytes = parse_range_arg("--max-bytes", max_bytes, 1ull << 20, 1ull << 46);
    }
    return o;
  }
  shmap::Options options() const {
    const shmap::CreationOverrides o = overrides();
    shmap::Options r;
    r.initial_capacity = o.initial_capacity.value_or(r.initial_capacity);
    r.max_handles = o.max_handles.value_or(r.max_handles);
    r.mode = o.mode.value_or(r.mode);
    r.max_bytes = o.max_bytes.value_or(r.max_bytes);
    return r;
  }
};

void print_stat(const Map& m, bool json) {
  const shmap::Stats s = m.stats();
  const double load = s.capacity == 0 ? 0.0 : static_cast<double>(s.size) / s.capacity;
  if (json) {
    std::printf(
        "{\"map\": %s, \"format_version\": %u, \"entries\": %zu, \"entries_estimated\": true, "
        "\"capacity\": %zu, \"load_factor\": %.6f, \"used_buckets\": %zu, \"tables\": %zu, "
        "\"migration\": {\"chunks_total\": %zu, \"chunks_done\": %zu}, "
        "\"retired_pending\": %zu, \"segment_bytes\": %zu, \"allocated_bytes\": %zu, "
        "\"handles_in_use\": %zu, \"max_handles\": %zu, \"global_epoch\": %llu, "
        "\"resizes\": %llu, \"tables_freed\": %llu, "
        "\"options\": {\"initial_capacity\": %zu, \"max_handles\": %zu, \"mode\": \"%s\", "
        "\"max_bytes\": %zu}}\n",
        json_string(m.name()).c_str(), s.format_version, s.size, s.capacity, load, s.used_buckets,
        s.tables, s.migration_total, s.migration_done, s.retired_pending, s.segment_bytes,
        s.allocated_bytes, s.handles_in_use, s.max_handles,
        static_cast<unsigned long long>(s.global_epoch), static_cast<unsigned long long>(s.resizes),
        static_cast<unsigned long long>(s.tables_freed), s.options.initial_capacity,
        s.options.max_handles, octal(s.options.mode).c_str(), s.options.max_bytes);
    return;
  }
  char buf[160];
  Columns c;
  c.row({"map", m.name()});
  c.row({"format version", std::to_string(s.format_version)});
  // The size is the sum of striped per-lane counters, read without stopping writers: exact
  // when no write is under way, an estimate otherwise. `check` counts by walking the tables.
  c.row({"entries", "about " + std::to_string(s.size) +
                        " (counters read on the fly; 'shmap check' counts exactly)"});
  c.row({"capacity", std::to_string(s.capacity) + " buckets"});
  std::snprintf(buf, sizeof buf, "about %.4f (%zu buckets used, tombstones included)", load,
                s.used_buckets);
  c.row({"load factor", buf});
  c.row({"tables in chain", std::to_string(s.tables)});
  if (s.migration_total == 0) {
    c.row({"migration", "none"});
  } else {
    std::snprintf(buf, sizeof buf, "%zu / %zu chunks (%.1f%%)", s.migration_done, s.migration_total,
                  100.0 * s.migration_done / s.migration_total);
    c.row({"migration", buf});
  }
  c.row({"retired tables", std::to_string(s.retired_pending) + " waiting for readers"});
  c.row({"segment bytes",
         std::to_string(s.segment_bytes) + " (" + human_bytes(s.segment_bytes) + ") mapped size"});
  c.row({"allocated bytes", std::to_string(s.allocated_bytes) + " (" +
                                human_bytes(s.allocated_bytes) + ") resident in /dev/shm"});
  c.row({"handles", std::to_string(s.handles_in_use) + " / " + std::to_string(s.max_handles) +
                        " in use (this command holds none)"});
  c.row({"global epoch", u64s(s.global_epoch)});
  c.row({"resizes", u64s(s.resizes)});
  c.row({"tables freed", u64s(s.tables_freed)});
  c.row({"creation options", "initial_capacity=" + std::to_string(s.options.initial_capacity) +
                                 " max_handles=" + std::to_string(s.options.max_handles) +
                                 " mode=" + octal(s.options.mode) +
                                 " max_bytes=" + std::to_string(s.options.max_bytes)});
  c.print();
}

void print_readers(const shmap::DynamicMap& m, bool clear, std::size_t cleared, bool json) {
  const auto readers = m.readers();
  const auto now_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  auto age = [&](std::uint64_t opened) {
    return opened == 0 || opened > now_ns ? std::chrono::nanoseconds(0)
                                          : std::chrono::nanoseconds(now_ns - opened);
  };
  if (json) {
    std::printf("{\"map\": %s, ", json_string(m.name()).c_str());
    if (clear) std::printf("\"cleared\": %zu, ", cleared);
    std::printf("\"readers\": [");
    for (std::size_t i = 0; i < readers.size(); ++i) {
      const auto& r = readers[i];
      std::printf(
          "%s\n  {\"slot\": %zu, \"pid\": %d, \"alive\": %s, \"self\": %s, \"pinned_lanes\": %zu, "
          "\"oldest_pinned_epoch\": %llu, \"opened_at_unix_ns\": %llu, \"age_seconds\": %.3f}",
          i == 0 ? "" : ",", r.slot, r.pid, r.alive ? "true" : "false", r.self ? "true" : "false",
          r.pinned_lanes, static_cast<unsigned long long>(r.oldest_pinned_epoch),
          static_cast<unsigned long long>(r.opened_at_unix_ns),
          static_cast<double>(age(r.opened_at_unix_ns).count()) / 1e9);
    }
    std::printf("%s]}\n", readers.empty() ? "" : "\n");
    return;
  }
  if (clear) std::printf("cleared %zu stale handle slot(s)\n", cleared);
  if (readers.empty()) {
    std::printf("no handle slot of map '%s' is in use\n", m.name().c_str());
    return;
  }
  Columns c;
  c.row({"SLOT", "PID", "ALIVE", "STATE", "OPENED"});
  for (const auto& r : readers) {
    std::string state = "idle";
    if (r.pinned_lanes > 0) {
      state = "pinned at epoch " + u64s(r.oldest_pinned_epoch) + " (" +
              std::to_string(r.pinned_lanes) + (r.pinned_lanes == 1 ? " thread)" : " threads)");
    }
    c.row({std::to_string(r.slot), std::to_string(r.pid), r.alive ? "yes" : "no (stale)", state,
           human_duration(age(r.opened_at_unix_ns)) + " ago"});
  }
  c.print();
}

/// Ctrl-C, kill, a closed terminal: remove the dump's temporary file or the load's staging
/// segment in progress, end a progress line cleanly, then die of the signal as if there were
/// no handler (SA_RESETHAND).
extern "C" void on_terminating_signal(int sig) {
  shmap::detail::remove_snapshot_temporaries();
  ProgressBar::on_signal();
  ::raise(sig);  // delivered with the default action once the handler returns
}

void remove_temporaries_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_terminating_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) ::sigaction(sig, &sa, nullptr);
}

/// Writes text to FILE ("-": standard output). A file appears only when complete: a temporary
/// beside it is renamed into place; only a regular file (or nothing) may be there.
void write_text_file(const std::string& path, const std::string& what_map,
                     const std::function<void(std::FILE*)>& write) {
  if (path == "-") {
    write(stdout);
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      map_error(shmap::Errc::io_error, what_map,
                std::string("cannot write standard output: ") + std::strerror(errno));
    }
    return;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    map_error(shmap::Errc::invalid_argument, what_map,
              "'" + path +
                  "' exists and is not a regular file; give '-' to write to standard "
                  "output");
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    map_error(shmap::Errc::io_error, what_map,
              "cannot create '" + tmp + "': " + std::strerror(errno));
  }
  write(f);
  const bool ok = std::fflush(f) == 0 && !std::ferror(f) && ::fsync(::fileno(f)) == 0;
  const int err = errno;
  std::fclose(f);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    map_error(shmap::Errc::io_error, what_map,
              "cannot write '" + path + "': " + std::strerror(ok ? errno : err));
  }
}

constexpr const char* kDescription =
    "shmap — operate shmap maps: lock-free uint64 -> uint64 hash maps in POSIX shared memory\n"
    "(/dev/shm/NAME), shared by any number of processes.\n"
    "\n"
    "KEY, VALUE and DELTA are decimal or 0x-hex unsigned 64-bit integers (DELTA may be\n"
    "negative). NAME is 1 to 200 characters of [A-Za-z0-9._-]. '--' ends the options.\n"
    "Exit codes: 0 ok, 1 not found (get, del, mget, exists), 2 usage error, 3 any other\n"
    "error (one line on stderr naming the map and the problem).";

constexpr const char* kFooter =
    "\nCommon tasks:\n"
    "  shmap create prices --capacity 1024 --mode 0640\n"
    "  shmap put prices 42 4200; shmap get prices 42; shmap add prices 42 -5\n"
    "  shmap mput prices 1 10 2 20; shmap mget prices 1 2 3; shmap exists prices 1\n"
    "  shmap stat prices; shmap readers prices; shmap check prices; shmap ls\n"
    "  shmap export prices > prices.txt          # KEY VALUE lines ('#' comments)\n"
    "  shmap import prices2 prices.txt           # creates prices2 if absent\n"
    "  seq 1 1000000 | awk '{print $1, $1*2}' | shmap import big -\n"
    "  shmap dump prices /backup/prices.shmap    # checksummed snapshot, safe under writes\n"
    "  shmap rm prices; shmap load /backup/prices.shmap prices   # same options as before\n"
    "  shmap dump prices - | ssh host shmap load - prices        # copy to another machine\n"
    "Read verbs (get, mget, exists, scan, export, stat, readers, check, dump) need only\n"
    "read permission on /dev/shm/NAME: they attach read-only when they cannot write.\n"
    "Run 'shmap help VERB' (or 'shmap VERB --help') for a verb's arguments.";

struct Verb {
  const char* name;
  CLI::App* app;
};

int run(int argc, char** argv) {
  CLI::App app{kDescription, "shmap"};
  app.footer(kFooter);
  app.set_version_flag("-V,--version", std::string("shmap ") + SHMAP_VERSION);
  app.require_subcommand(0, 1);
  app.fallthrough(false);

  std::string name, file, key, value, value_file;
  std::vector<std::string> rest;  // KEY... or KEY VALUE ... of the multi-key verbs
  std::string limit_arg, help_verb;
  bool json = false, json_strings = false, pit = false, replace = false, merge = false,
       clear = false, force = false, hex = false, multimap = false;
  CreateArgs create_args;
  std::vector<Verb> verbs;

  // summary: one line in 'shmap --help'; details: the rest of 'shmap help VERB'.
  auto verb = [&](const char* n, const std::string& summary, const std::string& details = "") {
    CLI::App* c = app.add_subcommand(n, summary);
    c->footer(details);  // (else the subcommand would repeat the top-level footer)
    c->allow_extras();   // reported by us, in the order given, with the option named as typed
    verbs.push_back({n, c});
    return c;
  };
  auto name_arg = [&](CLI::App* c) {
    c->add_option("NAME", name, "Map name (the segment /dev/shm/NAME)")->required();
  };
  auto json_flags = [&](CLI::App* c) {
    c->add_flag("--json", json, "Print JSON");
    c->add_flag("--json-strings", json_strings,
                "Print JSON with keys and values as strings (exact in tools whose numbers are "
                "doubles); implies --json");
  };

  std::string key_type_arg, value_type_arg;
  auto* create = verb("create", "Create a new, empty map",
                      "\nuint64 -> uint64 unless --key or --value says otherwise. A typed map "
                      "(what shmap::TypedMap<K, V> makes) takes put, get, del, scan, stat, check, "
                      "compact, readers and rm; values are numbers, or hex bytes for bytes:N. A "
                      "map with string keys (--key string, what shmap::StringMap and "
                      "TypedMap<std::string, V> make) takes put, get, del, scan, stat, check, "
                      "compact, readers and rm; keys (and string values) are the arguments' "
                      "bytes, or hex with --hex. --multimap makes a multimap (string -> string, "
                      "several values per key; what shmap::StringMultimap makes): put adds a "
                      "value, get prints them all, del erases them all or one (del NAME KEY "
                      "VALUE).");
  name_arg(create);
  create_args.add_to(create);
  create
      ->add_option("--key", key_type_arg,
                   "Key type: u64 (default), i64, u32, i32, u16, i16, "
                   "u8, i8, f64, f32, bytes:N, string")
      ->type_name("TYPE");
  create
      ->add_option("--value", value_type_arg,
                   "Value type: u64 (default), i64, u32, i32, u16, "
                   "i16, u8, i8, f64, f32, bytes:N (N <= 4080), string (with --key string)")
      ->type_name("TYPE");
  create->add_flag("--multimap", multimap,
                   "Several values per key (string keys and values: the default then)");

  auto* put = verb("put", "Set KEY to VALUE (inserting or overwriting)");
  name_arg(put);
  put->add_option("KEY", key, "Key")->required();
  CLI::Option* put_value = put->add_option("VALUE", value, "Value");
  put->add_option("--value-file", value_file,
                  "String maps: the value is this file's bytes ('-': stdin), for values too big "
                  "or too binary for an argument; other maps: its text, as VALUE")
      ->excludes(put_value);
  const char* hex_help = "String maps: KEY and VALUE are hex bytes, and values are shown in hex";
  put->add_flag("--hex", hex, hex_help);

  auto* get =
      verb("get", "Print KEY's value alone on stdout; exit 1 (and a line on stderr) if absent");
  name_arg(get);
  get->add_option("KEY", key, "Key")->required();
  get->add_flag("--hex", hex, hex_help);

  auto* del = verb("del", "Erase KEY; exit 1 (and a line on stderr) if it was absent");
  name_arg(del);
  del->add_option("KEY", key, "Key")->required();
  CLI::Option* del_value =
      del->add_option("VALUE", value, "Multimaps: erase this one value of KEY's (else all)");
  del->add_flag("--hex", hex, hex_help);

  auto* add = verb("add", "Add DELTA to KEY's value and print the new value",
                   "\nThe sum is mod 2^64; an absent key counts as 0. DELTA may be negative: "
                   "'shmap add m 5 -1' subtracts 1.");
  name_arg(add);
  add->add_option("KEY", key, "Key")->required();
  add->add_option("DELTA", value, "Amount to add, possibly negative")->required();

  auto* incr = verb("incr", "Add 1 (or BY) to KEY's value and print the new value");
  name_arg(incr);
  incr->add_option("KEY", key, "Key")->required();
  incr->add_option("BY", value, "Amount (default 1)");

  auto* decr = verb("decr", "Subtract 1 (or BY) from KEY's value (mod 2^64) and print the result");
  name_arg(decr);
  decr->add_option("KEY", key, "Key")->required();
  decr->add_option("BY", value, "Amount (default 1)");

  auto* mget = verb("mget", "Print the value of each KEY, in order ('-' if absent)",
                    "\nOne line per KEY. Exit 1 (and a line on stderr) if any is absent.");
  name_arg(mget);
  mget->add_option("KEY", rest, "Keys")->required();
  json_flags(mget);

  auto* mput = verb("mput", "Set each KEY to its VALUE",
                    "\nPairs as arguments; with none, KEY VALUE lines on standard input (the "
                    "import format: decimal or 0x-hex, '#' comments).");
  name_arg(mput);
  mput->add_option("PAIRS", rest, "KEY VALUE [KEY VALUE ...]");

  auto* exists =
      verb("exists", "Print how many of the KEYs are present", "\nExit 0 if all are, 1 otherwise.");
  name_arg(exists);
  exists->add_option("KEY", rest, "Keys")->required();

  auto* stat = verb("stat", "Entries, capacity, load factor, tables, bytes, handles, options",
                    "\nThe entry count is an estimate ('about': striped counters read while "
                    "others write); 'shmap check' counts exactly. Needs read permission only and "
                    "no handle slot.");
  name_arg(stat);
  stat->add_flag("--json", json, "Print JSON");

  auto* readers = verb("readers", "Who is attached: one line per handle slot in use",
                       "\nPid, alive or stale, pinned epoch or idle, age. Needs no slot itself, "
                       "so it works when every slot is taken.");
  name_arg(readers);
  readers->add_flag("--clear-stale", clear,
                    "Free the slots of dead processes first (needs write permission)");
  readers->add_flag("--json", json, "Print JSON");

  auto* scan = verb("scan", "Print the entries as KEY VALUE lines",
                    "\nKeys right-aligned; 'shmap import' reads the lines back.");
  name_arg(scan);
  scan->add_option("--limit", limit_arg, "Print at most N entries")->type_name("N");
  scan->add_flag("--hex", hex, hex_help);
  json_flags(scan);

  auto* exp = verb("export", "Write the entries as KEY VALUE text lines",
                   "\nOne 'KEY VALUE' line per entry (decimal, or 0x-hex with --hex) after a "
                   "'#' comment line, to FILE or standard output ('-', the default). "
                   "'shmap import' reads it.");
  name_arg(exp);
  exp->add_option("FILE", file, "Output file ('-': standard output); appears when complete");
  exp->add_flag("--hex", hex, "Write keys and values in 0x-hex");

  auto* imp = verb("import", "Set KEY VALUE text lines in a map, creating it if absent",
                   "\nReads FILE or standard input ('-', the default): one 'KEY VALUE' pair a "
                   "line, decimal or 0x-hex, blanks between, '#' comments and blank lines "
                   "ignored (scan and export output read back). The whole input is checked "
                   "first: a bad line is reported with its number and nothing changes. A new "
                   "map is sized for the input; the creation flags apply only to a new map.");
  name_arg(imp);
  imp->add_option("FILE", file, "Input file ('-': standard input)");
  create_args.add_to(imp, " (if the map is created)");

  auto* dump = verb("dump", "Write a snapshot of the map to FILE or standard output",
                    "\nThe file appears only when complete. Safe while others write.");
  name_arg(dump);
  dump->add_option("FILE", file,
                   "Snapshot file ('-': standard output). Replaced only if it is a regular file "
                   "(through a symbolic link: the file it names); gets the map's mode bits")
      ->required();
  dump->add_flag("--json", json,
                 "Write the JSON form (for people and small maps, up to 256 MiB), with a "
                 "content checksum that load verifies");
  dump->add_flag("--point-in-time", pit,
                 "Hold writers back while the entries are copied in memory (not while the "
                 "file is written), for an exact image; readers never wait");

  auto* load =
      verb("load", "Load a snapshot (binary or JSON) into map NAME",
           "\nA bad file changes nothing. A new map gets the creation options recorded in the "
           "snapshot (capacity, max handles, mode, max bytes: dump, rm and load give back the "
           "same map); each creation flag overrides one. The binary form is checksummed "
           "throughout; a JSON file is verified only if it has its \"content_xxh3\" (delete "
           "that line after editing by hand). The minimal JSON {\"entries\": [{\"key\": 1, "
           "\"value\": 2}]} loads too.");
  load->add_option("FILE", file, "Snapshot file ('-': standard input, e.g. a pipe)")->required();
  name_arg(load);
  load->add_flag("--replace", replace, "Replace the content of existing map NAME");
  load->add_flag("--merge", merge,
                 "Merge into existing map NAME (file wins; all or nothing; writers wait "
                 "meanwhile)");
  create_args.add_to(load, " (default: the snapshot's)");

  auto* check = verb("check", "Verify the segment's invariants and count the entries exactly",
                     "\nExit 0 only if all hold. With read permission only, a lighter check "
                     "(the table headers and an exact count).");
  name_arg(check);
  check->add_flag("--json", json, "Print JSON");

  auto* compact = verb("compact", "Give back what killed processes leaked",
                       "\nTables unlinked but never retired, and, in a typed map, value records "
                       "a writer killed mid-write left behind ('shmap check' reports both).");
  name_arg(compact);

  auto* rm = verb("rm", "Remove a map",
                  "\nRefuses an object that is not a shmap segment, and a map that live "
                  "processes are attached to (they would keep using it until they close; their "
                  "pids are named), unless --force.");
  name_arg(rm);
  rm->add_flag("--force", force, "Remove even so");

  auto* ls = verb("ls", "List the shmap maps on this machine with their entries and sizes");
  ls->add_flag("--json", json, "Print JSON");

  auto* help = verb("help", "Print the usage of VERB (or of shmap)");
  help->add_option("VERB", help_verb, "A verb");

  auto find_verb = [&](const std::string& n) -> CLI::App* {
    for (const auto& v : verbs) {
      if (n == v.name) return v.app;
    }
    return nullptr;
  };
  auto verb_list = [&] {
    std::string l;
    for (const auto& v : verbs) l += std::string(l.empty() ? "" : ", ") + v.name;
    return l;
  };

  if (argc < 2) {
    std::fprintf(stderr, "shmap: a command is required: %s\nRun 'shmap --help' for usage.\n",
                 verb_list().c_str());
    return kExitUsage;
  }
  if (argv[1][0] != '-' && find_verb(argv[1]) == nullptr) {
    throw UsageError("unknown command '" + std::string(argv[1]) + "'; the commands are " +
                     verb_list());
  }
  // Unknown options first, as typed (CLI11 would report a missing NAME before them). A
  // negative number is an argument ('shmap add m 5 -1'); '--' ends the options.
  if (CLI::App* v = argv[1][0] != '-' ? find_verb(argv[1]) : nullptr) {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--") break;
      if (a.size() < 2 || a[0] != '-' || std::isdigit(static_cast<unsigned char>(a[1]))) continue;
      const std::string opt = a.substr(0, a.find('='));
      if (opt == "-h" || opt == "--help" || v->get_option_no_throw(opt) != nullptr) continue;
      throw UsageError("unknown option " + opt + " for 'shmap " + v->get_name() + "'");
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RequiredError& e) {
    // "NAME is required": say for which verb.
    throw UsageError(std::string(e.what()) +
                     (argv[1][0] != '-' ? " for 'shmap " + std::string(argv[1]) + "'" : ""));
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    throw UsageError(e.what());
  }

  CLI::App* used = nullptr;
  for (const auto& v : verbs) {
    if (v.app->parsed()) used = v.app;
  }
  if (used == nullptr) throw UsageError("a command is required: " + verb_list());
  const std::string verb_name = used->get_name();

  // Arguments beyond what the verb takes, all of them, in the order given.
  std::vector<std::string> extras = used->remaining();
  // CLI11 passes the '--' that ended the options on as an extra.
  if (auto dd = std::find(extras.begin(), extras.end(), "--"); dd != extras.end()) extras.erase(dd);
  if (!extras.empty()) {
    std::string list;
    for (const auto& x : extras) list += (list.empty() ? "'" : " '") + x + "'";
    throw UsageError("unexpected argument" + std::string(extras.size() > 1 ? "s " : " ") + list +
                     " for 'shmap " + verb_name + "'");
  }
  if (used != ls && used != help) check_name_arg(name);
  if (json_strings) json = true;

  if (used == help) {
    if (help_verb.empty()) {
      app.clear();  // else CLI11 prints the help of the subcommand parsed: 'help' itself
      std::fputs(app.help().c_str(), stdout);
      return kExitOk;
    }
    CLI::App* v = find_verb(help_verb);
    if (v == nullptr) {
      throw UsageError("unknown command '" + help_verb + "'; the commands are " + verb_list());
    }
    std::fputs(v->help("shmap").c_str(), stdout);
    return kExitOk;
  }

  remove_temporaries_on_signals();
  if (used == create) {
    const shmap::Options o = create_args.options();
    const char* fallback = multimap ? "string" : "u64";
    const shmap::TypeInfo k =
        parse_type_arg("--key", key_type_arg.empty() ? fallback : key_type_arg);
    const shmap::TypeInfo v =
        parse_type_arg("--value", value_type_arg.empty() ? fallback : value_type_arg);
    if (type_label(k) == "u64" && type_label(v) == "u64" && !multimap) {
      Map::create(name, o);
    } else {
      shmap::DynamicMap::create(name, o, {k, v, multimap});
    }
    return kExitOk;
  }
  bool value_raw = false;
  if (used == put) {
    if (!value_file.empty()) {
      value = read_all(value_file);
      value_raw = true;
    } else if (put_value->count() == 0) {
      throw UsageError("put needs a VALUE (or --value-file FILE, '-' for stdin)");
    }
  }
  // A typed map: the verbs that know its types (typed_verbs.cpp); the others say they do not.
  if (used != readers && used != rm && used != ls && used != load && used != imp) {
    if (typed_layout(name)) {
      return run_typed_verb(verb_name,
                            TypedArgs{.name = name,
                                      .key = key,
                                      .value = value,
                                      .limit = limit_arg,
                                      .json = json,
                                      .hex = hex,
                                      .file = file,
                                      .point_in_time = pit,
                                      .value_raw = value_raw,
                                      .value_given = used == del && del_value->count() > 0});
    }
  }
  if (used == compact) {
    Map::open(name).compact();
    return kExitOk;
  }
  if (used == put) {
    const auto k = parse_u64_arg("KEY", key);
    const auto v = parse_u64_arg("VALUE", value_raw ? text_of(value) : value);
    Map::open(name).insert_or_assign(k, v);
    return kExitOk;
  }
  if (used == get) {
    const auto k = parse_u64_arg("KEY", key);
    const auto v = open_read_only(name).find(k);
    if (!v) return not_found(name, "key " + key + " not found");
    std::printf("%llu\n", static_cast<unsigned long long>(*v));
    return kExitOk;
  }
  if (used == del) {
    if (del_value->count() > 0) {
      throw UsageError("del takes a VALUE on a multimap only; map '" + name + "' is not one");
    }
    const auto k = parse_u64_arg("KEY", key);
    if (!Map::open(name).erase(k)) return not_found(name, "key " + key + " not found");
    return kExitOk;
  }
  if (used == add || used == incr || used == decr) {
    const auto k = parse_u64_arg("KEY", key);
    std::uint64_t d = 1;
    if (used == add || !value.empty()) d = parse_delta_arg(used == add ? "DELTA" : "BY", value);
    if (used == decr) d = ~d + 1;
    const auto before = Map::open(name).fetch_add(k, d);
    std::printf("%llu\n", static_cast<unsigned long long>(before + d));
    return kExitOk;
  }
  if (used == mget || used == exists) {
    if (rest.empty()) throw UsageError("KEY is required for 'shmap " + verb_name + "'");
    std::vector<std::uint64_t> keys;
    for (const auto& k : rest) keys.push_back(parse_u64_arg("KEY", k));
    std::vector<std::optional<std::uint64_t>> vals(keys.size());
    const std::size_t found = open_read_only(name).find_many(keys, vals);
    if (used == exists) {
      std::printf("%zu\n", found);
      return found == keys.size() ? kExitOk : kExitNotFound;
    }
    if (json) {
      std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
      for (std::size_t i = 0; i < keys.size(); ++i) {
        std::printf("%s\n  {\"key\": %s, \"value\": %s}", i ? "," : "",
                    jnum(keys[i], json_strings).c_str(),
                    vals[i] ? jnum(*vals[i], json_strings).c_str() : "null");
      }
      std::printf("\n], \"found\": %zu}\n", found);
    } else {
      for (const auto& v : vals) {
        if (v) {
          std::printf("%llu\n", static_cast<unsigned long long>(*v));
        } else {
          std::puts("-");
        }
      }
    }
    if (found == keys.size()) return kExitOk;
    std::fflush(stdout);
    return not_found(name, std::to_string(keys.size() - found) + " of " +
                               std::to_string(keys.size()) + " keys not found");
  }
  if (used == mput) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> pairs;
    if (rest.empty()) {
      pairs = parse_pairs(read_all("-"), "standard input");
    } else {
      if (rest.size() % 2 != 0) {
        throw UsageError("KEY '" + rest.back() + "' has no VALUE: 'shmap mput' takes KEY VALUE " +
                         "pairs");
      }
      for (std::size_t i = 0; i < rest.size(); i += 2) {
        pairs.emplace_back(parse_u64_arg("KEY", rest[i]), parse_u64_arg("VALUE", rest[i + 1]));
      }
    }
    Map m = Map::open(name);
    for (const auto& [k, v] : pairs) m.insert_or_assign(k, v);
    return kExitOk;
  }
  if (used == stat) {
    print_stat(open_read_only(name), json);
    return kExitOk;
  }
  if (used == readers) {
    std::size_t cleared = 0;
    if (clear) {
      try {
        // Attached without clearing, so that the count is this command's.
        auto rw = shmap::DynamicMap::open(name, shmap::OpenOptions{.clear_stale_handles = false});
        cleared = rw.clear_stale_handles();
      } catch (const shmap::Error& e) {
        // Every slot owned by a live process: nothing is stale.
        if (e.code() != shmap::Errc::handles_exhausted) throw;
      }
    }
    print_readers(shmap::DynamicMap::open(name, shmap::OpenOptions{.read_only = true}), clear,
                  cleared, json);
    return kExitOk;
  }
  if (used == scan) {
    std::size_t limit = SIZE_MAX;
    if (!limit_arg.empty()) limit = parse_u64_arg("--limit", limit_arg);
    Map m = open_for_walk(name);
    std::size_t n = 0;
    if (json) std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
    m.for_each([&](std::uint64_t k, std::uint64_t v) {
      if (n >= limit) return;
      if (json) {
        std::printf("%s\n  {\"key\": %s, \"value\": %s}", n == 0 ? "" : ",",
                    jnum(k, json_strings).c_str(), jnum(v, json_strings).c_str());
      } else {
        // Keys right-aligned in the width of the largest uint64: columns line up while
        // streaming, without holding the map in memory.
        std::printf("%20llu  %llu\n", static_cast<unsigned long long>(k),
                    static_cast<unsigned long long>(v));
      }
      ++n;
    });
    if (json) std::printf("%s], \"count\": %zu}\n", n == 0 ? "" : "\n", n);
    return kExitOk;
  }
  if (used == exp) {
    if (file.empty()) file = "-";
    Map m = open_for_walk(name);
    std::size_t n = 0;
    write_text_file(file, name, [&](std::FILE* f) {
      std::fprintf(f, "# shmap export of map '%s': KEY VALUE per line\n", name.c_str());
      const char* fmt = hex ? "0x%llx 0x%llx\n" : "%llu %llu\n";
      m.for_each([&](std::uint64_t k, std::uint64_t v) {
        std::fprintf(f, fmt, static_cast<unsigned long long>(k),
                     static_cast<unsigned long long>(v));
        ++n;
      });
    });
    if (file != "-") {
      std::printf("exported %zu entries of map '%s' to '%s'\n", n, name.c_str(), file.c_str());
    }
    return kExitOk;
  }
  if (used == imp) {
    if (file.empty()) file = "-";
    const auto overrides = create_args.overrides();  // flags checked before reading the input
    const auto pairs =
        parse_pairs(read_all(file), file == "-" ? "standard input" : "'" + file + "'");
    shmap::Options o = create_args.options();
    if (!overrides.initial_capacity) {
      // A new map sized for the input at once (no resizes while importing); never below the
      // default.
      std::size_t cap = o.initial_capacity;
      while (cap < pairs.size() + pairs.size() / 2) cap *= 2;
      o.initial_capacity = std::min<std::size_t>(cap, std::size_t{1} << 36);
    }
    bool created = false;
    Map m = Map::open_or_create(name, o, &created);
    if (!created && create_args.any()) {
      std::fprintf(stderr,
                   "shmap: map '%s' exists: its creation options stay; --capacity, "
                   "--max-handles, --mode and --max-bytes were ignored\n",
                   name.c_str());
    }
    std::size_t added = 0;
    for (const auto& [k, v] : pairs) added += m.insert_or_assign(k, v) ? 1 : 0;
    std::printf("imported %zu pairs into map '%s' (%s): %zu new keys, %zu updated\n", pairs.size(),
                name.c_str(), created ? "created" : "existing map", added, pairs.size() - added);
    return kExitOk;
  }
  if (used == dump) {
    Map m = pit ? Map::open(name) : open_for_walk(name);
    std::uint64_t entries = 0;
    {
      ProgressBar bar(kProgressMinEntries);
      m.dump(file, {.json = json, .point_in_time = pit});
      entries = bar.entries();
    }
    if (file == "-") {
      // Standard output holds the snapshot: the summary goes to stderr, on a terminal only.
      if (::isatty(STDERR_FILENO) == 1) {
        std::fprintf(stderr, "dumped map '%s' to standard output: %llu entries%s\n", name.c_str(),
                     static_cast<unsigned long long>(entries), pit ? " (point in time)" : "");
      }
      return kExitOk;
    }
    struct stat st {};
    const auto bytes = ::stat(file.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    std::printf("dumped map '%s' to '%s': %llu entries, %s%s\n", name.c_str(), file.c_str(),
                static_cast<unsigned long long>(entries), human_bytes(bytes).c_str(),
                pit ? " (point in time)" : "");
    return kExitOk;
  }
  if (used == load) {
    if (replace && merge) throw UsageError("--replace and --merge exclude each other");
    shmap::LoadOptions lo;
    lo.mode = replace ? shmap::LoadOptions::Mode::replace
              : merge ? shmap::LoadOptions::Mode::merge
                      : shmap::LoadOptions::Mode::create;
    lo.options = create_args.overrides();
    if ((replace || merge) && create_args.any()) {
      throw UsageError(
          "--capacity, --max-handles, --mode and --max-bytes apply to a new map; "
          "with --replace or --merge the map keeps its own");
    }
    std::size_t size = 0;
    shmap::Options got;
    {
      ProgressBar bar(kProgressMinEntries);
      // Any snapshot: version 1 and JSON make a uint64 map, version 2 a typed one.
      const shmap::DynamicMap m = shmap::DynamicMap::load(file, name, lo);
      size = m.size();
      got = m.stats().options;
    }
    std::printf("loaded '%s' into map '%s' (%s): the map holds %zu entries\n",
                file == "-" ? "standard input" : file.c_str(), name.c_str(),
                replace ? "replaced"
                : merge ? "merged"
                        : "created",
                size);
    if (!replace && !merge) {
      std::printf("creation options: initial_capacity=%zu max_handles=%zu mode=%s max_bytes=%zu\n",
                  got.initial_capacity, got.max_handles, octal(got.mode).c_str(), got.max_bytes);
    }
    return kExitOk;
  }
  if (used == check) {
    const shmap::CheckReport r = open_for_walk(name).check();
    print_check_report(name, r, json);
    if (!r.ok) {
      std::fflush(stdout);
      map_error(shmap::Errc::corrupt, name,
                "check found " + std::to_string(r.problems.size()) + " problem(s)");
    }
    return kExitOk;
  }
  if (used == rm) {
    if (!force) {
      std::vector<int> attached;
      try {
        const auto any = shmap::DynamicMap::open(name, shmap::OpenOptions{.read_only = true});
        for (const auto& r : any.readers()) {
          if (r.alive) attached.push_back(r.pid);
        }
      } catch (const shmap::Error& e) {
        switch (e.code()) {
          case shmap::Errc::not_found:
            throw;
          case shmap::Errc::corrupt:
          case shmap::Errc::version_mismatch:
          case shmap::Errc::layout_mismatch: {
            std::string why = e.what();
            if (why.rfind("shmap: ", 0) == 0) why.erase(0, 7);
            map_error(e.code(), name,
                      "not removed: " + why.substr(why.find(": ") + 2) + " -- if /dev/shm/" + name +
                          " is yours to delete, run 'shmap rm --force " + name + "'");
          }
          default:
            break;  // unreadable: removal is decided by /dev/shm's permissions
        }
      }
      if (!attached.empty()) {
        std::string pids;
        for (const int p : attached) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
        map_error(shmap::Errc::invalid_argument, name,
                  "not removed: " + std::to_string(attached.size()) +
                      (attached.size() == 1 ? " process is" : " processes are") +
                      " attached (pid " + pids +
                      "); they would keep using the map until they close, unseen by new "
                      "openers. Stop them, or run 'shmap rm --force " +
                      name + "'");
      }
    }
    if (!Map::remove(name)) map_error(shmap::Errc::not_found, name, "no such map");
    return kExitOk;
  }
  if (used == ls) {
    std::vector<std::string> unreadable;
    const auto names = Map::list(&unreadable);
    struct Row {
      std::string name;
      std::uint64_t bytes = 0, allocated = 0;
      std::optional<std::size_t> entries;
      std::string note;  // a load's staging segment: in progress or orphaned; unreadable
      bool orphan = false;
    };
    std::vector<Row> rows;
    for (const auto& n : names) {
      struct stat st {};
      Row r;
      r.name = n;
      if (::stat(("/dev/shm/" + n).c_str(), &st) == 0) {
        r.bytes = static_cast<std::uint64_t>(st.st_size);
        r.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
      }
      if (const auto pid = shmap::detail::staging_segment_owner(n)) {
        r.orphan = !shmap::detail::process_exists(*pid);
        r.note = r.orphan ? "orphan: its loader (pid " + std::to_string(*pid) +
                                ") is gone; the next 'shmap load' removes it"
                          : "load in progress (pid " + std::to_string(*pid) + ")";
      } else {
        try {
          const auto m = shmap::DynamicMap::open(n, shmap::OpenOptions{.read_only = true});
          r.entries = m.size();
          if (type_label(m.key_type()) != "u64" || type_label(m.value_type()) != "u64") {
            r.note = std::string(m.is_multimap() ? "multimap: " : "typed: ") +
                     type_label(m.key_type()) + " -> " + type_label(m.value_type());
          }
        } catch (const shmap::Error& e) {
          r.note = std::string("cannot read: ") + std::string(shmap::errc_name(e.code()));
        }
      }
      rows.push_back(r);
    }
    if (json) {
      // Objects this process may not open are listed too ("readable": false): they may be maps.
      std::printf("[");
      std::size_t i = 0;
      for (const auto& r : rows) {
        std::printf(
            "%s\n  {\"name\": %s, \"readable\": true, \"entries\": %s, \"bytes\": %llu, "
            "\"allocated_bytes\": %llu, \"orphan\": %s}",
            i++ ? "," : "", json_string(r.name).c_str(),
            r.entries ? std::to_string(*r.entries).c_str() : "null",
            static_cast<unsigned long long>(r.bytes), static_cast<unsigned long long>(r.allocated),
            r.orphan ? "true" : "false");
      }
      for (const auto& u : unreadable) {
        std::printf("%s\n  {\"name\": %s, \"readable\": false}", i++ ? "," : "",
                    json_string(u).c_str());
      }
      std::printf("%s]\n", i == 0 ? "" : "\n");
    } else {
      Columns c;
      c.row({"NAME", "ENTRIES", "SIZE", "ALLOCATED", "NOTE"});
      for (const auto& r : rows) {
        c.row({r.name, r.entries ? "~" + std::to_string(*r.entries) : "-", human_bytes(r.bytes),
               human_bytes(r.allocated), r.note});
      }
      c.print();
      if (!unreadable.empty()) {
        std::string list;
        for (const auto& u : unreadable) list += (list.empty() ? "" : ", ") + u;
        std::fprintf(stderr,
                     "shmap: %zu object(s) in /dev/shm could not be read (permission denied), "
                     "so whether they are maps is unknown: %s\n",
                     unreadable.size(), list.c_str());
      }
    }
    return kExitOk;
  }
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int rc = run(argc, argv);
    if (std::fflush(stdout) != 0) return kExitError;
    return rc;
  } catch (const UsageError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "shmap: %s\nRun 'shmap --help' or 'shmap help VERB' for usage.\n",
                 e.what());
    return kExitUsage;
  } catch (const InputError& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "shmap: %s; nothing was changed\n", e.what());
    return kExitError;
  } catch (const shmap::Error& e) {
    std::fflush(stdout);
    const std::string msg = e.what();
    std::fprintf(stderr, "%s%s\n", msg.rfind("shmap:", 0) == 0 ? "" : "shmap: ", msg.c_str());
    return kExitError;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "shmap: %s\n", e.what());
    return kExitError;
  }
}
