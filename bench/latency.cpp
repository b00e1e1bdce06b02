// shmap latency, footprint and growth-under-reader benchmark.
//
//   shmap_latency [--sizes=1M,16M] [--peers=shmap,flat,bipc,tbb,lmdb] [--sample=2M]
//                 [--growth-keys=12M] [--growth-peers=shmap,bipc] [--no-latency]
//                 [--no-growth] [--zipf-check]
//
// Latency: for each size and map, one thread inserts the n keys into a map that grows from its
// smallest capacity, timing every insert; then (after compact() for shmap) it measures the
// map's bytes per entry, and times every operation of `sample` lookups: find hit (uniform and
// Zipf(0.99) popularity), find miss, and the 90/10 mix. Each row gives p50 / p99 / p99.9 / max.
//
// How one operation is timed: `lfence; rdtsc` before it and `rdtscp; lfence` after it (the
// fences keep the operation between the two reads), in TSC cycles converted to ns with a rate
// calibrated against CLOCK_MONOTONIC_RAW at start. The pair's own cost (the same two reads with
// nothing between) is printed at the top as "timer overhead" and is *included* in every figure
// (not subtracted: it is a few ns, and subtracting a median from a tail would be wrong). The
// fences also stop consecutive lookups from overlapping their cache misses, which the
// throughput benchmark (shmap_micro) lets them do: a p50 here is the latency of one lookup on
// its own, not 1 / throughput.
//
// Footprint: bytes per entry with the n keys in, at steady state (after growth, shmap after
// compact()). Each map counts what it can: shmap its segment's allocated bytes
// (Stats::allocated_bytes); bipc the managed segment's used bytes; lmdb its used pages; flat
// and tbb what their allocator handed out (a counting allocator: requested bytes, without
// malloc's headers).
//
// Growth with a reader process: the parent creates the map (shmap: capacity 8) and forks a
// reader that attaches by name, as an unrelated process would, and looks up random keys among
// those already inserted (the writer publishes its progress every 1024 inserts in a separate
// shared page), timing each lookup; meanwhile the parent inserts `growth-keys` keys (12M: the
// table grows from 8 to 16M buckets), timing each insert. Both report p50 / p99 / p99.9 / max
// and how many operations took over 1 ms. The machine is shared: on 2 CPUs with foreign load
// a max of a few ms can be preemption, whichever map runs.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "peers.hpp"

namespace {

using namespace shmap_bench;

// ---- timer ------------------------------------------------------------------------------------

[[gnu::always_inline]] inline std::uint64_t tsc_begin() {
  _mm_lfence();  // earlier instructions done before the read
  return __rdtsc();
}
[[gnu::always_inline]] inline std::uint64_t tsc_end() {
  unsigned aux;
  const std::uint64_t t = __rdtscp(&aux);  // waits for the timed operation's loads
  _mm_lfence();                            // later instructions start after the read
  return t;
}

double monotonic_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

/// TSC ticks per ns, over 200 ms of wall time.
double calibrate_tsc() {
  const double w0 = monotonic_ns();
  const std::uint64_t t0 = tsc_begin();
  while (monotonic_ns() - w0 < 2e8) {
  }
  const std::uint64_t t1 = tsc_end();
  const double w1 = monotonic_ns();
  return static_cast<double>(t1 - t0) / (w1 - w0);
}

double g_ticks_per_ns = 1.0;

struct Percentiles {
  double p50 = 0, p99 = 0, p999 = 0, max = 0;  // ns
  std::size_t over_1ms = 0;
  std::size_t count = 0;
};

Percentiles percentiles(std::vector<std::uint32_t>& ticks, std::uint64_t max_ticks) {
  Percentiles p;
  p.count = ticks.size();
  if (ticks.empty()) return p;
  std::sort(ticks.begin(), ticks.end());
  auto at = [&](double q) {
    const auto i = static_cast<std::size_t>(q * static_cast<double>(ticks.size() - 1));
    return static_cast<double>(ticks[i]) / g_ticks_per_ns;
  };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = static_cast<double>(max_ticks) / g_ticks_per_ns;
  const auto ms = static_cast<std::uint64_t>(1e6 * g_ticks_per_ns);
  p.over_1ms = static_cast<std::size_t>(
      ticks.end() -
      std::upper_bound(ticks.begin(), ticks.end(), std::min<std::uint64_t>(ms, UINT32_MAX)));
  return p;
}

/// Samples of one operation kind: ticks saturated to 32 bits (1.6 s at 2.6 GHz) and the exact
/// maximum beside them.
struct Samples {
  std::vector<std::uint32_t> ticks;
  std::uint64_t max = 0;
  void reserve(std::size_t n) { ticks.reserve(n); }
  void add(std::uint64_t t) {
    max = std::max(max, t);
    ticks.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(t, UINT32_MAX)));
  }
};

