// Snapshot speed, side by side in one run on the same data (issue 3): shmap dump and load of
// an N-entry map to a file on tmpfs, `cp` of the same bytes, and LMDB's mdb_dump / mdb_load of
// the same entries. Not a test; run by scripts/bench.sh.
//
//   shmap_snapshot_bench [--entries N] [--reps R] [--dir /dev/shm/shmap-snapbench]
#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "peers.hpp"
#include "shmap/shmap.hpp"

namespace fs = std::filesystem;

namespace {

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "command failed: %s\n", cmd.c_str());
    std::exit(1);
  }
}

void check(int rc, const char* what) {
  if (rc != 0) {
    std::fprintf(stderr, "lmdb %s: %s\n", what, mdb_strerror(rc));
    std::exit(1);
  }
}

// Writes the same entries into an LMDB environment (integer keys, 8-byte values).
void fill_lmdb(const std::string& dir, const std::vector<std::uint64_t>& keys) {
  fs::create_directories(dir);
  MDB_env* env = nullptr;
  check(mdb_env_create(&env), "env_create");
  check(mdb_env_set_mapsize(env, std::size_t{8} << 30), "set_mapsize");
  check(mdb_env_open(env, dir.c_str(), MDB_NOSYNC, 0600), "env_open");
  MDB_txn* txn = nullptr;
  MDB_dbi dbi;
  check(mdb_txn_begin(env, nullptr, 0, &txn), "txn_begin");
  check(mdb_dbi_open(txn, nullptr, 0, &dbi), "dbi_open");
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::uint64_t k = keys[i], v = i;
    MDB_val kv{sizeof k, &k}, vv{sizeof v, &v};
    check(mdb_put(txn, dbi, &kv, &vv, 0), "put");
  }
  check(mdb_txn_commit(txn), "commit");
  mdb_env_close(env);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t entries = std::size_t{16} << 20;
  int reps = 3;
  std::string dir = "/dev/shm/shmap-snapbench";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--entries")) entries = std::strtoull(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
  }
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string name = "shmap-snapbench-" + std::to_string(getpid());
  const std::string file = dir + "/map.shmap", copy = dir + "/copy.shmap";
  std::vector<std::uint64_t> keys(entries);
  for (std::size_t i = 0; i < entries; ++i) keys[i] = shmap_bench::mix64(shmap_bench::kSeed + i);

  shmap::Map::remove(name);
  {
    auto m = shmap::Map::create(name, {.initial_capacity = entries * 2});
    for (std::size_t i = 0; i < entries; ++i) m.insert(keys[i], i);
  }
  std::printf("# %zu entries; files in %s\n", entries, dir.c_str());

  std::vector<double> dump_s, load_s, cp_s, mdump_s, mload_s;
  std::uintmax_t snap_bytes = 0, lmdb_text_bytes = 0, lmdb_bytes = 0;
  const std::string loaded = name + "-loaded";
  for (int r = 0; r < reps; ++r) {
    fs::remove(file);
    fs::remove(copy);
    shmap::Map::remove(loaded);
    auto m = shmap::Map::open(name);
    dump_s.push_back(seconds([&] { m.dump(file); }));
    snap_bytes = fs::file_size(file);
    cp_s.push_back(seconds([&] { run("cp " + file + " " + copy); }));
    load_s.push_back(seconds([&] { shmap::Map::load(file, loaded); }));
    if (shmap::Map::open(loaded).size() != entries) {
      std::fprintf(stderr, "load lost entries\n");
      return 1;
    }
  }
  shmap::Map::remove(loaded);
  shmap::Map::remove(name);
  fs::remove(copy);

  const std::string env = dir + "/lmdb", text = dir + "/lmdb.txt", env2 = dir + "/lmdb2";
  fill_lmdb(env, keys);
  keys.clear();
  keys.shrink_to_fit();
  lmdb_bytes = fs::file_size(env + "/data.mdb");
  for (int r = 0; r < reps; ++r) {
    fs::remove(text);
    fs::remove_all(env2);
    fs::create_directories(env2);
    mdump_s.push_back(seconds([&] { run("mdb_dump -f " + text + " " + env); }));
    lmdb_text_bytes = fs::file_size(text);
    mload_s.push_back(seconds([&] { run("mdb_load -f " + text + " " + env2); }));
  }
  fs::remove_all(dir);

  auto rate = [](std::uintmax_t bytes, double s) { return static_cast<double>(bytes) / s / 1e9; };
  std::printf("\n| operation | bytes | median s | GB/s of its file | entries/s (M) |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  auto row = [&](const char* what, std::uintmax_t bytes, double s) {
    std::printf("| %s | %ju | %.3f | %.2f | %.1f |\n", what, bytes, s, rate(bytes, s),
                static_cast<double>(entries) / s / 1e6);
  };
  row("shmap dump", snap_bytes, median(dump_s));
  row("cp of the snapshot", snap_bytes, median(cp_s));
  row("shmap load (new map)", snap_bytes, median(load_s));
  row("mdb_dump (text)", lmdb_text_bytes, median(mdump_s));
  row("mdb_load (text)", lmdb_text_bytes, median(mload_s));
  std::printf(
      "\nLMDB data file: %ju bytes. Ratios: dump %.2fx cp, load %.2fx cp; "
      "shmap dump %.1fx faster than mdb_dump, load %.1fx faster than mdb_load (time).\n",
      lmdb_bytes, median(cp_s) / median(dump_s), median(cp_s) / median(load_s),
      median(mdump_s) / median(dump_s), median(mload_s) / median(load_s));
  return 0;
}
