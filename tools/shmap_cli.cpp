// shmap — the command-line tool. Each verb is a thin layer over the public API (like LMDB's
// mdb_stat / mdb_dump / mdb_load). Exit codes: 0 success, 1 not found (get/del), 2 usage error,
// 3 any shmap::Error (one line on stderr naming the map and the problem).
#include <signal.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "shmap/detail/temporaries.hpp"
#include "shmap/shmap.hpp"

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

// Options shared by `create` and `load` (a new map's creation options).
struct CreateArgs {
  std::string capacity, max_handles, mode, max_bytes;
  void add_to(CLI::App* cmd) {
    cmd->add_option("--capacity", capacity,
                    "Buckets of the first table (decimal or 0x-hex; rounded up to a power of 2)");
    cmd->add_option("--max-handles", max_handles,
                    "Handle slots: Map objects attached at once, across processes");
    cmd->add_option("--mode", mode, "Permission bits of the segment, octal (default 0600)");
    cmd->add_option("--max-bytes", max_bytes, "Largest size the segment may grow to, in bytes");
  }
  shmap::Options options() const {
    shmap::Options o;
    if (!capacity.empty()) o.initial_capacity = parse_u64_arg("--capacity", capacity);
    if (!max_handles.empty()) o.max_handles = parse_u64_arg("--max-handles", max_handles);
    if (!mode.empty()) o.mode = parse_mode_arg(mode);
    if (!max_bytes.empty()) o.max_bytes = parse_u64_arg("--max-bytes", max_bytes);
    return o;
  }
};

void print_stat(const Map& m, bool json) {
  const shmap::Stats s = m.stats();
  const double load = s.capacity == 0 ? 0.0 : static_cast<double>(s.size) / s.capacity;
  if (json) {
    std::printf(
        "{\"map\": %s, \"format_version\": %u, \"entries\": %zu, \"capacity\": %zu, "
        "\"load_factor\": %.6f, \"used_buckets\": %zu, \"tables\": %zu, "
        "\"migration\": {\"chunks_total\": %zu, \"chunks_done\": %zu}, "
        "\"retired_pending\": %zu, \"segment_bytes\": %zu, \"allocated_bytes\": %zu, "
        "\"handles_in_use\": %zu, \"max_handles\": %zu, \"global_epoch\": %llu, "
        "\"resizes\": %llu, \"tables_freed\": %llu, "
        "\"options\": {\"initial_capacity\": %zu, \"max_handles\": %zu, \"mode\": %u, "
        "\"max_bytes\": %zu}}\n",
        json_string(m.name()).c_str(), s.format_version, s.size, s.capacity, load, s.used_buckets,
        s.tables, s.migration_total, s.migration_done, s.retired_pending, s.segment_bytes,
        s.allocated_bytes, s.handles_in_use, s.max_handles,
        static_cast<unsigned long long>(s.global_epoch), static_cast<unsigned long long>(s.resizes),
        static_cast<unsigned long long>(s.tables_freed), s.options.initial_capacity,
        s.options.max_handles, s.options.mode, s.options.max_bytes);
    return;
  }
  char buf[128];
  Columns c;
  c.row({"map", m.name()});
  c.row({"format version", std::to_string(s.format_version)});
  c.row({"entries", std::to_string(s.size)});
  c.row({"capacity", std::to_string(s.capacity) + " buckets"});
  std::snprintf(buf, sizeof buf, "%.4f (%zu buckets used, tombstones included)", load,
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
                        " in use (this command holds one)"});
  c.row({"global epoch", u64s(s.global_epoch)});
  c.row({"resizes", u64s(s.resizes)});
  c.row({"tables freed", u64s(s.tables_freed)});
  c.row({"creation options", "initial_capacity=" + std::to_string(s.options.initial_capacity) +
                                 " max_handles=" + std::to_string(s.options.max_handles) +
                                 " mode=" + octal(s.options.mode) +
                                 " max_bytes=" + std::to_string(s.options.max_bytes)});
  c.print();
}

void print_readers(Map& m, bool clear, bool json) {
  std::size_t cleared = 0;
  if (clear) cleared = m.clear_stale_handles();
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
  Columns c;
  c.row({"SLOT", "PID", "ALIVE", "STATE", "OPENED"});
  for (const auto& r : readers) {
    std::string state = "idle";
    if (r.pinned_lanes > 0) {
      state = "pinned at epoch " + u64s(r.oldest_pinned_epoch) + " (" +
              std::to_string(r.pinned_lanes) + (r.pinned_lanes == 1 ? " thread)" : " threads)");
    }
    c.row({std::to_string(r.slot), std::to_string(r.pid) + (r.self ? " (this command)" : ""),
           r.alive ? "yes" : "no (stale)", state,
           human_duration(age(r.opened_at_unix_ns)) + " ago"});
  }
  c.print();
}

/// Ctrl-C, kill, a closed terminal: remove the dump's temporary file or the load's staging
/// segment in progress, then die of the signal as if there were no handler (SA_RESETHAND).
extern "C" void on_terminating_signal(int sig) {
  shmap::detail::remove_snapshot_temporaries();
  ::raise(sig);  // delivered with the default action once the handler returns
}

