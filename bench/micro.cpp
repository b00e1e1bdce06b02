// shmap micro-benchmarks: one thread, every map side by side on the same keys.
//
//   shmap_micro [--sizes=1M,16M] [--peers=shmap,bipc,...] [google benchmark flags]
//
// Sizes also come from $SHMAP_BENCH_SIZES (default 1M). Workloads, per size and map:
//   insert    insert the n keys into an empty map that grows from its smallest capacity
//   find_hit  look up keys that are present (shuffled order)
//   find_miss look up keys that are absent
//   mixed     90% find_hit, 10% overwrite of a present key
//   find_hit_zipf / find_miss_zipf / mixed_zipf: the same with Zipf(0.99) key popularity
//             (bench/peers.hpp: zipf_sequence) instead of every key once in shuffled order
//   find_hit_session / find_miss_session (shmap only): the same lookups through a
//             Map::Session (one per 1,024 lookups), against the peers' find_hit / find_miss.
//   find_hit_many / find_miss_many (shmap only): the same lookups through Map::find_many,
//             1024 keys per call. The peers have no batch API: their ratio column compares
//             against their one-at-a-time find_hit / find_miss.
//   flat-pinned  (not run unless named in --peers) flat with shmap's per-lookup protocol around
//             each find (thread number, pin, current-table check, unpin; peers.hpp): what the
//             guarantees alone cost a lookup, apart from shmap's table.
//   bare      (find_hit and insert rows only) not a map: one 8-byte load per lookup at a random
//             32-byte slot of an array in a tmpfs segment of the same byte size as shmap's
//             table at that key count, with the same keys and loop. What one cache/TLB miss
//             per lookup costs here: the floor for any table of that footprint. Its insert
//             does only the three 16-byte CASes, the key store and the lane record of
//             shmap's crash-exact insert, into that array (no growth): that protocol's floor.
// Each benchmark is repeated (3 times unless --benchmark_repetitions says otherwise) and the
// console shows the aggregates; a summary table of medians and shmap's ratios closes the run.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peers.hpp"
#include "summary.hpp"

