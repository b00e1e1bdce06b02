// A program outside the shmap tree: creates a map, writes, reads back, removes it.
#include <unistd.h>

#include <cstdio>
#include <shmap/shmap.hpp>
#include <string>

int main() {
  const std::string name = "shmap-consumer-" + std::to_string(getpid());
  auto m = shmap::Map::create(name);
  m.insert(1, 2);
  const bool ok = m.find(1) == 2u;
  shmap::Map::remove(name);
  std::puts(ok ? "consumer ok" : "consumer FAILED");
  return ok ? 0 : 1;
}
