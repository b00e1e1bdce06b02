// shmap string-map benchmarks (issue 8): string keys of 16 and 64 bytes -> 8-byte values, one
// thread, every map side by side on the same keys.
//
//   shmap_strings_bench [--sizes=1M] [--key-bytes=16,64] [--peers=shmap,flat,bipc,lmdb]
//                       [gbench flags]
//
// Keys: the hex digits of bench/peers.hpp's random 64-bit keys, repeated to the key length
// (all distinct). Values: 8 bytes (the key's number). The contenders:
//   shmap  shmap::StringMap: the bucket holds the key's 64-bit hash and the offset of a record
//          with the key and value bytes (docs/DESIGN.md §5)
//   flat   boost::unordered_flat_map<std::string, std::uint64_t>, in-process: the ceiling
//   bipc   boost::unordered_map<bip string, uint64_t> in a managed_shared_memory segment behind
//          an interprocess_sharable_mutex (shared lock per lookup, exclusive per write;
//          lookups by std::string_view, no allocation)
//   lmdb   LMDB on tmpfs, no sync, 4096 puts per write transaction, 1024 lookups per read
//          transaction (reset + renew), keys as their bytes
// Workloads, per key length, size and map: insert (into an empty map that grows; shmap from
// capacity 8), find_hit (shuffled present keys; the value read), find_miss, mixed (90% hits,
// 10% overwrites). Keys are made before the clock starts. Bytes per entry after the fill are
// printed in the closing summary with the medians and shmap's ratios.
#include <benchmark/benchmark.h>
#include <lmdb.h>

#include <algorithm>
#include <boost/container/string.hpp>
#include <boost/container_hash/hash.hpp>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_sharable_mutex.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>
#include <boost/interprocess/sync/sharable_lock.hpp>
#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered_map.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "peers.hpp"
#include "shmap/string_map.hpp"
#include "summary.hpp"

namespace {

using namespace shmap_bench;

constexpr std::size_t kBatch = 1024;

/// The keys of one size and length, made once: inserted, looked up (shuffled), absent.
struct StringKeys {
  std::vector<std::string> insert_order, lookup_order, misses;
  std::vector<std::uint64_t> lookup_value;  // the value stored under lookup_order[i]
};

std::string key_text(std::uint64_t k, std::size_t bytes) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(k));
  std::string s;
  while (s.size() < bytes) s += hex;
  s.resize(bytes);
  return s;
}

const StringKeys& keys_for(std::size_t n, std::size_t bytes) {
  static std::map<std::pair<std::size_t, std::size_t>, std::unique_ptr<StringKeys>> cache;
  auto& slot = cache[{n, bytes}];
  if (!slot) {
    const Keys k = make_keys(n);
    slot = std::make_unique<StringKeys>();
    std::map<std::uint64_t, std::size_t> index;
    for (std::size_t i = 0; i < n; ++i) {
      slot->insert_order.push_back(key_text(k.insert_order[i], bytes));
      slot->misses.push_back(key_text(k.misses[i], bytes));
    }
    for (std::size_t i = 0; i < n; ++i) {
      slot->lookup_order.push_back(key_text(k.lookup_order[i], bytes));
      slot->lookup_value.push_back(k.lookup_order[i]);
    }
  }
  return *slot;
}

std::string value_of(std::string_view key) {
  // The key's number, from its first 16 hex digits, as 8 bytes.
  const std::uint64_t v = std::stoull(std::string(key.substr(0, 16)), nullptr, 16);
  return std::string(reinterpret_cast<const char*>(&v), 8);
}

// ---- peers: insert(k, v), assign(k, v), find(k, std::string*), flush(), footprint_bytes() --

class StringShmapPeer {
 public:
  static constexpr const char* kName = "shmap";
  StringShmapPeer(const std::string& name, std::size_t)
      : name_(name), map_(shmap::StringMap::create(name, {.initial_capacity = 8})) {}
  ~StringShmapPeer() { shmap::StringMap::remove(name_); }
  void insert(std::string_view k, std::string_view v) { map_.insert(k, v); }
  void assign(std::string_view k, std::string_view v) { map_.insert_or_assign(k, v); }
  bool find(std::string_view k, std::string* v) const { return map_.find(k, v); }
  void flush() {}
  void compact() { map_.compact(); }
  std::size_t footprint_bytes() const { return map_.stats().allocated_bytes; }

 private:
  std::string name_;
  shmap::StringMap map_;
};

