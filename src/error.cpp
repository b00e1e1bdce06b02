// shmap — error codes and the message helpers every component uses.
#include "shmap/error.hpp"

#include <cstring>

#include "shmap/detail/map_impl.hpp"

namespace shmap {

std::string_view errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::not_found:
      return "not_found";
    case Errc::already_exists:
      return "already_exists";
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::handles_exhausted:
      return "handles_exhausted";
    case Errc::out_of_space:
      return "out_of_space";
    case Errc::version_mismatch:
      return "version_mismatch";
    case Errc::layout_mismatch:
      return "layout_mismatch";
    case Errc::permission_denied:
      return "permission_denied";
    case Errc::corrupt:
      return "corrupt";
    case Errc::io_error:
      return "io_error";
    case Errc::timeout:
      return "timeout";
  }
  return "unknown";
}

namespace detail {

void fail(Errc code, const std::string& name, const std::string& what) {
  throw Error(code, "shmap: map '" + name + "': " + what);
}

void fail_errno(Errc code, const std::string& name, const std::string& what, int err) {
  fail(code, name, what + " (" + std::strerror(err) + ")");
}

void validate_name(const std::string& name) {
  const bool bad_len = name.empty() || name.size() > 200;
  bool bad_char = false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) bad_char = true;
  }
  // ".shmap-new-..." names the temporary objects of creators (see segment.cpp).
  const bool reserved = name.rfind(".shmap-new-", 0) == 0;
  if (bad_len || bad_char || reserved || name == "." || name == "..") {
    throw Error(
        Errc::invalid_argument,
        "shmap: invalid map name '" + name +
            "': use 1 to 200 characters of [A-Za-z0-9._-], not '.', '..' or a name starting with "
            "'.shmap-new-'");
  }
}

}  // namespace detail
}  // namespace shmap
