// shmap typed-map benchmarks (issue 8): u64 keys -> 64-byte struct values, one thread, every
// map side by side on the same keys.
//
//   shmap_typed_bench [--sizes=1M] [--peers=shmap,flat,bipc,lmdb,shmap-u64] [gbench flags]
//
// The value is S64, eight uint64 fields (64 bytes). The contenders:
//   shmap      shmap::TypedMap<uint64_t, S64>: the value lives in an immutable 80-byte record
//              in the segment, the bucket holds its offset (docs/DESIGN.md §5)
//   flat       boost::unordered_flat_map<uint64_t, S64>, in-process: the ceiling
//   bipc       boost::unordered_map<uint64_t, S64> in a managed_shared_memory segment behind an
//              interprocess_sharable_mutex (shared lock per lookup, exclusive per write)
//   lmdb       LMDB as bench/peers.hpp's LmdbPeer: 4096 puts per write transaction, 1024
//              lookups per read transaction, MDB_INTEGERKEY, on tmpfs, no sync
//   shmap-u64  the reference: shmap::Map (uint64 -> uint64) on the same keys (lookups only)
//   shmap-s16  diagnostic, not run by default: TypedMap<uint64_t, 16-byte struct> (lookups
//              only): a 32-byte record, one cache line, to tell the indirection's cost from
//              the 64-byte copy's
// Workloads, per size and map (as bench/micro.cpp):
//   insert     the n keys into an empty map that grows (shmap from its smallest capacity, 8;
//              flat from its default; bipc/LMDB segments sized for n, their tables grow)
//   find_hit   look up present keys in shuffled order, every value consumed: the eight fields
//              are summed, so each lookup pays for the copy of all 64 bytes
//   find_miss  look up absent keys
//   mixed      90% find_hit, 10% overwrite of a present key with a new 64-byte value
// Bytes per entry at steady state (after the fill, shmap compacted) are measured once per
// map and printed in the closing summary with the medians and shmap's ratios.
#include <benchmark/benchmark.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "peers.hpp"
#include "shmap/typed_map.hpp"
#include "summary.hpp"

namespace {

using namespace shmap_bench;

constexpr std::size_t kBatch = 1024;  // lookups per benchmark iteration

/// The value: N uint64 fields. Field j of the value written for index i is i + j, so a reader
/// can tell a whole value (f[N-1] == f[0] + N-1) from a torn one. S64 is the benchmark's value;
/// S16 (a 32-byte record, always inside one cache line) only serves the diagnostic peer.
template <std::size_t N>
struct Words {
  std::uint64_t f[N];
};
using S64 = Words<8>;
using S16 = Words<2>;
static_assert(sizeof(S64) == 64 && sizeof(S16) == 16);

template <std::size_t N>
std::uint64_t consume(const Words<N>& v) {  // reads every byte: the whole copy is paid for
  std::uint64_t s = 0;
  for (std::uint64_t x : v.f) s += x;
  return s;
}
std::uint64_t consume(std::uint64_t v) { return v; }
template <std::size_t N>
bool whole(const Words<N>& v) {
  return v.f[N - 1] == v.f[0] + (N - 1);
}
bool whole(std::uint64_t) { return true; }

template <class V>
V value_for(std::uint64_t i) {
  if constexpr (std::is_same_v<V, std::uint64_t>) {
    return i;
  } else {
    V v;
    for (std::size_t j = 0; j < std::size(v.f); ++j) v.f[j] = i + j;
    return v;
  }
}

// ---- the typed peers ------------------------------------------------------------------------
//
// The surface of bench/peers.hpp's adapters with a typed value: insert(k, v), assign(k, v),
// find(k, V*), flush(), footprint_bytes(); `Value` is the value type.

template <class V>
class TypedShmapPeerT {
 public:
  static constexpr const char* kName = std::is_same_v<V, S64> ? "shmap" : "shmap-s16";
  using Value = V;
  using Map = shmap::TypedMap<std::uint64_t, V>;
  TypedShmapPeerT(Create, const std::string& name, std::size_t capacity)
      : map_(Map::create(name, options(capacity))) {}
  static void destroy(const std::string& name) { Map::remove(name); }

