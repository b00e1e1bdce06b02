// shmap CLI — helpers shared by the verbs: strict number parsing, JSON and column output, and
// the progress bar for dump/load.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "shmap/detail/progress.hpp"

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
/// Octal permission bits ("0600", "600"), at most 07777.
unsigned parse_mode_arg(const std::string& s);

std::string json_string(std::string_view s);
std::string human_bytes(std::uint64_t bytes);
std::string human_duration(std::chrono::nanoseconds d);

/// Rows printed as left-aligned columns separated by two spaces.
class Columns {
 public:
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  void print() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

/// Draws a progress bar on stderr while a dump or load runs, if stderr is a terminal and the
/// work is large. Registered for its lifetime.
class ProgressBar {
 public:
  explicit ProgressBar(std::uint64_t min_entries);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  /// The last "dump"/"build" count seen (entries written or loaded).
  std::uint64_t entries() const { return entries_; }

 private:
  static void hook(void* ctx, const char* phase, std::uint64_t done, std::uint64_t total);
  void update(const char* phase, std::uint64_t done, std::uint64_t total);
  void draw(bool final);

  bool tty_;
  std::uint64_t min_entries_;
  std::string phase_;
  bool bytes_ = false;
  bool shown_ = false;
  bool finished_ = false;
  std::uint64_t done_ = 0, total_ = 0, entries_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace shmap::cli
