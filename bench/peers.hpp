// shmap benchmarks — the key sets and one adapter per map under comparison.
//
// Every adapter has the same small surface so that one templated workload drives them all:
//
//   void insert(k, v)             insert a key that is absent
//   void assign(k, v)             overwrite the value of a key that is present (the "write" of
//                                 the 90/10 mix)
//   bool find(k, uint64_t* v)     look a key up
//   void flush()                  make the writes so far durable/visible (LMDB: commit)
//   size_t footprint_bytes()      bytes the map occupies now (each peer says what it counts)
//
// Shared-memory peers (shmap, Boost.Interprocess, LMDB) are built with a Create or an Attach
// tag: the creator sizes the segment, an attacher opens it by name (what a second process
// does), and `destroy(name)` unlinks it. Destroying the object only detaches.
#pragma once

#include <lmdb.h>
#include <sys/stat.h>
#include <tbb/concurrent_hash_map.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_sharable_mutex.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>
#include <boost/interprocess/sync/sharable_lock.hpp>
#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered/unordered_map.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// SHMAP_BENCH_PEERS_ONLY builds the peers alone (g++ -DSHMAP_BENCH_PEERS_ONLY bench/micro.cpp
// ...), to work on them while the library does not build.
#ifndef SHMAP_BENCH_PEERS_ONLY
#include "shmap/shmap.hpp"
#endif

namespace shmap_bench {

/// Parses "--flag=value" into *value; false if arg is not that flag.
inline bool take_flag(const std::string& arg, const char* flag, std::string* value) {
  const std::string prefix = std::string(flag) + "=";
  if (arg.rfind(prefix, 0) != 0) return false;
  *value = arg.substr(prefix.size());
  return true;
}

// ---- keys -----------------------------------------------------------------------------------

/// The splitmix64 finaliser: a bijection on 64-bit words, so distinct inputs give distinct keys.
inline std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

inline constexpr std::uint64_t kSeed = 0x5eed'0f5a'a9b1'7e11ULL;

/// The keys of one size. Hits are mix64 of even numbers, misses of odd ones: the two sets are
/// disjoint by construction. Lookups walk a shuffled copy of the inserted keys, so a node-based
/// map does not get its nodes visited in allocation order (which would flatter it).
struct Keys {
  std::vector<std::uint64_t> insert_order;
  std::vector<std::uint64_t> lookup_order;
  std::vector<std::uint64_t> misses;
  std::size_t size() const { return insert_order.size(); }
};

inline Keys make_keys(std::size_t n) {
  Keys k;
  k.insert_order.resize(n);
  k.misses.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    k.insert_order[i] = mix64((2 * i) ^ kSeed);
    k.misses[i] = mix64((2 * i + 1) ^ kSeed);
  }
  k.lookup_order = k.insert_order;
  std::mt19937_64 rng(kSeed);
  std::shuffle(k.lookup_order.begin(), k.lookup_order.end(), rng);
  return k;
}

// ---- key popularity: Zipf --------------------------------------------------------------------

/// Zipf(s) over the ranks 1..n: P(rank k) = k^-s / H(n, s). Rejection-inversion sampling
/// (W. Hormann, G. Derflinger, "Rejection-inversion to generate variates from monotone
/// discrete distributions", ACM TOMACS 6(3), 1996; the form of Apache Commons RNG's
/// RejectionInversionZipfSampler): O(1) memory and time per sample, exact for any n and any
/// s > 0 (s = 1 included), no table of n probabilities. Deterministic for a given generator.
class Zipf {
 public:
  Zipf(std::uint64_t n, double s) : n_(n), s_(s) {
    h_integral_x1_ = h_integral(1.5) - 1.0;
    h_integral_n_ = h_integral(static_cast<double>(n) + 0.5);
    squeeze_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
  }
  /// A rank in [1, n]; rank 1 is the most popular.
  template <class Rng>
  std::uint64_t operator()(Rng& rng) {
    for (;;) {
      // u uniform in (h_integral_n_, h_integral_x1_]: 53 random bits.
      const double r = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      const double u = h_integral_n_ + r * (h_integral_x1_ - h_integral_n_);
      const double x = h_integral_inverse(u);
      double k = std::floor(x + 0.5);
      if (k < 1) k = 1;
      if (k > static_cast<double>(n_)) k = static_cast<double>(n_);
      // Accept at once inside the squeeze, else against the exact hat.
      if (k - x <= squeeze_ || u >= h_integral(k + 0.5) - h(k)) {
        return static_cast<std::uint64_t>(k);
      }
    }
  }

