// Helpers for the snapshot tests: a temporary directory, an independent reader of the binary
// format (to see duplicates that a load would hide), and byte-level surgery on files.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "shmap/detail/progress.hpp"
#include "shmap/shmap.hpp"

namespace shmap::test {

/// Writes damaged copies of the snapshot `good` to `path` -- one flipped bit at a spread of
/// about 100 places (header, chunk headers, entries, footer), and truncations to 0, 10, 40
/// bytes, half, and all but one -- and expects load() to refuse each (corrupt or
/// version_mismatch; corrupt for a truncation) and to leave no map `made` behind. Finally
/// writes `good` back to `path`.
void expect_damage_refused(const std::string& good, const std::string& path,
                           const std::string& made, const std::function<void()>& load);

inline LoadOptions load_mode(LoadOptions::Mode mode) {
  LoadOptions o;
  o.mode = mode;
  return o;
}

using Entries = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
using Content = std::map<std::uint64_t, std::uint64_t>;

/// A fresh directory under $TMPDIR (or /tmp), removed with its files on scope exit.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string path(const std::string& file) const { return dir_ + "/" + file; }
  const std::string& str() const { return dir_; }
  /// Names of the files in the directory.
  std::vector<std::string> files() const;

 private:
  std::string dir_;
};

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);

/// The map's entries via for_each; fails the test if a key is visited twice.
Content contents(const Map& m);

/// Entries of a binary snapshot in file order, read by this independent parser (which trusts
/// the file: use it on files the library accepts).
Entries read_raw(const std::string& path);

/// Offsets of a binary snapshot's parts.
struct Layout {
  std::size_t body_bytes = 0;       // cereal header body
  std::size_t first_chunk = 0;      // offset of chunk 0
  std::vector<std::size_t> chunks;  // offset of every chunk
  std::size_t footer = 0;           // offset of the footer
};
Layout layout_of(const std::string& bytes);

/// Recomputes the header checksum and the whole-file checksum after an edit of the header body.
void reseal(std::string& bytes);

/// Shared-memory names left behind by Mode::create's staging segments.
std::vector<std::string> staging_segments();

}  // namespace shmap::test
