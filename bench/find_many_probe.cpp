// The C++ side of bench/python_bench.py's find_many row: Map::find_many on the same map and
// the same keys as the Python binding's find_many, in the same run, timed the same way.
//
//   shmap_find_many_probe MAP KEYS_FILE [REPS]
//
// KEYS_FILE holds the lookups as raw native-endian uint64 (numpy's tofile()). Each rep looks
// every key up, in calls of 1,024 keys (what the binding does) and in one call over all of
// them; prints one line per way: the median rate by CPU time (CLOCK_PROCESS_CPUTIME_ID) and
// by wall time, and how many keys were found (a check that both ways did the work).
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shmap/shmap.hpp"

namespace {

double seconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MAP KEYS_FILE [REPS]\n", argv[0]);
    return 2;
  }
  const int reps = argc > 3 ? std::max(1, std::atoi(argv[3])) : 3;
  std::ifstream in(argv[2], std::ios::binary | std::ios::ate);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[2]);
    return 2;
  }
  std::vector<std::uint64_t> keys(static_cast<std::size_t>(in.tellg()) / 8);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(keys.data()), static_cast<std::streamsize>(keys.size() * 8));
  try {
    const shmap::Map m = shmap::Map::open(argv[1]);
    std::vector<std::optional<std::uint64_t>> out(keys.size());
    for (const std::size_t chunk : {std::size_t{1024}, keys.size()}) {
      std::vector<double> cpu, wall;
      std::size_t found = 0;
      for (int r = 0; r < reps; ++r) {
        found = 0;
        const double c0 = seconds(CLOCK_PROCESS_CPUTIME_ID), w0 = seconds(CLOCK_MONOTONIC);
        for (std::size_t i = 0; i < keys.size(); i += chunk) {
          const std::size_t n = std::min(chunk, keys.size() - i);
          found += m.find_many(std::span(keys.data() + i, n), std::span(out.data() + i, n));
        }
        cpu.push_back(static_cast<double>(keys.size()) / (seconds(CLOCK_PROCESS_CPUTIME_ID) - c0));
        wall.push_back(static_cast<double>(keys.size()) / (seconds(CLOCK_MONOTONIC) - w0));
      }
      std::printf(
          "C++ Map::find_many, %zu keys per call: %.2fM keys/s CPU, %.2fM wall; %zu found\n", chunk,
          median(cpu) / 1e6, median(wall) / 1e6, found);
    }
  } catch (const shmap::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