  void insert(std::uint64_t k, const V& v) { map_.insert(k, v); }
  void assign(std::uint64_t k, const V& v) { map_.insert_or_assign(k, v); }
  bool find(std::uint64_t k, V* v) const {
    const auto r = map_.find(k);
    if (!r) return false;
    *v = *r;
    return true;
  }
  void flush() {}
  void compact() { map_.compact(); }
  /// The segment's allocated bytes (st_blocks): header, handle slots, the table and the record
  /// slabs.
  std::size_t footprint_bytes() const { return map_.stats().allocated_bytes; }
  Map& map() { return map_; }

 private:
  static shmap::Options options(std::size_t capacity) {
    shmap::Options o;
    o.initial_capacity = capacity;
    return o;
  }
  Map map_;
};

using TypedShmapPeer = TypedShmapPeerT<S64>;
/// Diagnostic: TypedMap<uint64_t, S16>, a value record of 32 bytes that never straddles a cache
/// line. Against shmap (S64) it shows what the 64-byte copy costs beyond the indirection.
using TypedShmapS16Peer = TypedShmapPeerT<S16>;

/// shmap::Map (u64 -> u64): the reference row.
class ShmapU64Peer : public ShmapPeer {
 public:
  static constexpr const char* kName = "shmap-u64";
  using Value = std::uint64_t;
  using ShmapPeer::ShmapPeer;
};

/// boost::unordered_flat_map<uint64_t, S64>, single-threaded: the in-process ceiling. Its
/// bytes are what its allocator handed out (the one array of groups: 15 slots of 72 bytes and
/// 16 metadata bytes each), as FlatPeer counts them.
class TypedFlatPeer {
 public:
  static constexpr const char* kName = "flat";
  using Value = S64;
  explicit TypedFlatPeer(std::size_t) {}
  TypedFlatPeer(const TypedFlatPeer&) = delete;
  TypedFlatPeer& operator=(const TypedFlatPeer&) = delete;
  void insert(std::uint64_t k, const S64& v) { table_.emplace(k, v); }
  void assign(std::uint64_t k, const S64& v) { table_[k] = v; }
  bool find(std::uint64_t k, S64* v) const {
    const auto it = table_.find(k);
    if (it == table_.end()) return false;
    *v = it->second;
    return true;
  }
  void flush() {}
  std::size_t footprint_bytes() const { return static_cast<std::size_t>(bytes_.load()); }

 private:
  using Alloc = CountingAllocator<std::pair<const std::uint64_t, S64>>;
  using Table = boost::unordered_flat_map<std::uint64_t, S64, boost::hash<std::uint64_t>,
                                          std::equal_to<std::uint64_t>, Alloc>;
  std::atomic<std::int64_t> bytes_{0};
  Table table_{0, boost::hash<std::uint64_t>(), std::equal_to<std::uint64_t>(), Alloc(&bytes_)};
};

/// BipcPeer with S64 values: boost::unordered_map in a managed segment, one sharable mutex.
class TypedBipcPeer {
 public:
  static constexpr const char* kName = "bipc";
  using Value = S64;
  using Alloc = bip::allocator<std::pair<const std::uint64_t, S64>,
                               bip::managed_shared_memory::segment_manager>;
  using Table = boost::unordered_map<std::uint64_t, S64, boost::hash<std::uint64_t>,
                                     std::equal_to<std::uint64_t>, Alloc>;

  /// Sized for `keys` up front (the segment cannot grow while others are attached): 256 bytes
  /// a key covers the node (72 bytes of entry, link and hash), the allocator's header and the
  /// bucket array with a rehash in flight.
  TypedBipcPeer(Create, const std::string& name, std::size_t keys)
      : segment_(bip::create_only, name.c_str(), (std::size_t{64} << 20) + keys * 256) {
    mutex_ = segment_.construct<bip::interprocess_sharable_mutex>("mutex")();
    table_ = segment_.construct<Table>("table")(segment_.get_segment_manager());
  }
  static void destroy(const std::string& name) { bip::shared_memory_object::remove(name.c_str()); }

  void insert(std::uint64_t k, const S64& v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    table_->emplace(k, v);
  }
  void assign(std::uint64_t k, const S64& v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    (*table_)[k] = v;
  }
  bool find(std::uint64_t k, S64* v) const {
    bip::sharable_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    const auto it = table_->find(k);
    if (it == table_->end()) return false;
    *v = it->second;
    return true;
  }
  void flush() {}
  /// Bytes of the managed segment in use (size minus free): nodes, buckets, allocator headers.
  std::size_t footprint_bytes() const { return segment_.get_size() - segment_.get_free_memory(); }

