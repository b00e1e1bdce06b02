// shmap CLI — helpers shared by the verbs: strict number parsing, JSON and column output, and
// the progress bar for dump/load.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmap/detail/progress.hpp"
#include "shmap/shmap.hpp"

namespace shmap::cli {

/// A command-line mistake: one line on stderr, exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Decimal or 0x-hex uint64: no sign, no spaces, no overflow. nullopt otherwise.
std::optional<std::uint64_t> parse_u64(std::string_view s);
/// parse_u64 or a UsageError naming the argument.
std::uint64_t parse_u64_arg(const std::string& what, const std::string& s);
/// A signed amount for add/incr/decr: an optional '-' then parse_u64's digits; the result is
/// the amount mod 2^64 (so "-1" is 2^64 - 1, and adding it subtracts 1). UsageError otherwise.
std::uint64_t parse_delta_arg(const std::string& what, const std::string& s);
/// parse_u64_arg, then a UsageError naming `flag` unless lo <= v <= hi.
std::uint64_t parse_range_arg(const std::string& flag, const std::string& s, std::uint64_t lo,
                              std::uint64_t hi);
/// Octal permission bits ("0600", "600"), at most 0777.
unsigned parse_mode_arg(const std::string& s);
/// A UsageError unless `name` can name a map (Map::validate_name).
void check_name_arg(const std::string& name);

/// Bad text input (import, mput from stdin): exit code 3 with the source and line.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Parses the text format: one `KEY VALUE` pair a line (decimal or 0x-hex, separated by spaces
/// or tabs, leading and trailing blanks allowed), blank lines and `#` comments (whole lines, or
/// after the pair) ignored. Throws InputError("SOURCE line N: what") at the first bad line.
std::vector<std::pair<std::uint64_t, std::uint64_t>> parse_pairs(std::string_view text,
                                                                 const std::string& source);
/// Reads all of a file ("-": standard input). InputError when it cannot be read.
std::string read_all(const std::string& path);
/// A file's text as one argument: without its trailing blanks and newline.
std::string text_of(std::string text);

std::string json_string(std::string_view s);
std::string human_bytes(std::uint64_t bytes);
std::string human_duration(std::chrono::nanoseconds d);

/// What `shmap check` prints: a JSON object (with `json_extra`, e.g. "\"records\": {...}, ",
/// placed after live_entries), or an "ok"/"PROBLEM" line per note and problem and a summary.
void print_check_report(const std::string& name, const CheckReport& r, bool json,
                        const std::string& json_extra = "");

/// Rows printed as left-aligned columns separated by two spaces.
class Columns {
 public:
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  void print() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

/// Draws progress on stderr while a dump or load runs, if stderr is a terminal and the work is
/// large: one line per phase (copying, syncing, reading, verifying, allocating, filling,
/// publishing), each at most 40 columns, the finished ones kept. Registered for its lifetime.
class ProgressBar {
 public:
  explicit ProgressBar(std::uint64_t min_entries);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  /// The last "dump"/"build" count seen (entries written or loaded).
  std::uint64_t entries() const { return entries_; }
  /// From a signal handler: ends a progress line that is being drawn (async-signal-safe).
  static void on_signal() noexcept;

 private:
  static void hook(void* ctx, const char* phase, std::uint64_t done, std::uint64_t total);
  void update(const char* phase, std::uint64_t done, std::uint64_t total);
  void draw(bool measured);
  void end_line();

  bool tty_;
  std::uint64_t min_entries_;
  std::string phase_;  // the label on the line
  bool bytes_ = false;
  bool shown_ = false;  // a line is drawn and not ended
  bool large_ = false;  // the run is large enough to be shown
  std::uint64_t done_ = 0, total_ = 0, entries_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace shmap::cli
