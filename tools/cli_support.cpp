// shmap CLI — helpers (see cli_support.hpp).
#include "cli_support.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstring>

#include "shmap/shmap.hpp"

namespace shmap::cli {

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  if (s.empty()) return std::nullopt;
  // from_chars accepts no sign and no spaces for unsigned types, but check every character so
  // that nothing (such as a trailing "x" or a second "0x") is silently ignored.
  std::uint64_t v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::uint64_t parse_u64_arg(const std::string& what, const std::string& s) {
  if (auto v = parse_u64(s)) return *v;
  throw UsageError("invalid " + what + " '" + s +
                   "': expected a decimal or 0x-hex integer from 0 to 18446744073709551615");
}

std::uint64_t parse_delta_arg(const std::string& what, const std::string& s) {
  const bool negative = !s.empty() && s[0] == '-';
  if (auto v = parse_u64(negative ? std::string_view(s).substr(1) : std::string_view(s))) {
    return negative ? ~*v + 1 : *v;
  }
  throw UsageError("invalid " + what + " '" + s +
                   "': expected a decimal or 0x-hex integer, '-' for a negative one");
}

std::uint64_t parse_range_arg(const std::string& flag, const std::string& s, std::uint64_t lo,
                              std::uint64_t hi) {
  const std::uint64_t v = parse_u64_arg(flag, s);
  if (v < lo || v > hi) {
    throw UsageError("invalid " + flag + " '" + s + "': must be from " + std::to_string(lo) +
                     " to " + std::to_string(hi));
  }
  return v;
}

unsigned parse_mode_arg(const std::string& s) {
  unsigned v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 8);
  if (s.empty() || ec != std::errc{} || ptr != s.data() + s.size() || v > 0777) {
    throw UsageError("invalid --mode '" + s +
                     "': expected octal permission bits from 0 to 0777, such as 0600");
  }
  return v;
}

void check_name_arg(const std::string& name) {
  try {
    shmap::Map::validate_name(name);
  } catch (const shmap::Error& e) {
    std::string msg = e.what();
    if (msg.rfind("shmap: ", 0) == 0) msg.erase(0, 7);
    throw UsageError(msg);
  }
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> parse_pairs(std::string_view text,
                                                                 const std::string& source) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  std::size_t line_no = 0;
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!text.empty()) {
    ++line_no;
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    if (const auto hash = line.find('#'); hash != std::string_view::npos)
      line = line.substr(0, hash);
    std::string_view field[3];
    int n = 0;
    for (std::size_t i = 0; i < line.size();) {
      while (i < line.size() && blank(line[i])) ++i;
      if (i == line.size()) break;
      std::size_t j = i;
      while (j < line.size() && !blank(line[j])) ++j;
      if (n == 3) break;
      field[n++] = line.substr(i, j - i);
      i = j;
    }
    if (n == 0) continue;
    auto fail = [&](const std::string& what) {
      throw InputError(source + " line " + std::to_string(line_no) + ": " + what);
    };
    if (n != 2) {
      fail(n == 1 ? "'" + std::string(field[0]) + "' has no VALUE; expected KEY VALUE"
                  : "more than KEY VALUE on the line (a comment starts with '#')");
    }
    const auto k = parse_u64(field[0]);
    if (!k)
      fail("invalid KEY '" + std::string(field[0]) +
           "': expected a decimal or 0x-hex integer from 0 to 18446744073709551615");
    const auto v = parse_u64(field[1]);
    if (!v)
      fail("invalid VALUE '" + std::string(field[1]) +
           "': expected a decimal or 0x-hex integer from 0 to 18446744073709551615");
    out.emplace_back(*k, *v);
  }
  return out;
}

std::string read_all(const std::string& path) {
  const bool stdin_ = path == "-";
  const int fd = stdin_ ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  const std::string what = stdin_ ? "standard input" : "'" + path + "'";
  if (fd < 0) throw InputError("cannot open " + what + ": " + std::strerror(errno));
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      if (!stdin_) ::close(fd);
      throw InputError("cannot read " + what + ": " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  if (!stdin_) ::close(fd);
  return text;
}

std::string text_of(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string human_bytes(std::uint64_t bytes) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  }
  return buf;
}

std::string human_duration(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  const auto s = duration_cast<seconds>(d).count();
  if (s < 0) return "0s";
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  }
  return buf;
}

void Columns::print() const {
  std::vector<std::size_t> width;
  for (const auto& r : rows_) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows_) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line.append(width[i] - r[i].size() + 2, ' ');
    }
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
  }
}