 private:
  // H(x) = integral of h = (x^(1-s) - 1) / (1 - s), written to stay exact as s -> 1.
  double h_integral(double x) const {
    const double lx = std::log(x);
    return helper2((1.0 - s_) * lx) * lx;
  }
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  double h_integral_inverse(double x) const {
    double t = x * (1.0 - s_);
    if (t < -1.0) t = -1.0;  // rounding: keeps log1p defined
    return std::exp(helper1(t) * x);
  }
  static double helper1(double x) {  // log(1 + x) / x
    return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
  }
  static double helper2(double x) {  // (exp(x) - 1) / x
    return std::abs(x) > 1e-8 ? std::expm1(x) / x
                              : 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x));
  }
  std::uint64_t n_;
  double s_;
  double h_integral_x1_;
  double h_integral_n_;
  double squeeze_;
};

inline constexpr double kZipfS = 0.99;

/// `count` keys drawn with Zipf(kZipfS) popularity from `keys` (rank r is keys[r - 1]; pass
/// the shuffled lookup order, so popular keys are spread over the table, not clustered).
/// Seeded: the same sequence in every run and every program.
inline std::vector<std::uint64_t> zipf_sequence(const std::vector<std::uint64_t>& keys,
                                                std::size_t count, std::uint64_t seed) {
  Zipf z(keys.size(), kZipfS);
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> out(count);
  for (auto& k : out) k = keys[z(rng) - 1];
  return out;
}

/// "1M" -> 1048576, "16M" -> 16777216, "10M" -> 10485760, "1000" -> 1000.
inline std::size_t parse_count(const std::string& s) {
  if (s.empty()) throw std::invalid_argument("empty count");
  std::size_t mult = 1;
  std::string digits = s;
  const char last = s.back();
  if (last == 'k' || last == 'K') mult = std::size_t{1} << 10;
  if (last == 'm' || last == 'M') mult = std::size_t{1} << 20;
  if (last == 'g' || last == 'G') mult = std::size_t{1} << 30;
  if (mult != 1) digits.pop_back();
  return static_cast<std::size_t>(std::stoull(digits)) * mult;
}