namespace {

using namespace shmap_bench;

constexpr std::size_t kBatch = 1024;  // lookups per benchmark iteration

const Keys& keys_for(std::size_t n) {
  static std::map<std::size_t, std::unique_ptr<Keys>> cache;
  auto& slot = cache[n];
  if (!slot) slot = std::make_unique<Keys>(make_keys(n));
  return *slot;
}

/// The lookups under Zipf(0.99) popularity: n keys drawn from the present (hits) or absent
/// (misses) keys, the most popular spread over the table by the shuffle.
const std::vector<std::uint64_t>& zipf_keys(std::size_t n, bool misses) {
  static std::map<std::pair<std::size_t, bool>, std::vector<std::uint64_t>> cache;
  auto& slot = cache[{n, misses}];
  if (slot.empty()) {
    const Keys& k = keys_for(n);
    // The misses are ranked in their own (unshuffled, already random) order.
    slot = zipf_sequence(misses ? k.misses : k.lookup_order, n, kSeed + (misses ? 2 : 1));
  }
  return slot;
}

std::string segment_name(const char* peer) {
  return "shmap-bench-" + std::to_string(::getpid()) + "-" + peer;
}

#ifndef SHMAP_BENCH_PEERS_ONLY
/// Bytes of shmap's table(s) with n keys at steady state (grown from capacity 8, compacted):
/// the segment's allocated bytes less those of an empty map. Recorded by filled<ShmapPeer>,
/// else measured here. Public API only, so it stays right when the table layout changes.
std::map<std::size_t, std::size_t> g_shmap_table_bytes;

std::size_t shmap_empty_bytes() {
  static const std::size_t bytes = [] {
    const std::string name = segment_name("empty");
    ShmapPeer::destroy(name);
    std::size_t b;
    {
      ShmapPeer p(Create{}, name, 8);
      b = p.footprint_bytes();
    }
    ShmapPeer::destroy(name);
    return b;
  }();
  return bytes;
}

std::size_t shmap_table_bytes(std::size_t n) {
  auto it = g_shmap_table_bytes.find(n);
  if (it != g_shmap_table_bytes.end()) return it->second;
  const std::string name = segment_name("sizing");
  ShmapPeer::destroy(name);
  std::size_t full;
  {
    ShmapPeer p(Create{}, name, 8);
    const Keys& k = keys_for(n);
    for (std::size_t i = 0; i < n; ++i) p.insert(k.insert_order[i], i);
    p.compact();
    full = p.footprint_bytes();
  }
  ShmapPeer::destroy(name);
  return g_shmap_table_bytes[n] = full - shmap_empty_bytes();
}
#else
std::size_t shmap_table_bytes(std::size_t n) { return n * 64; }  // shmap's today: 2n buckets of 32
#endif

/// Not a map: the lower bound of a lookup in a table of shmap's footprint. One 8-byte load
/// at a random 32-byte slot (multiply-shift of the key: the keys are random already) of an
/// array in a tmpfs segment (4 KiB pages, as shmap's; written once so every page is present).
/// find() always "hits", so only the find_hit rows are registered for it.
class BarePeer {
 public:
  static constexpr const char* kName = "bare";
  explicit BarePeer(std::size_t n)
      : name_("/" + segment_name("bare")), bytes_(shmap_table_bytes(n) / 32 * 32) {
    const int fd = ::shm_open(name_.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes_)) != 0) {
      throw std::runtime_error("bare: shm_open/ftruncate failed");
    }
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("bare: mmap failed");
    words_ = static_cast<std::uint64_t*>(p);
    std::memset(p, 1, bytes_);
    slots_ = bytes_ / 32;
  }
  BarePeer(const BarePeer&) = delete;
  BarePeer& operator=(const BarePeer&) = delete;
  ~BarePeer() {
    ::munmap(words_, bytes_);
    ::shm_unlink(name_.c_str());
  }
  /// The atomic work shmap's crash-exact insert cannot do without, and nothing else: a 16-byte
  /// CAS that claims a bucket, the key's store, the write's record in the thread's lane, a
  /// 16-byte CAS that writes the value, and a 16-byte CAS on the thread's size count -- at a random
  /// 32-byte slot of the array, in a table that never grows. The floor of the insert rows for
  /// shmap's protocol.
  void insert(std::uint64_t k, std::uint64_t v) {
    using u128 = unsigned __int128;
    auto* cell = reinterpret_cast<u128*>(words_ + slot_of(k) * 4);
    const u128 old = *cell;
    const u128 claimed = (static_cast<u128>(old >> 64) + 1) << 64;
    __sync_bool_compare_and_swap(cell, old, claimed);
    words_[slot_of(k) * 4 + 2] = k;
    // The write's record in the thread's lane (5 stores to one hot line), then the value CAS.
    record_[0] = record_[0] + 1;
    record_[1] = slot_of(k);
    record_[2] = v;
    record_[3] = k;
    record_[4] = record_[0] + 1;
    __sync_bool_compare_and_swap(cell, claimed, claimed + (u128{1} << 64) + v);
    const u128 count = size_record_;
    __sync_bool_compare_and_swap(&size_record_, count, count + 1);
  }
  void assign(std::uint64_t, std::uint64_t) {}
  bool find(std::uint64_t k, std::uint64_t* v) const {
    *v = words_[slot_of(k) * 4];
    return true;
  }
  void flush() {}
  std::size_t bytes() const { return bytes_; }

 private:
  std::string name_;
  std::size_t bytes_;
  std::size_t slots_ = 0;
  std::uint64_t* words_ = nullptr;
  alignas(16) unsigned __int128 size_record_ = 0;
  std::uint64_t record_[5] = {};

  std::size_t slot_of(std::uint64_t k) const {
    return static_cast<std::size_t>((static_cast<unsigned __int128>(k) * slots_) >> 64);
  }
};

/// A map built for one benchmark: a growing instance of P, unlinked when dropped.
struct AnyInstance {
  virtual ~AnyInstance() = default;
};

template <class P>
struct Instance : AnyInstance {
  explicit Instance(std::size_t n) : name(segment_name(P::kName)) {
    if constexpr (std::is_constructible_v<P, Create, std::string, std::size_t>) {
      P::destroy(name);  // a leftover of a crashed run
      if constexpr (std::is_same_v<P, BipcPeer> || std::is_base_of_v<LmdbPeer, P>) {
        peer = std::make_unique<P>(Create{}, name, n);  // segment sized for n
      } else {
        peer = std::make_unique<P>(Create{}, name, 8);  // shmap: the smallest capacity
      }
    } else {
      peer = std::make_unique<P>(n);
    }
  }
  ~Instance() override {
    peer.reset();
    if constexpr (requires { P::destroy(name); }) P::destroy(name);
  }
  std::string name;
  std::unique_ptr<P> peer;
};