class StringFlatPeer {
 public:
  static constexpr const char* kName = "flat";
  StringFlatPeer(const std::string&, std::size_t) {}
  void insert(std::string_view k, std::string_view v) { table_.emplace(std::string(k), word(v)); }
  void assign(std::string_view k, std::string_view v) { table_[std::string(k)] = word(v); }
  bool find(std::string_view k, std::string* v) const {
    const auto it = table_.find(k);
    if (it == table_.end()) return false;
    v->assign(reinterpret_cast<const char*>(&it->second), 8);
    return true;
  }
  void flush() {}
  /// The table's array plus every key's heap block (16-byte keys fit std::string's own 15-byte
  /// buffer only when shorter: a 16-byte key is one heap block of 17 bytes, rounded to 32).
  std::size_t footprint_bytes() const {
    std::size_t heap = 0;
    for (const auto& [k, v] : table_)
      heap += k.size() > 15 ? (k.size() + 1 + 15) / 16 * 16 + 16 : 0;
    return static_cast<std::size_t>(bytes_.load()) + heap;
  }

 private:
  static std::uint64_t word(std::string_view v) {
    std::uint64_t w = 0;
    std::memcpy(&w, v.data(), std::min<std::size_t>(8, v.size()));
    return w;
  }
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const {
      return boost::hash_range(s.begin(), s.end());
    }
  };
  struct Eq {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return a == b; }
  };
  using Alloc = CountingAllocator<std::pair<const std::string, std::uint64_t>>;
  std::atomic<std::int64_t> bytes_{0};
  boost::unordered_flat_map<std::string, std::uint64_t, Hash, Eq, Alloc> table_{0, Hash(), Eq(),
                                                                                Alloc(&bytes_)};
};

class StringBipcPeer {
 public:
  static constexpr const char* kName = "bipc";
  using Segment = bip::managed_shared_memory;
  using CharAlloc = bip::allocator<char, Segment::segment_manager>;
  using Str = boost::container::basic_string<char, std::char_traits<char>, CharAlloc>;
  struct Hash {
    using is_transparent = void;
    template <class S>
    std::size_t operator()(const S& s) const {
      return boost::hash_range(s.data(), s.data() + s.size());
    }
  };
  struct Eq {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      return std::string_view(a.data(), a.size()) == std::string_view(b.data(), b.size());
    }
  };
  using Alloc = bip::allocator<std::pair<const Str, std::uint64_t>, Segment::segment_manager>;
  using Table = boost::unordered_map<Str, std::uint64_t, Hash, Eq, Alloc>;

  StringBipcPeer(const std::string& name, std::size_t keys)
      : name_(name),
        segment_((bip::shared_memory_object::remove(name.c_str()), bip::create_only), name.c_str(),
                 (std::size_t{64} << 20) + keys * 384) {
    mutex_ = segment_.construct<bip::interprocess_sharable_mutex>("mutex")();
    table_ = segment_.construct<Table>("table")(segment_.get_segment_manager());
  }
  ~StringBipcPeer() { bip::shared_memory_object::remove(name_.c_str()); }
  void insert(std::string_view k, std::string_view v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    table_->emplace(Str(k.data(), k.size(), CharAlloc(segment_.get_segment_manager())), word(v));
  }
  void assign(std::string_view k, std::string_view v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    const auto it = table_->find(k);
    if (it != table_->end()) it->second = word(v);
  }
  bool find(std::string_view k, std::string* v) const {
    bip::sharable_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    const auto it = table_->find(k);
    if (it == table_->end()) return false;
    v->assign(reinterpret_cast<const char*>(&it->second), 8);
    return true;
  }
  void flush() {}
  std::size_t footprint_bytes() const { return segment_.get_size() - segment_.get_free_memory(); }

 private:
  static std::uint64_t word(std::string_view v) {
    std::uint64_t w = 0;
    std::memcpy(&w, v.data(), std::min<std::size_t>(8, v.size()));
    return w;
  }
  std::string name_;
  Segment segment_;
  bip::interprocess_sharable_mutex* mutex_ = nullptr;
  Table* table_ = nullptr;
};