inline std::string count_label(std::size_t n) {
  if (n % (std::size_t{1} << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n % (std::size_t{1} << 10) == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

inline std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

struct Create {};
struct Attach {};

// ---- shmap ----------------------------------------------------------------------------------

#ifndef SHMAP_BENCH_PEERS_ONLY
class ShmapPeer {
 public:
  static constexpr const char* kName = "shmap";
  /// `capacity` is the initial capacity; 8 (the smallest) for a map that has to grow.
  ShmapPeer(Create, const std::string& name, std::size_t capacity)
      : map_(shmap::Map::create(name, options(capacity))) {}
  ShmapPeer(Attach, const std::string& name) : map_(shmap::Map::open(name)) {}
  static void destroy(const std::string& name) { shmap::Map::remove(name); }

  void insert(std::uint64_t k, std::uint64_t v) { map_.insert(k, v); }
  void assign(std::uint64_t k, std::uint64_t v) { map_.insert_or_assign(k, v); }
  bool find(std::uint64_t k, std::uint64_t* v) const {
    return map_.find(k, *v);  // the form without std::optional (Map::find(k, value))
  }
  /// Batched lookups (Map::find_many); the peers have no such API.
  std::size_t find_many(const std::uint64_t* keys, std::size_t n,
                        std::optional<std::uint64_t>* out) const {
    return map_.find_many({keys, n}, {out, n});
  }
  void flush() {}
  /// Finishes a migration left in flight by the last insert, so lookups see the steady state.
  void compact() { map_.compact(); }
  /// The segment's allocated bytes (Stats::allocated_bytes: st_blocks of the shm object):
  /// header, handle slots, the table(s) and any arena extent still held.
  std::size_t footprint_bytes() const { return map_.stats().allocated_bytes; }
  shmap::Map& map() { return map_; }

 private:
  static shmap::Options options(std::size_t capacity) {
    shmap::Options o;
    o.initial_capacity = capacity;
    return o;
  }
  shmap::Map map_;
};
#endif

// ---- Boost.Interprocess: boost::unordered_map in a managed segment behind a sharable mutex ---

namespace bip = boost::interprocess;

/// What users build today: a node-based map in a managed segment, one reader-writer lock.
/// Readers take the lock shared, writers exclusive, once per operation.
class BipcPeer {
 public:
  static constexpr const char* kName = "bipc";
  using Alloc = bip::allocator<std::pair<const std::uint64_t, std::uint64_t>,
                               bip::managed_shared_memory::segment_manager>;
  using Table = boost::unordered_map<std::uint64_t, std::uint64_t, boost::hash<std::uint64_t>,
                                     std::equal_to<std::uint64_t>, Alloc>;

  /// The segment cannot grow while others are attached, so it is sized for `keys` up front
  /// (128 bytes a key: node, allocator header and bucket array with a rehash in flight).
  BipcPeer(Create, const std::string& name, std::size_t keys)
      : segment_(bip::create_only, name.c_str(), segment_bytes(keys)) {
    mutex_ = segment_.construct<bip::interprocess_sharable_mutex>("mutex")();
    table_ = segment_.construct<Table>("table")(segment_.get_segment_manager());
  }
  BipcPeer(Attach, const std::string& name) : segment_(bip::open_only, name.c_str()) {
    mutex_ = segment_.find<bip::interprocess_sharable_mutex>("mutex").first;
    table_ = segment_.find<Table>("table").first;
    if (mutex_ == nullptr || table_ == nullptr) throw std::runtime_error("bipc: bad segment");
  }
  static void destroy(const std::string& name) { bip::shared_memory_object::remove(name.c_str()); }

  void insert(std::uint64_t k, std::uint64_t v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    table_->emplace(k, v);
  }
  void assign(std::uint64_t k, std::uint64_t v) {
    bip::scoped_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    (*table_)[k] = v;
  }
  bool find(std::uint64_t k, std::uint64_t* v) const {
    bip::sharable_lock<bip::interprocess_sharable_mutex> lock(*mutex_);
    const auto it = table_->find(k);
    if (it == table_->end()) return false;
    *v = it->second;
    return true;
  }
  void flush() {}
  /// Bytes of the managed segment in use (its size minus its free memory): nodes, bucket
  /// array, allocator headers, the mutex and the segment manager's own index.
  std::size_t footprint_bytes() const { return segment_.get_size() - segment_.get_free_memory(); }

 private:
  static std::size_t segment_bytes(std::size_t keys) {
    return (std::size_t{64} << 20) + keys * 128;
  }
  bip::managed_shared_memory segment_;
  bip::interprocess_sharable_mutex* mutex_ = nullptr;
  Table* table_ = nullptr;
};

// ---- LMDB -----------------------------------------------------------------------------------

/// An LMDB environment in a tmpfs directory (/dev/shm/<name>), opened with
/// MDB_NOSYNC | MDB_WRITEMAP | MDB_NOMETASYNC (no fsync: as close to an in-memory map as LMDB
/// gets) and MDB_NOTLS (a thread may hold a read transaction while it writes). Keys are
/// MDB_INTEGERKEY (native 8-byte integers).
///
/// Transactions are batched: `write_batch` writes per write transaction (commit on the last
/// one and on flush) and `read_batch` lookups per read transaction (reset + renew, the cheap
/// way to start a fresh snapshot). Batch 1 is one transaction per operation.
class LmdbPeer {
 public:
  static constexpr const char* kName = "lmdb";

  LmdbPeer(Create, const std::string& name, std::size_t keys, int write_batch = 4096,
           int read_batch = 1024)
      : write_batch_(write_batch), read_batch_(read_batch) {
    const std::string dir = path(name);
    std::filesystem::create_directories(dir);
    open(dir, keys);
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_INTEGERKEY | MDB_CREATE, &dbi_), "dbi_open");
    check(mdb_txn_commit(txn), "commit");
  }
  LmdbPeer(Attach, const std::string& name, int write_batch = 1, int read_batch = 1024)
      : write_batch_(write_batch), read_batch_(read_batch) {
    open(path(name), 0);
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_INTEGERKEY, &dbi_), "dbi_open");
    mdb_txn_abort(txn);
  }
  LmdbPeer(const LmdbPeer&) = delete;
  LmdbPeer& operator=(const LmdbPeer&) = delete;
  ~LmdbPeer() {
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

  void insert(std::uint64_t k, std::uint64_t v) { put(k, v); }
  void assign(std::uint64_t k, std::uint64_t v) { put(k, v); }
  bool find(std::uint64_t k, std::uint64_t* v) {
    if (rtxn_ == nullptr) {
      check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &rtxn_), "read txn_begin");
      reads_ = 0;
    } else if (reads_ == read_batch_ || reads_ < 0) {
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
    std::uint64_t out;
    std::memcpy(&out, val.mv_data, sizeof out);
    *v = out;
    return true;
  }
  /// Commits the pending writes and ends the read snapshot: an idle process that kept its
  /// snapshot would stop every writer from reusing the pages freed since (MDB_MAP_FULL).
  void flush() {
    if (wtxn_ != nullptr) {
      const int rc = mdb_txn_commit(wtxn_);
      wtxn_ = nullptr;
      writes_ = 0;
      check(rc, "commit");
    }
    if (rtxn_ != nullptr && reads_ >= 0) {
      mdb_txn_reset(rtxn_);
      reads_ = -1;  // renew before the next lookup
    }
  }
  /// Pages in use (last page number + 1) times the page size, after a flush: the B-tree,
  /// its free list and the two meta pages.
  std::size_t footprint_bytes() {
    flush();
    MDB_envinfo info;
    MDB_stat st;
    check(mdb_env_info(env_, &info), "env_info");
    check(mdb_env_stat(env_, &st), "env_stat");
    return (info.me_last_pgno + 1) * st.ms_psize;
  }

 private:
  static std::string path(const std::string& name) { return "/dev/shm/" + name; }
  static void check(int rc, const char* what) {
    if (rc != MDB_SUCCESS) {
      throw std::runtime_error(std::string("lmdb ") + what + ": " + mdb_strerror(rc));
    }
  }
  void open(const std::string& dir, std::size_t keys) {
    check(mdb_env_create(&env_), "env_create");
    // Map size: generous for random inserts (pages end up about 2/3 full); tmpfs is sparse.
    const std::size_t map_bytes = keys == 0 ? 0 : (std::size_t{512} << 20) + keys * 128;
    if (map_bytes != 0) check(mdb_env_set_mapsize(env_, map_bytes), "set_mapsize");
    check(mdb_env_set_maxreaders(env_, 256), "set_maxreaders");
    check(mdb_env_open(env_, dir.c_str(), MDB_NOSYNC | MDB_WRITEMAP | MDB_NOMETASYNC | MDB_NOTLS,
                       0600),
          "env_open");
  }
  void put(std::uint64_t k, std::uint64_t v) {
    if (wtxn_ == nullptr) check(mdb_txn_begin(env_, nullptr, 0, &wtxn_), "write txn_begin");
    MDB_val key{sizeof k, &k};
    MDB_val val{sizeof v, &v};
    const int rc = mdb_put(wtxn_, dbi_, &key, &val, 0);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(wtxn_);  // releases the writer lock that other processes wait for
      wtxn_ = nullptr;
      writes_ = 0;
      check(rc, "put");
    }
    if (++writes_ == write_batch_) flush();
  }

  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* wtxn_ = nullptr;
  MDB_txn* rtxn_ = nullptr;
  int write_batch_;
  int read_batch_;
  int writes_ = 0;
  int reads_ = 0;
};