void print_row(const std::string& map, const std::string& op, std::vector<std::uint32_t>& ticks,
               std::uint64_t max) {
  const Percentiles p = percentiles(ticks, max);
  std::printf("| %s | %s | %zu | %.0f | %.0f | %.0f | %.0f | %zu |\n", map.c_str(), op.c_str(),
              p.count, p.p50, p.p99, p.p999, p.max, p.over_1ms);
  std::fflush(stdout);
}

void print_header() {
  std::printf(
      "| map | operation | ops timed | p50 ns | p99 ns | p99.9 ns | max ns | ops > 1 ms |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|\n");
}

// ---- latency and footprint ---------------------------------------------------------------------

std::string shm_name(const char* peer) {
  return "shmap-lat-" + std::to_string(::getpid()) + "-" + peer;
}

struct Footprint {
  std::string map;
  std::size_t n = 0;
  std::size_t bytes = 0;
};
std::vector<Footprint> g_footprints;

template <class P>
std::unique_ptr<P> make_peer(const std::string& name, std::size_t n) {
  if constexpr (std::is_constructible_v<P, Create, std::string, std::size_t>) {
    P::destroy(name);
#ifndef SHMAP_BENCH_PEERS_ONLY
    if constexpr (std::is_same_v<P, ShmapPeer>) return std::make_unique<P>(Create{}, name, 8);
#endif
    return std::make_unique<P>(Create{}, name, n);  // bipc / lmdb: segment sized for n
  } else {
    return std::make_unique<P>(n);
  }
}

/// Times every operation of `count` lookups (or 90/10 mix steps) over `keys`.
template <class P>
void time_lookups(P& p, const std::string& map, const char* op, const std::uint64_t* keys,
                  std::size_t count, bool expect_hit, bool mixed) {
  Samples s;
  s.reserve(count);
  std::size_t wrong = 0;
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint64_t v = 0;
    if (mixed && i % 10 == 0) {
      const std::uint64_t t0 = tsc_begin();
      p.assign(keys[i], i);
      s.add(tsc_end() - t0);
      continue;
    }
    const std::uint64_t t0 = tsc_begin();
    const bool found = p.find(keys[i], &v);
    s.add(tsc_end() - t0);
    sum += v;
    wrong += found != expect_hit;
  }
  p.flush();
  if (wrong != 0) std::printf("| %s | %s | ERROR: %zu wrong lookups |\n", map.c_str(), op, wrong);
  if (sum == 42) std::fputs("", stderr);
  print_row(map, op, s.ticks, s.max);
}