namespace {
/// A progress line is on the terminal without its newline (for the signal handler).
std::atomic<bool> g_line_open{false};

struct PhaseInfo {
  const char* phase;
  const char* label;  // at most 10 characters: the line fits 40 columns
  bool bytes;         // amounts are bytes (else entries)
  bool measured;      // has an amount (else a label alone)
};
constexpr PhaseInfo kPhases[] = {
    {"dump", "copying", false, true},         {"sync", "syncing", false, false},
    {"read", "reading", true, true},          {"verify", "verifying", true, true},
    {"allocate", "allocating", false, false}, {"load", "filling", true, true},
    {"build", "filling", false, true},        {"publish", "publishing", false, false},
};

/// 2-3 significant figures and a suffix: "950", "9.5k", "123M", "9.5MiB".
std::string short_amount(std::uint64_t v, bool bytes) {
  static const char* const units[] = {"", "k", "M", "G", "T"};
  static const char* const bunits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double x = static_cast<double>(v);
  int u = 0;
  const double step = bytes ? 1024.0 : 1000.0;
  while (x >= step && u < 4) {
    x /= step;
    ++u;
  }
  char buf[32];
  const char* unit = bytes ? bunits[u] : units[u];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu%s", static_cast<unsigned long long>(v), unit);
  } else {
    std::snprintf(buf, sizeof buf, x < 10 ? "%.1f%s" : "%.0f%s", x, unit);
  }
  return buf;
}
}  // namespace

ProgressBar::ProgressBar(std::uint64_t min_entries)
    : tty_(::isatty(STDERR_FILENO) == 1), min_entries_(min_entries) {
  shmap::detail::set_snapshot_progress(&ProgressBar::hook, this);
}

ProgressBar::~ProgressBar() {
  shmap::detail::set_snapshot_progress(nullptr, nullptr);
  end_line();
}

void ProgressBar::on_signal() noexcept {
  if (g_line_open.exchange(false)) {
    const char nl[] = " (interrupted)\x1b[K\n";
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, nl, sizeof nl - 1);
  }
}

void ProgressBar::end_line() {
  if (!shown_) return;
  g_line_open.store(false);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  shown_ = false;
}

void ProgressBar::hook(void* ctx, const char* phase, std::uint64_t done, std::uint64_t total) {
  static_cast<ProgressBar*>(ctx)->update(phase, done, total);
}

void ProgressBar::update(const char* phase, std::uint64_t done, std::uint64_t total) {
  const PhaseInfo* info = nullptr;
  for (const auto& p : kPhases) {
    if (std::strcmp(p.phase, phase) == 0) info = &p;
  }
  if (info == nullptr) return;
  if (!info->bytes && info->measured) entries_ = done;
  if (!tty_) return;
  // Large: min_entries' worth of work (16 bytes an entry in the file). Once a phase was
  // large, the rest of the run is shown (its unmeasured phases too).
  const std::uint64_t size = info->bytes ? (total == 0 ? done : total) / 16 : total;
  if (size >= min_entries_) large_ = true;
  if (!large_) return;
  const bool same = phase_ == info->label && bytes_ == info->bytes;
  const auto now = std::chrono::steady_clock::now();
  const bool complete = total != 0 && done >= total;
  if (same && (!info->measured || (!complete && now - last_ < std::chrono::milliseconds(100)))) {
    return;
  }
  if (!same) {
    end_line();  // the previous phase keeps its last line
    phase_ = info->label;
    bytes_ = info->bytes;
  }
  last_ = now;
  done_ = done;
  total_ = total;
  draw(info->measured);
}

void ProgressBar::draw(bool measured) {
  // 40 columns at most: "verifying  [############] 100% 9.5MiB" is 37.
  char line[96];
  if (!measured) {
    std::snprintf(line, sizeof line, "\r%-10s ...", phase_.c_str());
  } else if (total_ == 0) {  // unknown total (standard input)
    std::snprintf(line, sizeof line, "\r%-10s %s", phase_.c_str(),
                  short_amount(done_, bytes_).c_str());
  } else {
    constexpr int kWidth = 12;
    const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<std::size_t>(fill), '#');
    bar.append(static_cast<std::size_t>(kWidth - fill), '.');
    std::snprintf(line, sizeof line, "\r%-10s [%s] %3d%% %s", phase_.c_str(), bar.c_str(),
                  static_cast<int>(frac * 100), short_amount(total_, bytes_).c_str());
  }
  std::fputs(line, stderr);
  std::fputs("\x1b[K", stderr);
  std::fflush(stderr);
  shown_ = true;
  g_line_open.store(true);
}

void print_check_report(const std::string& name, const CheckReport& r, bool json,
                        const std::string& json_extra) {
  if (json) {
    std::printf("{\"map\": %s, \"ok\": %s, \"live_entries\": %zu, %s\"notes\": [",
                json_string(name).c_str(), r.ok ? "true" : "false", r.live_entries,
                json_extra.c_str());
    for (std::size_t i = 0; i < r.notes.size(); ++i) {
      std::printf("%s%s", i ? ", " : "", json_string(r.notes[i]).c_str());
    }
    std::printf("], \"problems\": [");
    for (std::size_t i = 0; i < r.problems.size(); ++i) {
      std::printf("%s%s", i ? ", " : "", json_string(r.problems[i]).c_str());
    }
    std::printf("]}\n");
    return;
  }
  for (const auto& n : r.notes) std::printf("ok       %s\n", n.c_str());
  for (const auto& p : r.problems) std::printf("PROBLEM  %s\n", p.c_str());
  std::printf("%s: %zu live entries (counted), %s\n", name.c_str(), r.live_entries,
              r.ok ? "all invariants hold"
                   : (std::to_string(r.problems.size()) + " problem(s) found").c_str());
}

}  // namespace shmap::cli
