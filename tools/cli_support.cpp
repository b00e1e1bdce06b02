// shmap CLI — helpers (see cli_support.hpp).
#include "cli_support.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>

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

unsigned parse_mode_arg(const std::string& s) {
  unsigned v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 8);
  if (s.empty() || ec != std::errc{} || ptr != s.data() + s.size() || v > 07777) {
    throw UsageError("invalid --mode '" + s + "': expected octal permission bits such as 0600");
  }
  return v;
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

ProgressBar::ProgressBar(std::uint64_t min_entries)
    : tty_(::isatty(STDERR_FILENO) == 1), min_entries_(min_entries) {
  shmap::detail::set_snapshot_progress(&ProgressBar::hook, this);
}

ProgressBar::~ProgressBar() {
  shmap::detail::set_snapshot_progress(nullptr, nullptr);
  if (shown_) std::fputc('\n', stderr);
}

void ProgressBar::hook(void* ctx, const char* phase, std::uint64_t done, std::uint64_t total) {
  static_cast<ProgressBar*>(ctx)->update(phase, done, total);
}

void ProgressBar::update(const char* phase, std::uint64_t done, std::uint64_t total) {
  const bool bytes = std::strcmp(phase, "verify") == 0 || std::strcmp(phase, "load") == 0;
  if (!bytes) entries_ = done;
  if (!tty_) return;
  if (phase_ != phase) {
    if (shown_) std::fputc('\n', stderr);
    shown_ = false;
    finished_ = false;
    phase_ = phase;
    bytes_ = bytes;
  }
  if (finished_) return;
  done_ = done;
  total_ = total;
  // Large: a million entries' worth of work (16 bytes an entry in the file).
  const std::uint64_t size = bytes_ ? total / 16 : total;
  if (size < min_entries_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool final = done >= total;
  if (!final && shown_ && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  draw(final);
}

void ProgressBar::draw(bool final) {
  constexpr int kWidth = 30;
  const double frac =
      total_ == 0 ? 1.0 : std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
  const int fill = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<std::size_t>(fill), '#');
  bar.append(static_cast<std::size_t>(kWidth - fill), '.');
  char amount[96];
  if (bytes_) {
    std::snprintf(amount, sizeof amount, "%s / %s", human_bytes(done_).c_str(),
                  human_bytes(total_).c_str());
  } else {
    std::snprintf(amount, sizeof amount, "%llu / %llu entries",
                  static_cast<unsigned long long>(done_), static_cast<unsigned long long>(total_));
  }
  std::fprintf(stderr, "\r%-6s [%s] %5.1f%%  %s\x1b[K", phase_.c_str(), bar.c_str(), frac * 100,
               amount);
  shown_ = true;
  if (final) {
    std::fputc('\n', stderr);
    shown_ = false;
    finished_ = true;
  }
  std::fflush(stderr);
}

}  // namespace shmap::cli