template <class P>
void latency_of(std::size_t n, std::size_t sample) {
  const Keys k = make_keys(n);
  const std::string name = shm_name(P::kName);
  {
    auto p = make_peer<P>(name, n);
    Samples ins;
    ins.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t t0 = tsc_begin();
      p->insert(k.insert_order[i], i);
      ins.add(tsc_end() - t0);
    }
    p->flush();
    print_row(P::kName, "insert (growing)", ins.ticks, ins.max);
    ins = Samples{};
    if constexpr (requires { p->compact(); }) p->compact();
    g_footprints.push_back({P::kName, n, p->footprint_bytes()});

    const std::size_t m = std::min(sample, n);
    const std::vector<std::uint64_t> zipf = zipf_sequence(k.lookup_order, m, kSeed + 1);
    time_lookups(*p, P::kName, "find hit", k.lookup_order.data(), m, true, false);
    time_lookups(*p, P::kName, "find hit, Zipf", zipf.data(), m, true, false);
    time_lookups(*p, P::kName, "find miss", k.misses.data(), m, false, false);
    time_lookups(*p, P::kName, "90/10 mix", k.lookup_order.data(), m, true, true);
  }
  if constexpr (requires { P::destroy(name); }) P::destroy(name);
}

void print_footprints() {
  std::printf(
      "\n## Bytes per entry at steady state\n\n"
      "| map | keys | bytes | bytes / entry | / flat's |\n|---|---:|---:|---:|---:|\n");
  for (const auto& f : g_footprints) {
    double flat = 0;
    for (const auto& g : g_footprints) {
      if (g.map == "flat" && g.n == f.n) flat = static_cast<double>(g.bytes);
    }
    const double per = static_cast<double>(f.bytes) / static_cast<double>(f.n);
    std::printf("| %s | %s | %zu | %.1f |", f.map.c_str(), count_label(f.n).c_str(), f.bytes, per);
    if (flat > 0) {
      std::printf(" %.2fx |\n", static_cast<double>(f.bytes) / flat);
    } else {
      std::printf(" - |\n");
    }
  }
  std::fflush(stdout);
}

// ---- growth with a reader process ----------------------------------------------------------

/// A page shared with the reader (MAP_SHARED | MAP_ANONYMOUS before fork): the writer's
/// progress, and the reader's figures on the way back.
struct Shared {
  std::atomic<std::uint64_t> published{0};  // keys [0, published) are in the map
  std::atomic<int> ready{0};
  std::atomic<int> done{0};
  alignas(64) Percentiles reader;
  std::size_t wrong = 0;
  char error[128] = {};
};

std::string g_growth_notes;

template <class P>
[[noreturn]] void reader_main(Shared* sh, const std::string& name, const Keys& k) {
  try {
    P p(Attach{}, name);
    Samples s;
    s.reserve(std::size_t{96} << 20);
    std::mt19937_64 rng(kSeed ^ 0x4ead);
    sh->ready.store(1, std::memory_order_release);
    std::size_t wrong = 0;
    while (sh->done.load(std::memory_order_acquire) == 0) {
      const std::uint64_t have = sh->published.load(std::memory_order_acquire);
      if (have == 0) continue;
      for (int j = 0; j < 256; ++j) {
        const std::uint64_t key = k.insert_order[rng() % have];
        std::uint64_t v;
        const std::uint64_t t0 = tsc_begin();
        const bool found = p.find(key, &v);
        const std::uint64_t t = tsc_end() - t0;
        wrong += !found;
        if (s.ticks.size() < s.ticks.capacity()) {
          s.add(t);
        } else {
          s.max = std::max(s.max, t);
        }
      }
      p.flush();
    }
    sh->reader = percentiles(s.ticks, s.max);
    sh->wrong = wrong;
  } catch (const std::exception& e) {
    std::snprintf(sh->error, sizeof sh->error, "%s", e.what());
  }
  std::_Exit(0);
}

template <class P>
void growth_with_reader(std::size_t n, const Keys& k) {
  const std::string name = shm_name(P::kName);
  auto* sh = static_cast<Shared*>(
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (sh == MAP_FAILED) throw std::runtime_error("mmap failed");
  new (sh) Shared;
  auto w = make_peer<P>(name, n);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) reader_main<P>(sh, name, k);
  while (sh->ready.load(std::memory_order_acquire) == 0) {
  }
  Samples s;
  s.reserve(n);
  std::size_t longest = 0;  // index of the longest insert: the keys in the map before it
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t t0 = tsc_begin();
    w->insert(k.insert_order[i], i);
    const std::uint64_t t = tsc_end() - t0;
    if (t > s.max) longest = i;
    s.add(t);
    if ((i & 1023) == 1023) {
      w->flush();  // lmdb: commit, so that what is published is visible
      sh->published.store(i + 1, std::memory_order_release);
    }
  }
  w->flush();
  std::uint64_t compact_ticks = 0;
  if constexpr (requires { w->compact(); }) {
    const std::uint64_t t0 = tsc_begin();
    w->compact();
    compact_ticks = tsc_end() - t0;
  }
  sh->done.store(1, std::memory_order_release);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::string capacity;
