// shmap — errors. Every failure the library reports is a shmap::Error carrying an Errc and a
// message that names the map, says what happened and what to do. The library prints nothing.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace shmap {

enum class Errc : int {
  not_found = 1,      // no map of that name (open), no such file (load)
  already_exists,     // create on a name that is taken
  invalid_argument,   // bad name, bad option, bad value
  handles_exhausted,  // every handle slot is owned by a live process
  out_of_space,       // /dev/shm (or Options::max_bytes) is full
  version_mismatch,   // segment or snapshot written by another format version
  layout_mismatch,    // segment written by a build with another struct layout / byte order
  permission_denied,  // the process may not open the segment or file
  corrupt,            // not a shmap segment / snapshot, or damaged
  io_error,           // a system call failed for another reason
  timeout,            // waited too long for a segment that another process is initialising
};

/// Stable lower-case name of a code ("not_found", ...), used by the CLI and in messages.
std::string_view errc_name(Errc code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

}  // namespace shmap