 private:
  bip::managed_shared_memory segment_;
  bip::interprocess_sharable_mutex* mutex_ = nullptr;
  Table* table_ = nullptr;
};

/// LmdbPeer with S64 values: the same environment (tmpfs, MDB_NOSYNC | MDB_WRITEMAP |
/// MDB_NOMETASYNC | MDB_NOTLS, MDB_INTEGERKEY), 4096 puts per write transaction, 1024 lookups
/// per read transaction (reset + renew). A lookup copies the 64 bytes out of the map.
class TypedLmdbPeer {
 public:
  static constexpr const char* kName = "lmdb";
  using Value = S64;
  TypedLmdbPeer(Create, const std::string& name, std::size_t keys) {
    const std::string dir = path(name);
    std::filesystem::create_directories(dir);
    check(mdb_env_create(&env_), "env_create");
    check(mdb_env_set_mapsize(env_, (std::size_t{512} << 20) + keys * 256), "set_mapsize");
    check(mdb_env_set_maxreaders(env_, 256), "set_maxreaders");
    check(mdb_env_open(env_, dir.c_str(), MDB_NOSYNC | MDB_WRITEMAP | MDB_NOMETASYNC | MDB_NOTLS,
                       0600),
          "env_open");
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_INTEGERKEY | MDB_CREATE, &dbi_), "dbi_open");
    check(mdb_txn_commit(txn), "commit");
  }
  TypedLmdbPeer(const TypedLmdbPeer&) = delete;
  TypedLmdbPeer& operator=(const TypedLmdbPeer&) = delete;
  ~TypedLmdbPeer() {
    try {
      flush();
    } catch (const std::exception&) {
    }
    if (rtxn_ != nullptr) mdb_txn_abort(rtxn_);
    mdb_env_close(env_);
  }
  static void destroy(const std::string& name) {
    std::error_code ec;
    std::filesystem::remove_all(path(name), ec);
  }

  void insert(std::uint64_t k, const S64& v) { put(k, v); }
  void assign(std::uint64_t k, const S64& v) { put(k, v); }
  bool find(std::uint64_t k, S64* v) {
    if (rtxn_ == nullptr) {
      check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &rtxn_), "read txn_begin");
      reads_ = 0;
    } else if (reads_ == kReadBatch || reads_ < 0) {
      if (reads_ >= 0) mdb_txn_reset(rtxn_);
      check(mdb_txn_renew(rtxn_), "txn_renew");
      reads_ = 0;
    }
    ++reads_;
    MDB_val key{sizeof k, &k};
    MDB_val val;
    const int rc = mdb_get(rtxn_, dbi_, &key, &val);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, "get");
    std::memcpy(v, val.mv_data, sizeof(S64));
    return true;
  }
  void flush() {
    if (wtxn_ != nullptr) {
      const int rc = mdb_txn_commit(wtxn_);
      wtxn_ = nullptr;
      writes_ = 0;
      check(rc, "commit");
    }
    if (rtxn_ != nullptr && reads_ >= 0) {
      mdb_txn_reset(rtxn_);
      reads_ = -1;
    }
  }
  /// Pages in use ((last page + 1) x page size) after a flush, as LmdbPeer counts: the data
  /// file is sized to the map size up front (MDB_WRITEMAP), so its length says nothing.
  std::size_t footprint_bytes() {
    flush();
    MDB_envinfo info;
    MDB_stat st;
    check(mdb_env_info(env_, &info), "env_info");
    check(mdb_env_stat(env_, &st), "env_stat");
    return (info.me_last_pgno + 1) * st.ms_psize;
  }

 private:
  static constexpr int kWriteBatch = 4096;
  static constexpr int kReadBatch = 1024;
  static std::string path(const std::string& name) { return "/dev/shm/" + name; }
  static void check(int rc, const char* what) {
    if (rc != MDB_SUCCESS) {
      throw std::runtime_error(std::string("lmdb ") + what + ": " + mdb_strerror(rc));
    }
  }
  void put(std::uint64_t k, const S64& v) {
    if (wtxn_ == nullptr) check(mdb_txn_begin(env_, nullptr, 0, &wtxn_), "write txn_begin");
    MDB_val key{sizeof k, &k};
    MDB_val val{sizeof v, const_cast<S64*>(&v)};
    const int rc = mdb_put(wtxn_, dbi_, &key, &val, 0);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(wtxn_);
      wtxn_ = nullptr;
      writes_ = 0;
      check(rc, "put");
    }
    if (++writes_ == kWriteBatch) flush();
  }

  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* wtxn_ = nullptr;
  MDB_txn* rtxn_ = nullptr;
  int writes_ = 0;
  int reads_ = 0;
};