#ifndef SHMAP_BENCH_PEERS_ONLY
  if constexpr (std::is_same_v<P, ShmapPeer>) {
    const auto st = w->map().stats();
    capacity = ", table grew from 8 to " + std::to_string(st.capacity) + " buckets in " +
               std::to_string(st.resizes) + " resizes";
  }
#endif
  w.reset();
  if constexpr (requires { P::destroy(name); }) P::destroy(name);
  const Percentiles wp = percentiles(s.ticks, s.max);
  std::printf("| %s | writer: insert | %zu | %.0f | %.0f | %.0f | %.0f | %zu |\n", P::kName,
              wp.count, wp.p50, wp.p99, wp.p999, wp.max, wp.over_1ms);
  if (sh->error[0] != 0) {
    std::printf("| %s | reader: ERROR %s |\n", P::kName, sh->error);
  } else {
    const Percentiles& r = sh->reader;
    std::printf("| %s | reader process: find hit | %zu | %.0f | %.0f | %.0f | %.0f | %zu |\n",
                P::kName, r.count, r.p50, r.p99, r.p999, r.max, r.over_1ms);
  }
  char note[512];
  std::snprintf(note, sizeof note,
                "- %s: %zu keys%s; the longest insert was the one with %zu keys in the map; "
                "compact() after the last insert %.1f ms; reader: %zu wrong lookups, exit "
                "status %d\n",
                P::kName, n, capacity.c_str(), longest,
                static_cast<double>(compact_ticks) / g_ticks_per_ns / 1e6, sh->wrong, status);
  g_growth_notes += note;
  std::fflush(stdout);
  sh->~Shared();
  ::munmap(sh, sizeof(Shared));
}

// ---- Zipf generator check ----------------------------------------------------------------------