class StringLmdbPeer {
 public:
  static constexpr const char* kName = "lmdb";
  StringLmdbPeer(const std::string& name, std::size_t keys) : dir_("/dev/shm/" + name) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    check(mdb_env_create(&env_), "env_create");
    check(mdb_env_set_mapsize(env_, (std::size_t{512} << 20) + keys * 512), "set_mapsize");
    check(mdb_env_open(env_, dir_.c_str(), MDB_NOSYNC | MDB_WRITEMAP | MDB_NOMETASYNC | MDB_NOTLS,
                       0600),
          "env_open");
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_CREATE, &dbi_), "dbi_open");
    check(mdb_txn_commit(txn), "commit");
  }
  StringLmdbPeer(const StringLmdbPeer&) = delete;
  StringLmdbPeer& operator=(const StringLmdbPeer&) = delete;
  ~StringLmdbPeer() {
    try {
      flush();
    } catch (const std::exception&) {
    }
    if (rtxn_ != nullptr) mdb_txn_abort(rtxn_);
    mdb_env_close(env_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void insert(std::string_view k, std::string_view v) { put(k, v); }
  void assign(std::string_view k, std::string_view v) { put(k, v); }
  bool find(std::string_view k, std::string* v) {
    if (rtxn_ == nullptr) {
      check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &rtxn_), "read txn_begin");
      reads_ = 0;
    } else if (reads_ == kReadBatch || reads_ < 0) {
      if (reads_ >= 0) mdb_txn_reset(rtxn_);
      check(mdb_txn_renew(rtxn_), "txn_renew");
      reads_ = 0;
    }
    ++reads_;
    MDB_val key{k.size(), const_cast<char*>(k.data())};
    MDB_val val;
    const int rc = mdb_get(rtxn_, dbi_, &key, &val);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, "get");
    v->assign(static_cast<const char*>(val.mv_data), val.mv_size);
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
  static void check(int rc, const char* what) {
    if (rc != MDB_SUCCESS) {
      throw std::runtime_error(std::string("lmdb ") + what + ": " + mdb_strerror(rc));
    }
  }
  void put(std::string_view k, std::string_view v) {
    if (wtxn_ == nullptr) check(mdb_txn_begin(env_, nullptr, 0, &wtxn_), "write txn_begin");
    MDB_val key{k.size(), const_cast<char*>(k.data())};
    MDB_val val{v.size(), const_cast<char*>(v.data())};
    const int rc = mdb_put(wtxn_, dbi_, &key, &val, 0);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(wtxn_);
      wtxn_ = nullptr;
      writes_ = 0;
      check(rc, "put");
    }
    if (++writes_ == kWriteBatch) flush();
  }
  std::string dir_;
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* wtxn_ = nullptr;
  MDB_txn* rtxn_ = nullptr;
  int writes_ = 0;
  int reads_ = 0;
};

// ---- the filled map, workloads ----------------------------------------------------------------

std::map<std::string, double> g_bytes_per_entry;  // by "peer/size/keybytes"
std::shared_ptr<void> g_filled;
std::string g_filled_key;

std::string tag(const char* peer, std::size_t n, std::size_t kb) {
  return std::string(peer) + "/" + count_label(n) + "/k" + std::to_string(kb);
}
std::string segment_name(const char* peer) {
  return "shmap-strings-" + std::to_string(::getpid()) + "-" + peer;
}

template <class P>
P& filled(std::size_t n, std::size_t kb) {
  const std::string key = tag(P::kName, n, kb);
  if (g_filled_key != key) {
    g_filled.reset();
    auto p = std::make_shared<P>(segment_name(P::kName), n);
    const StringKeys& k = keys_for(n, kb);
    for (const std::string& s : k.insert_order) p->insert(s, value_of(s));
    p->flush();
    if constexpr (requires { p->compact(); }) p->compact();
    g_bytes_per_entry[key] = static_cast<double>(p->footprint_bytes()) / static_cast<double>(n);
    g_filled = p;
    g_filled_key = key;
  }
  return *static_cast<P*>(g_filled.get());
}