/// LMDB with one transaction per operation (reads and writes): what a service that cannot
/// batch pays.
class LmdbTxn1Peer : public LmdbPeer {
 public:
  static constexpr const char* kName = "lmdb-txn1";
  LmdbTxn1Peer(Create, const std::string& name, std::size_t keys)
      : LmdbPeer(Create{}, name, keys, 1, 1) {}
};

// ---- in-process peers -----------------------------------------------------------------------

/// An allocator that adds what it hands out to a counter of its owner (bytes requested, not
/// malloc's own headers). Only allocation and deallocation pay for it (one relaxed add), never a
/// lookup, so the in-process peers count their memory without changing what is timed.
template <class T>
struct CountingAllocator {
  using value_type = T;
  explicit CountingAllocator(std::atomic<std::int64_t>* bytes) noexcept : bytes(bytes) {}
  template <class U>
  CountingAllocator(const CountingAllocator<U>& o) noexcept : bytes(o.bytes) {}  // NOLINT
  T* allocate(std::size_t n) {
    bytes->fetch_add(static_cast<std::int64_t>(n * sizeof(T)), std::memory_order_relaxed);
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    bytes->fetch_sub(static_cast<std::int64_t>(n * sizeof(T)), std::memory_order_relaxed);
    std::allocator<T>().deallocate(p, n);
  }
  template <class U>
  bool operator==(const CountingAllocator<U>& o) const noexcept {
    return bytes == o.bytes;
  }
  std::atomic<std::int64_t>* bytes;
};