/// Draws 10M ranks of Zipf(0.99) over 1000 ranks and compares with the exact probabilities:
/// chi-square over all ranks (999 degrees of freedom: mean 999, sd 45) and the top ranks.
void zipf_check() {
  const std::uint64_t n = 1000;
  const std::size_t draws = 10'000'000;
  Zipf z(n, kZipfS);
  std::mt19937_64 rng(kSeed);
  std::vector<std::size_t> seen(n + 1);
  for (std::size_t i = 0; i < draws; ++i) ++seen[z(rng)];
  double norm = 0;
  for (std::uint64_t r = 1; r <= n; ++r) norm += std::pow(static_cast<double>(r), -kZipfS);
  double chi2 = 0;
  for (std::uint64_t r = 1; r <= n; ++r) {
    const double expect =
        static_cast<double>(draws) * std::pow(static_cast<double>(r), -kZipfS) / norm;
    const double d = static_cast<double>(seen[r]) - expect;
    chi2 += d * d / expect;
  }
  std::printf(
      "## Zipf(%.2f) check: 10M draws over 1000 ranks\n\nchi-square %.1f (999 degrees of "
      "freedom: expect 999 +- 45)\n\n| rank | observed | expected |\n|---:|---:|---:|\n",
      kZipfS, chi2);
  for (std::uint64_t r : {1, 2, 3, 10, 100, 1000}) {
    std::printf("| %llu | %.5f | %.5f |\n", static_cast<unsigned long long>(r),
                static_cast<double>(seen[r]) / static_cast<double>(draws),
                std::pow(static_cast<double>(r), -kZipfS) / norm);
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string sizes = "1M";
  std::string peers = "shmap,flat,bipc,tbb,lmdb";
  std::string sample = "2M";
  std::string growth_keys = "12000000";
  std::string growth_peers = "shmap,bipc";
  bool latency = true;
  bool growth = true;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (take_flag(a, "--sizes", &sizes) || take_flag(a, "--peers", &peers) ||
        take_flag(a, "--sample", &sample) || take_flag(a, "--growth-keys", &growth_keys) ||
        take_flag(a, "--growth-peers", &growth_peers)) {
      continue;
    }
    if (a == "--no-latency") {
      latency = false;
    } else if (a == "--no-growth") {
      growth = false;
    } else if (a == "--zipf-check") {
      check = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--sizes=1M,16M] [--peers=shmap,flat,bipc,tbb,lmdb] [--sample=2M]\n"
                   "  [--growth-keys=12M] [--growth-peers=shmap,bipc] [--no-latency] "
                   "[--no-growth] [--zipf-check]\n",
                   argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  g_ticks_per_ns = calibrate_tsc();
  {
    std::vector<std::uint32_t> t;
    std::uint64_t max = 0;
    for (int i = 0; i < 100000; ++i) {
      const std::uint64_t t0 = tsc_begin();
      const std::uint64_t d = tsc_end() - t0;
      max = std::max(max, d);
      t.push_back(static_cast<std::uint32_t>(d));
    }
    const Percentiles p = percentiles(t, max);
    // Resolution: the smallest non-zero step between two back-to-back reads (a VM may make
    // the TSC advance in steps of several ticks).
    std::uint64_t step = UINT64_MAX;
    for (int i = 0; i < 100000; ++i) {
      const std::uint64_t a = __rdtsc();
      const std::uint64_t b = __rdtsc();
      if (b > a) step = std::min(step, b - a);
    }
    std::printf(
        "# TSC %.3f GHz (against CLOCK_MONOTONIC_RAW), resolution %.1f ns; timer "
        "overhead (empty lfence;rdtsc .. rdtscp;lfence): p50 %.1f ns, p99 %.1f ns; "
        "included in every figure below\n\n",
        g_ticks_per_ns, static_cast<double>(step) / g_ticks_per_ns, p.p50, p.p99);
  }
  if (check) zipf_check();
  const auto wanted = [](const std::string& list, const char* p) {
    const auto v = split(list);
    return std::find(v.begin(), v.end(), p) != v.end();
  };
  if (latency) {
    const std::size_t m = parse_count(sample);
    for (const auto& s : split(sizes)) {
      const std::size_t n = parse_count(s);
      std::printf("## Latency of single operations, %s keys (%zu timed per lookup row)\n\n",
                  count_label(n).c_str(), std::min(m, n));
      print_header();
#ifndef SHMAP_BENCH_PEERS_ONLY
      if (wanted(peers, "shmap")) latency_of<ShmapPeer>(n, m);
#endif
      if (wanted(peers, "flat")) latency_of<FlatPeer>(n, m);
      if (wanted(peers, "bipc")) latency_of<BipcPeer>(n, m);
      if (wanted(peers, "tbb")) latency_of<TbbPeer>(n, m);
      if (wanted(peers, "lmdb")) latency_of<LmdbPeer>(n, m);
      std::printf("\n");
    }
    print_footprints();
  }
  if (growth) {
    const std::size_t n = parse_count(growth_keys);
    const Keys k = make_keys(n);
    std::printf(
        "\n## Growth with a reader process: %zu inserts from the smallest capacity, one "
        "reader process looking up inserted keys meanwhile\n\n",
        n);
    print_header();
#ifndef SHMAP_BENCH_PEERS_ONLY
    if (wanted(growth_peers, "shmap")) growth_with_reader<ShmapPeer>(n, k);
#endif
    if (wanted(growth_peers, "bipc")) growth_with_reader<BipcPeer>(n, k);
    if (wanted(growth_peers, "lmdb")) growth_with_reader<LmdbPeer>(n, k);
    std::printf("\n%s", g_growth_notes.c_str());
  }
  return 0;
}
