// A program outside the shmap tree: creates a map, writes, reads back, dumps and loads it (the
// snapshot code must link through shmap's link interface alone), removes both maps.
#include <unistd.h>

#include <cstdio>
#include <shmap/shmap.hpp>
#include <string>

int main() {
  const std::string name = "shmap-consumer-" + std::to_string(getpid());
  const std::string file = "/tmp/" + name + ".shmap";
  bool ok = false;
  {
    auto m = shmap::Map::create(name);
    m.insert(1, 2);
    m.dump(file);
    shmap::Map::remove(name);
    auto back = shmap::Map::load(file, name);
    ok = back.find(1) == 2u;
  }
  shmap::Map::remove(name);
  std::remove(file.c_str());
  std::puts(ok ? "consumer ok" : "consumer FAILED");
  return ok ? 0 : 1;
}