// ---- instances, keys and the filled map -----------------------------------------------------

const Keys& keys_for(std::size_t n) {
  static std::map<std::size_t, std::unique_ptr<Keys>> cache;
  auto& slot = cache[n];
  if (!slot) slot = std::make_unique<Keys>(make_keys(n));
  return *slot;
}

std::string segment_name(const char* peer) {
  return "shmap-typed-" + std::to_string(::getpid()) + "-" + peer;
}

struct AnyInstance {
  virtual ~AnyInstance() = default;
};

template <class P>
struct Instance : AnyInstance {
  explicit Instance(std::size_t n) : name(segment_name(P::kName)) {
    if constexpr (std::is_constructible_v<P, Create, std::string, std::size_t>) {
      P::destroy(name);  // a leftover of a crashed run
      if constexpr (std::is_same_v<P, TypedBipcPeer> || std::is_same_v<P, TypedLmdbPeer>) {
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

/// Bytes per entry at steady state, by "peer/size", recorded when a map is filled.
std::map<std::string, double> g_bytes_per_entry;
/// What TypedMap::check() said about the filled typed map, for the summary.
std::string g_shmap_records;

std::unique_ptr<AnyInstance> g_filled;
std::string g_filled_key;

void drop_filled() {
  g_filled.reset();
  g_filled_key.clear();
}

template <class P>
P& filled(std::size_t n) {
  const std::string key = std::string(P::kName) + "/" + count_label(n);
  if (g_filled_key != key) {
    drop_filled();
    auto inst = std::make_unique<Instance<P>>(n);
    const Keys& k = keys_for(n);
    for (std::size_t i = 0; i < n; ++i) {
      inst->peer->insert(k.insert_order[i], value_for<typename P::Value>(i));
    }
    inst->peer->flush();
    if constexpr (requires { inst->peer->compact(); }) inst->peer->compact();
    g_bytes_per_entry[key] =
        static_cast<double>(inst->peer->footprint_bytes()) / static_cast<double>(n);
    if constexpr (std::is_same_v<P, TypedShmapPeer>) {
      shmap::RecordStats rs;
      const shmap::CheckReport rep = inst->peer->map().check(&rs);
      const shmap::Stats st = inst->peer->map().stats();
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "shmap %s: size %zu, capacity %zu, allocated_bytes %zu; records: slabs %zu "
                    "(%zu bytes), live %zu, free %zu, retired %zu, leaked %zu, record_bytes "
                    "%zu; check %s",
                    count_label(n).c_str(), st.size, st.capacity, st.allocated_bytes, rs.slabs,
                    rs.slabs * (std::size_t{64} << 10), rs.live, rs.free, rs.retired, rs.leaked,
                    rs.record_bytes, rep.ok ? "ok" : "FAILED");
      g_shmap_records = buf;
      if (!rep.ok) {
        for (const auto& p : rep.problems) std::fprintf(stderr, "check: %s\n", p.c_str());
      }
    }
    g_filled = std::move(inst);
    g_filled_key = key;
  }
  return *static_cast<Instance<P>&>(*g_filled).peer;
}

double cpu_seconds() {
  timespec ts;
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ---- workloads ------------------------------------------------------------------------------

template <class P>
void bm_insert(benchmark::State& state, std::size_t n) {
  drop_filled();
  const Keys& k = keys_for(n);
  // The values are made before the clock starts: only the map's work is timed.
  std::vector<typename P::Value> values(n);
  for (std::size_t i = 0; i < n; ++i) values[i] = value_for<typename P::Value>(i);
  for (auto _ : state) {
    Instance<P> inst(n);
    const double t0 = cpu_seconds();
    for (std::size_t i = 0; i < n; ++i) inst.peer->insert(k.insert_order[i], values[i]);
    inst.peer->flush();
    state.SetIterationTime(cpu_seconds() - t0);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

enum class Workload { find_hit, find_miss, mixed };

template <class P, Workload W>
void bm_lookup(benchmark::State& state, std::size_t n) {
  using V = typename P::Value;
  const Keys& k = keys_for(n);
  const std::uint64_t* keys = W == Workload::find_miss ? k.misses.data() : k.lookup_order.data();
  P& p = filled<P>(n);
  // The mix's new values, made once: the write is timed, not the making of its value.
  std::vector<V> fresh;
  if (W == Workload::mixed) {
    fresh.resize(kBatch);
    for (std::size_t j = 0; j < kBatch; ++j) fresh[j] = value_for<V>(n + j);
  }
  std::size_t i = 0;
  std::uint64_t sum = 0;
  std::size_t found = 0;
  std::size_t finds = 0;
  std::size_t torn = 0;
  for (auto _ : state) {
    for (std::size_t j = 0; j < kBatch; ++j) {
      if (W == Workload::mixed && j % 10 == 0) {
        p.assign(keys[i + j], fresh[j]);
        continue;
      }
      ++finds;
      V v;
      if (p.find(keys[i + j], &v)) {
        sum += consume(v);
        torn += !whole(v);
        ++found;
      }
    }
    i += kBatch;
    if (i >= n) i = 0;
  }
  p.flush();
  benchmark::DoNotOptimize(sum);
  if (found != (W == Workload::find_miss ? 0 : finds) || torn != 0) {
    state.SkipWithError("wrong lookup results: a key missed or found wrongly, or a torn value");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

// ---- registration ---------------------------------------------------------------------------

const char* const kWorkloads[] = {"insert", "find_hit", "find_miss", "mixed"};

template <class P>
void register_peer(std::size_t n, bool lookups_only = false) {
  const std::string suffix = std::string("/") + P::kName + "/" + count_label(n);
  if (!lookups_only) {
    benchmark::RegisterBenchmark(("insert" + suffix).c_str(), bm_insert<P>, n)
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark(("find_hit" + suffix).c_str(), bm_lookup<P, Workload::find_hit>, n);
  benchmark::RegisterBenchmark(("find_miss" + suffix).c_str(), bm_lookup<P, Workload::find_miss>,
                               n);
  if (lookups_only) return;
  benchmark::RegisterBenchmark(("mixed" + suffix).c_str(), bm_lookup<P, Workload::mixed>, n);
}

// ---- summary --------------------------------------------------------------------------------

class SummaryReporter : public MedianReporter {
 public:
  void Summary(const std::vector<std::size_t>& sizes, const std::vector<std::string>& peers) {
    std::printf("\n## Summary: median Mops/s (one thread, CPU time), u64 -> 64-byte struct\n");
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
      std::printf("| bytes/entry |");
      for (const auto& p : peers) print_or_dash(bytes(p, size), "%.1f");
      std::printf("\n\nshmap / peer (Mops/s: >1 shmap faster; bytes/entry: <1 shmap smaller):\n");
      std::printf("\n| workload |");
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
          const double v = get(w, p, size);
          print_or_dash(s > 0 && v > 0 ? s / v : 0, "%.2fx");
        }
        std::printf("\n");
      }
      std::printf("| bytes/entry |");
      const double sb = bytes("shmap", size);
      for (const auto& p : peers) {
        if (p == "shmap") continue;
        const double b = bytes(p, size);
        print_or_dash(sb > 0 && b > 0 ? sb / b : 0, "%.2fx");
      }
      std::printf("\n");
    }
    if (!g_shmap_records.empty()) std::printf("\n%s\n", g_shmap_records.c_str());
    std::fflush(stdout);
  }

 private:
  static double bytes(const std::string& p, const std::string& size) {
    const auto it = g_bytes_per_entry.find(p + "/" + size);
    return it == g_bytes_per_entry.end() ? 0.0 : it->second;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string sizes_arg = "1M";
  std::string peers_arg = "shmap,flat,bipc,lmdb,shmap-u64";
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
    if (wanted("shmap")) register_peer<TypedShmapPeer>(n);
    if (wanted("flat")) register_peer<TypedFlatPeer>(n);
    if (wanted("bipc")) register_peer<TypedBipcPeer>(n);
    if (wanted("lmdb")) register_peer<TypedLmdbPeer>(n);
    if (wanted("shmap-u64")) register_peer<ShmapU64Peer>(n, /*lookups_only=*/true);
    if (wanted("shmap-s16")) register_peer<TypedShmapS16Peer>(n, /*lookups_only=*/true);
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
