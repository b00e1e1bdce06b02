// Table v2 step 4 (format 6): what fitting the table costs lookups. A map of n keys grown from
// capacity 8 (a power of two at load 1/2), optionally compact()ed (since format 6: fitted to a
// capacity between powers of two at load <= 0.7), then 5 rounds of find hits, Session hits,
// find misses and one find_many of every key, CPU time, medians. Usage:
//   shmap_fit_ab fit|nofit N
// Run against two libraries (bench/before_after.sh builds both) to separate the layout from the
// code: BENCHMARKS.md, run14.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "shmap/shmap.hpp"
static std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 31;
  x *= 0x9e3779b97f4a7c15ULL;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ULL;
  return x ^ (x >> 32);
}
static double cpu() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: shmap_fit_ab fit|nofit N\n");
    return 2;
  }
  const bool fit = std::string(argv[1]) == "fit";
  const std::uint64_t n = std::strtoull(argv[2], nullptr, 10);
  const std::string name = "ab-probe-" + std::to_string(getpid());
  auto m = shmap::Map::create(name, {.initial_capacity = 8});
  std::vector<std::uint64_t> keys(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    keys[i] = mix(2 * i);
    m.insert(keys[i], i);
  }
  if (fit) m.compact();
  std::shuffle(keys.begin(), keys.end(), std::mt19937_64(42));
  std::vector<std::uint64_t> miss(n);
  for (std::uint64_t i = 0; i < n; ++i) miss[i] = mix(2 * i + 1);
  double hs[5], ss[5], ms[5], fm[5];
  std::uint64_t sum = 0;
  std::vector<std::optional<std::uint64_t>> out(n);
  for (int r = 0; r < 5; ++r) {
    double t = cpu();
    for (auto k : keys) sum += *m.find(k);
    hs[r] = n / (cpu() - t) / 1e6;
    t = cpu();
    {
      shmap::Map::Session s(m);
      for (auto k : keys) sum += *s.find(k);
    }
    ss[r] = n / (cpu() - t) / 1e6;
    t = cpu();
    for (auto k : miss) sum += m.find(k).has_value();
    ms[r] = n / (cpu() - t) / 1e6;
    t = cpu();
    m.find_many(keys, out);
    fm[r] = n / (cpu() - t) / 1e6;
  }
  auto med = [](double* a) {
    std::sort(a, a + 5);
    return a[2];
  };
  std::printf("%s n=%llu cap=%zu: find %.2f session %.2f miss %.2f find_many %.2f Mops/s (%llu)\n",
              argv[1], (unsigned long long)n, m.stats().capacity, med(hs), med(ss), med(ms),
              med(fm), (unsigned long long)sum % 7);
  shmap::Map::remove(name);
}