/// tbb::concurrent_hash_map: the in-process concurrent map (threads, not processes).
class TbbPeer {
 public:
  static constexpr const char* kName = "tbb";
  explicit TbbPeer(std::size_t) {}
  TbbPeer(const TbbPeer&) = delete;
  TbbPeer& operator=(const TbbPeer&) = delete;
  void insert(std::uint64_t k, std::uint64_t v) { table_.insert({k, v}); }
  void assign(std::uint64_t k, std::uint64_t v) {
    Table::accessor a;
    table_.insert(a, k);
    a->second = v;
  }
  bool find(std::uint64_t k, std::uint64_t* v) const {
    Table::const_accessor a;
    if (!table_.find(a, k)) return false;
    *v = a->second;
    return true;
  }
  void flush() {}
  /// What its allocator handed out: the nodes and the segment (bucket) arrays.
  std::size_t footprint_bytes() const { return static_cast<std::size_t>(bytes_.load()); }

 private:
  using Alloc = CountingAllocator<std::pair<const std::uint64_t, std::uint64_t>>;
  using Table = tbb::concurrent_hash_map<std::uint64_t, std::uint64_t,
                                         tbb::tbb_hash_compare<std::uint64_t>, Alloc>;
  std::atomic<std::int64_t> bytes_{0};
  Table table_{Alloc(&bytes_)};
};

/// boost::unordered_flat_map, single-threaded: the in-process ceiling.
class FlatPeer {
 public:
  static constexpr const char* kName = "flat";
  explicit FlatPeer(std::size_t) {}
  FlatPeer(const FlatPeer&) = delete;
  FlatPeer& operator=(const FlatPeer&) = delete;
  void insert(std::uint64_t k, std::uint64_t v) { table_.emplace(k, v); }
  void assign(std::uint64_t k, std::uint64_t v) { table_[k] = v; }
  // Always inlined, also into FlatPinnedPeer::find (which GCC would otherwise call it from).
  [[gnu::always_inline]] bool find(std::uint64_t k, std::uint64_t* v) const {
    const auto it = table_.find(k);
    if (it == table_.end()) return false;
    *v = it->second;
    return true;
  }
  void flush() {}
  void reserve(std::size_t n) { table_.reserve(n); }
  /// What its allocator handed out: the one array of groups (15 slots of 16 bytes and 16
  /// metadata bytes each), i.e. capacity * sizeof(value_type) + control bytes.
  std::size_t footprint_bytes() const { return static_cast<std::size_t>(bytes_.load()); }
  std::size_t capacity() const { return table_.bucket_count(); }