void remove_temporaries_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_terminating_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) ::sigaction(sig, &sa, nullptr);
}

int run(int argc, char** argv) {
  CLI::App app{
      "shmap — inspect and manage shmap maps (lock-free uint64 -> uint64 hash maps in "
      "POSIX shared memory, /dev/shm/NAME).\nKEY, VALUE and DELTA are decimal or "
      "0x-hex unsigned 64-bit integers.\nExit codes: 0 ok, 1 not found (get/del), 2 "
      "usage error, 3 error from shmap (message on stderr).",
      "shmap"};
  app.require_subcommand(1);
  app.fallthrough(false);

  std::string name, file, key, value;
  bool json = false, pit = false, replace = false, merge = false, clear = false;
  std::size_t limit = 0;
  bool has_limit = false;
  CreateArgs create_args;

  auto name_arg = [&](CLI::App* c) {
    c->add_option("NAME", name, "Map name (the segment /dev/shm/NAME)")->required();
  };

  auto* create = app.add_subcommand("create", "Create a new, empty map");
  name_arg(create);
  create_args.add_to(create);

  auto* put = app.add_subcommand("put", "Set KEY to VALUE (inserting or overwriting)");
  name_arg(put);
  put->add_option("KEY", key, "Key")->required();
  put->add_option("VALUE", value, "Value")->required();

  auto* get = app.add_subcommand("get", "Print KEY's value alone on stdout; exit 1 if absent");
  name_arg(get);
  get->add_option("KEY", key, "Key")->required();

  auto* del = app.add_subcommand("del", "Erase KEY; exit 1 if it was absent");
  name_arg(del);
  del->add_option("KEY", key, "Key")->required();

  auto* add = app.add_subcommand(
      "add", "Add DELTA to KEY's value (mod 2^64; absent counts as 0) and print the new value");
  name_arg(add);
  add->add_option("KEY", key, "Key")->required();
  add->add_option("DELTA", value, "Amount to add")->required();

  auto* stat = app.add_subcommand(
      "stat", "Statistics: entries, capacity, load factor, tables, migration, bytes, handles");
  name_arg(stat);
  stat->add_flag("--json", json, "Print JSON");

  auto* readers = app.add_subcommand(
      "readers", "One line per handle slot in use: pid, alive, pinned epoch or idle, age");
  name_arg(readers);
  readers->add_flag("--clear-stale", clear, "Free the slots of dead processes first");
  readers->add_flag("--json", json, "Print JSON");

  auto* scan = app.add_subcommand("scan", "Print the entries as KEY VALUE lines");
  name_arg(scan);
  scan->add_option("--limit", limit, "Print at most N entries")->each([&](const std::string&) {
    has_limit = true;
  });
  scan->add_flag("--json", json, "Print JSON");

  auto* dump = app.add_subcommand(
      "dump", "Write a snapshot of the map to FILE (appears only when complete)");
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

  auto* load = app.add_subcommand(
      "load",
      "Load a snapshot FILE (binary or JSON) into map NAME; a bad file changes nothing.\nThe "
      "binary form is checksummed throughout; a JSON file is verified only if it has its "
      "\"content_xxh3\" (delete that line after editing a JSON file by hand: it then loads "
      "unchecked)");
  load->add_option("FILE", file, "Snapshot file ('-': standard input, e.g. a pipe)")->required();
  name_arg(load);
  auto* rep = load->add_flag("--replace", replace, "Replace the content of existing map NAME");
  auto* mer = load->add_flag(
      "--merge", merge,
      "Merge into existing map NAME (file wins; all or nothing; writers wait meanwhile)");
  rep->excludes(mer);
  create_args.add_to(load);

  auto* check =
      app.add_subcommand("check", "Verify every invariant of the segment; exit 0 only if all hold");
  name_arg(check);
  check->add_flag("--json", json, "Print JSON");

  auto* rm = app.add_subcommand(
      "rm", "Remove map NAME (processes attached keep using it until they close)");
  name_arg(rm);

  auto* ls = app.add_subcommand("ls", "List the shmap maps on this machine with their sizes");
  ls->add_flag("--json", json, "Print JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "shmap: %s\nRun 'shmap --help' or 'shmap VERB --help' for usage.\n",
                 e.what());
    return kExitUsage;
  }

  remove_temporaries_on_signals();
  if (create->parsed()) {
    const shmap::Options o = create_args.options();
    Map::create(name, o);
    return kExitOk;
  }
  if (put->parsed()) {
    const auto k = parse_u64_arg("KEY", key);
    const auto v = parse_u64_arg("VALUE", value);
    Map::open(name).insert_or_assign(k, v);
    return kExitOk;
  }
  if (get->parsed()) {
    const auto k = parse_u64_arg("KEY", key);
    const auto v = Map::open(name).find(k);
    if (!v) return not_found(name, "key " + key + " not found");
    std::printf("%llu\n", static_cast<unsigned long long>(*v));
    return kExitOk;
  }
  if (del->parsed()) {
    const auto k = parse_u64_arg("KEY", key);
    if (!Map::open(name).erase(k)) return not_found(name, "key " + key + " not found");
    return kExitOk;
  }
  if (add->parsed()) {
    const auto k = parse_u64_arg("KEY", key);
    const auto d = parse_u64_arg("DELTA", value);
    const auto before = Map::open(name).fetch_add(k, d);
    std::printf("%llu\n", static_cast<unsigned long long>(before + d));
    return kExitOk;
  }
  if (stat->parsed()) {
    print_stat(Map::open(name), json);
    return kExitOk;
  }
  if (readers->parsed()) {
    // Attach without freeing dead processes' slots: showing them is the point of the verb.
    Map m = Map::open(name, shmap::OpenOptions{.clear_stale_handles = false});
    print_readers(m, clear, json);
    return kExitOk;
  }
  if (scan->parsed()) {
    Map m = Map::open(name);
    std::size_t n = 0;
    if (json) std::printf("{\"map\": %s, \"entries\": [", json_string(name).c_str());
    m.for_each([&](std::uint64_t k, std::uint64_t v) {
      if (has_limit && n >= limit) return;
      if (json) {
        std::printf("%s\n  {\"key\": %llu, \"value\": %llu}", n == 0 ? "" : ",",
                    static_cast<unsigned long long>(k), static_cast<unsigned long long>(v));
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
  if (dump->parsed()) {
    Map m = Map::open(name);
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
  if (load->parsed()) {
    shmap::LoadOptions lo;
    lo.mode = replace ? shmap::LoadOptions::Mode::replace
              : merge ? shmap::LoadOptions::Mode::merge
                      : shmap::LoadOptions::Mode::create;
    lo.options = create_args.options();
    std::size_t size = 0;
    {
      ProgressBar bar(kProgressMinEntries);
      Map m = Map::load(file, name, lo);
      size = m.size();
    }
    std::printf("loaded '%s' into map '%s' (%s): the map holds %zu entries\n",
                file == "-" ? "standard input" : file.c_str(), name.c_str(),
                replace ? "replaced"
                : merge ? "merged"
                        : "created",
                size);
    return kExitOk;
  }
  if (check->parsed()) {
    const shmap::CheckReport r = Map::open(name).check();
    if (json) {
      std::printf("{\"map\": %s, \"ok\": %s, \"live_entries\": %zu, \"notes\": [",
                  json_string(name).c_str(), r.ok ? "true" : "false", r.live_entries);
      for (std::size_t i = 0; i < r.notes.size(); ++i) {
        std::printf("%s%s", i ? ", " : "", json_string(r.notes[i]).c_str());
      }
      std::printf("], \"problems\": [");
      for (std::size_t i = 0; i < r.problems.size(); ++i) {
        std::printf("%s%s", i ? ", " : "", json_string(r.problems[i]).c_str());
      }
      std::printf("]}\n");
    } else {
      for (const auto& n : r.notes) std::printf("ok       %s\n", n.c_str());
      for (const auto& p : r.problems) std::printf("PROBLEM  %s\n", p.c_str());
      std::printf("%s: %zu live entries, %s\n", name.c_str(), r.live_entries,
                  r.ok ? "all invariants hold"
                       : (std::to_string(r.problems.size()) + " problem(s) found").c_str());
    }
    if (!r.ok) {
      std::fflush(stdout);
      map_error(shmap::Errc::corrupt, name,
                "check found " + std::to_string(r.problems.size()) + " problem(s)");
    }
    return kExitOk;
  }
  if (rm->parsed()) {
    if (!Map::remove(name)) map_error(shmap::Errc::not_found, name, "no such map");
    return kExitOk;
  }
  if (ls->parsed()) {
    const auto names = Map::list();
    struct Row {
      std::string name;
      std::uint64_t bytes = 0, allocated = 0;
      std::string note;  // a load's staging segment: in progress or orphaned
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
      }
      rows.push_back(r);
    }
    if (json) {
      std::printf("[");
      for (std::size_t i = 0; i < rows.size(); ++i) {
        std::printf(
            "%s\n  {\"name\": %s, \"bytes\": %llu, \"allocated_bytes\": %llu, \"orphan\": %s}",
            i ? "," : "", json_string(rows[i].name).c_str(),
            static_cast<unsigned long long>(rows[i].bytes),
            static_cast<unsigned long long>(rows[i].allocated), rows[i].orphan ? "true" : "false");
      }
      std::printf("%s]\n", rows.empty() ? "" : "\n");
    } else {
      Columns c;
      c.row({"NAME", "SIZE", "ALLOCATED", "NOTE"});
      for (const auto& r : rows) {
        c.row({r.name, human_bytes(r.bytes), human_bytes(r.allocated), r.note});
      }
      c.print();
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
    std::fprintf(stderr, "shmap: %s\n", e.what());
    return kExitUsage;
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
