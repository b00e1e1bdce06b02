// Placeholder until src/snapshot.cpp exists: snapshots report that they are unavailable.
#include "shmap/detail/map_impl.hpp"

namespace shmap {

void Map::dump(const std::string&, const DumpOptions&) const {
  detail::fail(Errc::invalid_argument, name(), "snapshots are not built into this library");
}

Map Map::load(const std::string&, const std::string& name, const LoadOptions&) {
  detail::fail(Errc::invalid_argument, name, "snapshots are not built into this library");
}

}  // namespace shmap