 private:
  using Alloc = CountingAllocator<std::pair<const std::uint64_t, std::uint64_t>>;
  using Table = boost::unordered_flat_map<std::uint64_t, std::uint64_t, boost::hash<std::uint64_t>,
                                          std::equal_to<std::uint64_t>, Alloc>;
  std::atomic<std::int64_t> bytes_{0};
  Table table_{0, boost::hash<std::uint64_t>(), std::equal_to<std::uint64_t>(), Alloc(&bytes_)};
};

#ifndef SHMAP_BENCH_PEERS_ONLY
/// FlatPeer with the per-lookup protocol that shmap's Map::find runs around its table lookup
/// (fast_path.hpp, find_front), done the same way with the same code: the thread's number
/// from a thread_local, its lane's nesting depth, the pin (light_pin: an epoch load and a
/// store), a check that the cached view still names the current table and that its capacity
/// word still matches, the unpin store and the reclaim flag. The table is flat's own, in
/// process memory. What flat would cost if it had to be safe to read while other processes
/// free and replace its tables: the floor the guarantees alone put under a lookup, against
/// which shmap's own table work can be told apart from the protocol's.
class FlatPinnedPeer {
 public:
  static constexpr const char* kName = "flat-pinned";
  explicit FlatPinnedPeer(std::size_t n) : flat_(n) {}
  FlatPinnedPeer(const FlatPinnedPeer&) = delete;
  FlatPinnedPeer& operator=(const FlatPinnedPeer&) = delete;
  void insert(std::uint64_t k, std::uint64_t v) { flat_.insert(k, v); }
  void assign(std::uint64_t k, std::uint64_t v) { flat_.assign(k, v); }
  bool find(std::uint64_t k, std::uint64_t* v) const {
    namespace d = shmap::detail;
    const std::size_t t = d::t_thread_number;
    if (t >= d::FastFront::kFrontLanes) [[unlikely]] {
      d::thread_number();
      return flat_.find(k, v);
    }
    Local& local = local_[t];
    if (local.depth != 0) [[unlikely]]
      return flat_.find(k, v);
    std::atomic<std::uint64_t>& pin = pins_[t].pin;
    d::light_pin(pin, global_epoch_);
    bool found = false;
    if (current_table_.load(std::memory_order_seq_cst) == local.table &&
        capacity_word_.load(std::memory_order_relaxed) == local.capacity) [[likely]] {
      older_ = older_word_.load(std::memory_order_seq_cst);
      found = flat_.find(k, v);
    }
    pin.store(0, std::memory_order_release);
    if (d::t_reclaim_wanted) [[unlikely]]
      return flat_.find(k, v);
    return found;
  }
  void flush() {}
  std::size_t footprint_bytes() const { return flat_.footprint_bytes(); }

 private:
  struct alignas(64) Pin {
    std::atomic<std::uint64_t> pin{0};
  };
  struct alignas(64) Local {
    std::uint32_t depth = 0;
    std::uint64_t table = 4096;
    std::uint64_t capacity = 1024;
  };
  FlatPeer flat_;
  mutable Pin pins_[shmap::detail::FastFront::kFrontLanes];
  mutable Local local_[shmap::detail::FastFront::kFrontLanes];
  std::atomic<std::uint64_t> global_epoch_{1};
  std::atomic<std::uint64_t> current_table_{4096};
  std::atomic<std::uint64_t> capacity_word_{1024};
  std::atomic<std::uint64_t> older_word_{0};
  mutable std::uint64_t older_ = 0;
};
#endif

}  // namespace shmap_bench