double cpu_seconds() {
  timespec ts;
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <class P>
void bm_insert(benchmark::State& state, std::size_t n, std::size_t kb) {
  g_filled.reset();
  g_filled_key.clear();
  const StringKeys& k = keys_for(n, kb);
  std::vector<std::string> values;
  for (const std::string& s : k.insert_order) values.push_back(value_of(s));
  for (auto _ : state) {
    P p(segment_name(P::kName), n);
    const double t0 = cpu_seconds();
    for (std::size_t i = 0; i < n; ++i) p.insert(k.insert_order[i], values[i]);
    p.flush();
    state.SetIterationTime(cpu_seconds() - t0);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

enum class Workload { find_hit, find_miss, mixed };

template <class P, Workload W>
void bm_lookup(benchmark::State& state, std::size_t n, std::size_t kb) {
  const StringKeys& k = keys_for(n, kb);
  const std::vector<std::string>& keys = W == Workload::find_miss ? k.misses : k.lookup_order;
  P& p = filled<P>(n, kb);
  const std::string fresh(8, 'x');
  std::size_t i = 0, found = 0, finds = 0, wrong = 0;
  std::string v;
  for (auto _ : state) {
    for (std::size_t j = 0; j < kBatch; ++j) {
      if (W == Workload::mixed && j % 10 == 0) {
        p.assign(keys[i + j], fresh);
        continue;
      }
      ++finds;
      if (p.find(keys[i + j], &v)) {
        ++found;
        std::uint64_t w = 0;
        std::memcpy(&w, v.data(), std::min<std::size_t>(8, v.size()));
        wrong += v.size() != 8 || (W != Workload::mixed && w != k.lookup_value[i + j]);
      }
    }
    i += kBatch;
    if (i >= n) i = 0;
  }
  p.flush();
  if (found != (W == Workload::find_miss ? 0 : finds) || wrong != 0) {
    state.SkipWithError("wrong lookup results: a key missed or found wrongly, or a wrong value");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

const char* const kWorkloads[] = {"insert", "find_hit", "find_miss", "mixed"};

template <class P>
void register_peer(std::size_t n, std::size_t kb) {
  const std::string suffix =
      std::string("/") + P::kName + "/" + count_label(n) + "/k" + std::to_string(kb);
  benchmark::RegisterBenchmark(("insert" + suffix).c_str(), bm_insert<P>, n, kb)
      ->UseManualTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("find_hit" + suffix).c_str(), bm_lookup<P, Workload::find_hit>, n,
                               kb);
  benchmark::RegisterBenchmark(("find_miss" + suffix).c_str(), bm_lookup<P, Workload::find_miss>, n,
                               kb);
  benchmark::RegisterBenchmark(("mixed" + suffix).c_str(), bm_lookup<P, Workload::mixed>, n, kb);
}

class SummaryReporter : public MedianReporter {
 public:
  void Summary(const std::vector<std::size_t>& sizes, const std::vector<std::size_t>& lengths,
               const std::vector<std::string>& peers) {
    for (std::size_t n : sizes) {
      for (std::size_t kb : lengths) {
        const std::string size = count_label(n) + "/k" + std::to_string(kb);
        std::printf("\n### %s keys of %zu bytes: median Mops/s (one thread, CPU time)\n\n|",
                    count_label(n).c_str(), kb);
        std::printf(" workload |");
        for (const auto& p : peers) std::printf(" %s |", p.c_str());
        std::printf(" shmap/flat | shmap/bipc | shmap/lmdb |\n|---|");
        for (std::size_t i = 0; i < peers.size() + 3; ++i) std::printf("---:|");
        std::printf("\n");
        for (const char* w : kWorkloads) {
          std::printf("| %s |", w);
          for (const auto& p : peers) print_or_dash(get(w, p, size), "%.2f");
          const double s = get(w, "shmap", size);
          for (const char* p : {"flat", "bipc", "lmdb"}) {
            const double o = get(w, p, size);
            print_or_dash(s > 0 && o > 0 ? s / o : 0, "%.2fx");
          }
          std::printf("\n");
        }
        std::printf("| bytes/entry |");
        for (const auto& p : peers) print_or_dash(bytes(p + "/" + size), "%.1f");
        const double sb = bytes("shmap/" + size);
        for (const char* p : {"flat", "bipc", "lmdb"}) {
          const double o = bytes(std::string(p) + "/" + size);
          print_or_dash(sb > 0 && o > 0 ? sb / o : 0, "%.2fx");
        }
        std::printf("\n");
      }
    }
    std::fflush(stdout);
  }

 private:
  static double bytes(const std::string& k) {
    const auto it = g_bytes_per_entry.find(k);
    return it == g_bytes_per_entry.end() ? 0.0 : it->second;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string sizes_arg = "1M", lengths_arg = "16,64", peers_arg = "shmap,flat,bipc,lmdb";
  std::vector<char*> args{argv[0]};
  std::string reps = "--benchmark_repetitions=3";
  std::string display = "--benchmark_display_aggregates_only=true";
  args.push_back(reps.data());
  args.push_back(display.data());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (take_flag(a, "--sizes", &sizes_arg) || take_flag(a, "--peers", &peers_arg) ||
        take_flag(a, "--key-bytes", &lengths_arg)) {
      continue;
    }
    args.push_back(argv[i]);
  }
  int args_count = static_cast<int>(args.size());
  std::vector<std::size_t> sizes, lengths;
  for (const auto& s : split(sizes_arg))
    sizes.push_back((parse_count(s) + kBatch - 1) / kBatch * kBatch);
  for (const auto& s : split(lengths_arg))
    lengths.push_back(std::max<std::size_t>(16, parse_count(s)));
  const std::vector<std::string> peers = split(peers_arg);
  auto wanted = [&](const char* p) {
    return std::find(peers.begin(), peers.end(), p) != peers.end();
  };
  for (std::size_t n : sizes) {
    for (std::size_t kb : lengths) {
      if (wanted("shmap")) register_peer<StringShmapPeer>(n, kb);
      if (wanted("flat")) register_peer<StringFlatPeer>(n, kb);
      if (wanted("bipc")) register_peer<StringBipcPeer>(n, kb);
      if (wanted("lmdb")) register_peer<StringLmdbPeer>(n, kb);
    }
  }
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_filled.reset();
  reporter.Summary(sizes, lengths, peers);
  benchmark::Shutdown();
  return 0;
}