/// The filled map of the lookup benchmarks: one at a time (benchmarks are registered grouped by
/// size and map), so memory holds a single 16M-key map.
std::unique_ptr<AnyInstance> g_filled;
std::string g_filled_key;

void drop_filled() {
  g_filled.reset();
  g_filled_key.clear();
}

template <class P>
P& filled(std::size_t n) {
  const std::string key = std::string(P::kName) + "/" + std::to_string(n);
  if (g_filled_key != key) {
    drop_filled();
    auto inst = std::make_unique<Instance<P>>(n);
    const Keys& k = keys_for(n);
    for (std::size_t i = 0; i < n; ++i) inst->peer->insert(k.insert_order[i], i);
    inst->peer->flush();
    if constexpr (requires { inst->peer->compact(); }) inst->peer->compact();
#ifndef SHMAP_BENCH_PEERS_ONLY
    if constexpr (std::is_same_v<P, ShmapPeer>) {
      g_shmap_table_bytes[n] = inst->peer->footprint_bytes() - shmap_empty_bytes();
    }
#endif
    g_filled = std::move(inst);
    g_filled_key = key;
  }
  return *static_cast<Instance<P>&>(*g_filled).peer;
}

/// CPU time of this process (user + system: page faults and segment growth included). On a
/// shared machine it is steadier than wall time; the lookups are timed the same way (Google
/// Benchmark's rates use CPU time unless told otherwise).
double cpu_seconds() {
  timespec ts;
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <class P>
void bm_insert(benchmark::State& state, std::size_t n) {
  drop_filled();
  const Keys& k = keys_for(n);
  for (auto _ : state) {
    Instance<P> inst(n);
    const double t0 = cpu_seconds();
    for (std::size_t i = 0; i < n; ++i) inst.peer->insert(k.insert_order[i], i);
    inst.peer->flush();
    state.SetIterationTime(cpu_seconds() - t0);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

enum class Workload { find_hit, find_miss, mixed };

enum class Popularity { uniform, zipf };

/// The n lookup keys of workload W: each present (absent) key once in shuffled order, or n
/// draws with Zipf popularity.
template <Workload W, Popularity Z>
const std::uint64_t* lookup_keys(std::size_t n) {
  const bool misses = W == Workload::find_miss;
  if (Z == Popularity::zipf) return zipf_keys(n, misses).data();
  const Keys& k = keys_for(n);
  return misses ? k.misses.data() : k.lookup_order.data();
}

template <class P, Workload W, Popularity Z = Popularity::uniform>
void bm_lookup(benchmark::State& state, std::size_t n) {
  const std::uint64_t* keys = lookup_keys<W, Z>(n);
  P& p = filled<P>(n);
  std::size_t i = 0;
  std::uint64_t sum = 0;
  std::size_t found = 0;
  std::size_t finds = 0;
  for (auto _ : state) {
    for (std::size_t j = 0; j < kBatch; ++j) {
      std::uint64_t v;
      if (W == Workload::mixed && j % 10 == 0) {
        p.assign(keys[i + j], i + j);
        continue;
      }
      ++finds;
      if (p.find(keys[i + j], &v)) {
        sum += v;
        ++found;
      }
    }
    i += kBatch;
    if (i >= n) i = 0;
  }
  p.flush();
  benchmark::DoNotOptimize(sum);
  if (found != (W == Workload::find_miss ? 0 : finds)) {
    state.SkipWithError("wrong lookup results: a present key was missed or an absent one found");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

/// The same lookups as bm_lookup, kBatch keys per find_many call.
template <class P, Workload W>
void bm_lookup_many(benchmark::State& state, std::size_t n) {
  const std::uint64_t* keys = lookup_keys<W, Popularity::uniform>(n);
  P& p = filled<P>(n);
  std::vector<std::optional<std::uint64_t>> out(kBatch);
  std::size_t i = 0;
  std::uint64_t sum = 0;
  std::size_t found = 0;
  std::size_t finds = 0;
  for (auto _ : state) {
    found += p.find_many(keys + i, kBatch, out.data());
    finds += kBatch;
    for (const auto& v : out) sum += v.value_or(0);
    i += kBatch;
    if (i >= n) i = 0;
  }
  benchmark::DoNotOptimize(sum);
  if (found != (W == Workload::find_miss ? 0 : finds)) {
    state.SkipWithError("wrong lookup results: a present key was missed or an absent one found");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

/// The same lookups as bm_lookup through a Map::Session, one session per kBatch lookups
/// (a run of lookups by one thread, as a strategy loop would do them).
template <class P, Workload W>
void bm_lookup_session(benchmark::State& state, std::size_t n) {
  const std::uint64_t* keys = lookup_keys<W, Popularity::uniform>(n);
  P& p = filled<P>(n);
  std::size_t i = 0;
  std::uint64_t sum = 0;
  std::size_t found = 0;
  std::size_t finds = 0;
  for (auto _ : state) {
    shmap::Map::Session session(p.map());
    for (std::size_t j = 0; j < kBatch; ++j) {
      std::uint64_t v;
      if (session.find(keys[i + j], v)) {
        sum += v;
        ++found;
      }
    }
    finds += kBatch;
    i += kBatch;
    if (i >= n) i = 0;
  }
  benchmark::DoNotOptimize(sum);
  if (found != (W == Workload::find_miss ? 0 : finds)) {
    state.SkipWithError("wrong lookup results: a present key was missed or an absent one found");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

// ---- registration ---------------------------------------------------------------------------

const char* const kWorkloads[] = {
    "insert",         "find_hit",         "find_miss",        "mixed",
    "find_hit_zipf",  "find_miss_zipf",   "mixed_zipf",       "find_hit_many",
    "find_miss_many", "find_hit_session", "find_miss_session"};

/// The peer workload a shmap workload is compared with: its own, or for the batched lookups
/// (which only shmap has) the peer's one-at-a-time lookups.
std::string peer_workload(const std::string& w) {
  for (const std::string suffix : {"_many", "_session"}) {
    if (w.ends_with(suffix)) return w.substr(0, w.size() - suffix.size());
  }
  return w;
}

template <class P>
void register_peer(std::size_t n) {
  const std::string suffix = std::string("/") + P::kName + "/" + count_label(n);
  if constexpr (std::is_same_v<P, BarePeer>) {
    benchmark::RegisterBenchmark(("insert" + suffix).c_str(), bm_insert<P>, n)
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("find_hit" + suffix).c_str(), bm_lookup<P, Workload::find_hit>,
                                 n);
    benchmark::RegisterBenchmark(("find_hit_zipf" + suffix).c_str(),
                                 bm_lookup<P, Workload::find_hit, Popularity::zipf>, n);
    return;
  }
  auto* b = benchmark::RegisterBenchmark(("insert" + suffix).c_str(), bm_insert<P>, n);
  b->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("find_hit" + suffix).c_str(), bm_lookup<P, Workload::find_hit>, n);
  benchmark::RegisterBenchmark(("find_miss" + suffix).c_str(), bm_lookup<P, Workload::find_miss>,
                               n);
  benchmark::RegisterBenchmark(("mixed" + suffix).c_str(), bm_lookup<P, Workload::mixed>, n);
  benchmark::RegisterBenchmark(("find_hit_zipf" + suffix).c_str(),
                               bm_lookup<P, Workload::find_hit, Popularity::zipf>, n);
  benchmark::RegisterBenchmark(("find_miss_zipf" + suffix).c_str(),
                               bm_lookup<P, Workload::find_miss, Popularity::zipf>, n);
  benchmark::RegisterBenchmark(("mixed_zipf" + suffix).c_str(),
                               bm_lookup<P, Workload::mixed, Popularity::zipf>, n);
  if constexpr (requires(const P& p, std::optional<std::uint64_t>* out) {
                  p.find_many(nullptr, 0, out);
                }) {
    benchmark::RegisterBenchmark(("find_hit_many" + suffix).c_str(),
                                 bm_lookup_many<P, Workload::find_hit>, n);
    benchmark::RegisterBenchmark(("find_miss_many" + suffix).c_str(),
                                 bm_lookup_many<P, Workload::find_miss>, n);
    benchmark::RegisterBenchmark(("find_hit_session" + suffix).c_str(),
                                 bm_lookup_session<P, Workload::find_hit>, n);
    benchmark::RegisterBenchmark(("find_miss_session" + suffix).c_str(),
                                 bm_lookup_session<P, Workload::find_miss>, n);
  }
}

// ---- summary: medians and shmap's ratios ----------------------------------------------------

class SummaryReporter : public MedianReporter {
 public:
  void Summary(const std::vector<std::size_t>& sizes, const std::vector<std::string>& peers) {
    std::printf("\n## Summary: median Mops/s (one thread)\n");
    for (std::size_t n : sizes) {
      const std::string size = count_label(n);
      std::printf("\n### %s keys\n\n| workload |", size.c_str());
      for (const auto& p : peers) std::printf(" %s |", p.c_str());
      std::printf("\n|---|");
      for (std::size_t i = 0; i < peers.size(); ++i) std::printf("---:|");
      std::printf("\n");
      for (const char* w : kWorkloads) {
        std::printf("| %s |", w);
        for (const auto& p : peers) print_or_dash(get(w, p, size), "%.2f");
        std::printf("\n");
      }
      std::printf("\nshmap / peer (>1: shmap faster):\n\n| workload |");
      for (const auto& p : peers) {
        if (p != "shmap") std::printf(" vs %s |", p.c_str());
      }
      std::printf("\n|---|");
      for (std::size_t i = 1; i < peers.size(); ++i) std::printf("---:|");
      std::printf("\n");
      for (const char* w : kWorkloads) {
        std::printf("| %s |", w);
        const double s = get(w, "shmap", size);
        for (const auto& p : peers) {
          if (p == "shmap") continue;
          const double v = get(peer_workload(w), p, size);
          print_or_dash(s > 0 && v > 0 ? s / v : 0, "%.2fx");
        }
        std::printf("\n");
      }
    }
    std::fflush(stdout);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string sizes_arg =
      std::getenv("SHMAP_BENCH_SIZES") ? std::getenv("SHMAP_BENCH_SIZES") : "1M";
  std::string peers_arg = "shmap,bipc,lmdb,lmdb-txn1,tbb,flat,bare";
  // Our flags first; defaults for Google Benchmark's before the user's (later flags win).
  std::vector<char*> args{argv[0]};
  std::string reps = "--benchmark_repetitions=3";
  std::string display = "--benchmark_display_aggregates_only=true";
  args.push_back(reps.data());
  args.push_back(display.data());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (take_flag(a, "--sizes", &sizes_arg) || take_flag(a, "--peers", &peers_arg)) continue;
    args.push_back(argv[i]);
  }
  int args_count = static_cast<int>(args.size());

  std::vector<std::size_t> sizes;
  for (const auto& s : split(sizes_arg)) {
    sizes.push_back((parse_count(s) + kBatch - 1) / kBatch * kBatch);
  }
  const std::vector<std::string> peers = split(peers_arg);
  auto wanted = [&](const char* p) {
    return std::find(peers.begin(), peers.end(), p) != peers.end();
  };
  for (std::size_t n : sizes) {
#ifndef SHMAP_BENCH_PEERS_ONLY
    if (wanted("shmap")) register_peer<ShmapPeer>(n);
#endif
    if (wanted("bipc")) register_peer<BipcPeer>(n);
    if (wanted("lmdb")) register_peer<LmdbPeer>(n);
    // One commit per insert is slow (microseconds each): measured up to 1M keys.
    if (wanted("lmdb-txn1") && n <= (std::size_t{1} << 20)) register_peer<LmdbTxn1Peer>(n);
    if (wanted("tbb")) register_peer<TbbPeer>(n);
    if (wanted("flat")) register_peer<FlatPeer>(n);
#ifndef SHMAP_BENCH_PEERS_ONLY
    if (wanted("flat-pinned")) register_peer<FlatPinnedPeer>(n);
#endif
    if (wanted("bare")) register_peer<BarePeer>(n);
  }

  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  drop_filled();
  reporter.Summary(sizes, peers);
  benchmark::Shutdown();
  return 0;
}
