// shmap multi-process throughput driver.
//
//   shmap_mp [--sizes=1M,16M] [--procs=1,2] [--reps=5] [--seconds=1]
//            [--peers=shmap,bipc,lmdb,shmap-threads,tbb,flat] [--workloads=find_hit,mixed]
//            [--growth=10M] [--growth-reps=3] [--no-throughput] [--no-growth]
//
// Throughput: for each size and map, the parent fills the map (shared-memory maps: it then
// detaches), then forks one group of workers per process count. Each worker attaches by name
// (as an unrelated process would), warms its page tables with one pass of lookups and reports
// ready through a pipe; then, for every round, it blocks reading a pipe until the parent
// releases the whole group at once, runs the workload for a fixed time, and writes its
// operation count and elapsed time back through a pipe. Rounds of the groups alternate (1, 2,
// 1, 2, ...) so that noise on the shared machine hits both alike; the table gives medians over
// the rounds. tbb and flat are in-process peers: threads instead of processes (flat only
// reads concurrently: boost::unordered_flat_map is not safe for concurrent writes);
// shmap-threads is shmap driven by threads of one process, to tell what processes cost from
// what the map costs. The machine is shared: every row also says how many CPUs the workers
// really got, and the scaling per CPU-second (see print_table).
//
// Growth: inserting n keys into a shmap created with the smallest capacity (8) against one
// pre-sized to the next power of two >= n (and the same for boost::unordered_flat_map with and
// without reserve()).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "peers.hpp"

namespace {

using namespace shmap_bench;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kChunk = 1024;  // operations between two looks at the clock

enum class Workload : char { find_hit = 'h', mixed = 'm' };

const char* workload_name(Workload w) { return w == Workload::find_hit ? "find_hit" : "mixed"; }

/// What one worker reports for one round.
struct Result {
  std::uint64_t ops = 0;
  double seconds = 0;
  double cpu_seconds = 0;   // CPU time the worker got meanwhile (the machine is shared)
  std::uint64_t wrong = 0;  // lookups of present keys that missed
  char error[96] = {};      // non-empty: the worker failed
};

/// Runs workload w on p for `seconds`, starting at key index `start`.
template <class P>
Result run_loop(P& p, const Keys& k, Workload w, std::size_t start, double seconds) {
  const std::size_t n = k.size();
  const std::uint64_t* keys = k.lookup_order.data();
  Result r;
  std::size_t i = start;
  std::uint64_t sum = 0;
  timespec c0, c1;
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  for (;;) {
    for (std::size_t j = 0; j < kChunk; ++j) {
      std::uint64_t v;
      if (w == Workload::mixed && j % 10 == 0) {
        p.assign(keys[i + j], r.ops + j);
      } else if (p.find(keys[i + j], &v)) {
        sum += v;
      } else {
        ++r.wrong;
      }
    }
    r.ops += kChunk;
    i += kChunk;
    if (i >= n) i = 0;
    if (Clock::now() >= deadline) break;
  }
  p.flush();
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  r.cpu_seconds = static_cast<double>(c1.tv_sec - c0.tv_sec) +
                  static_cast<double>(c1.tv_nsec - c0.tv_nsec) * 1e-9;
  // Keep the lookups from being optimised away.
  if (sum == 42) std::fputs("", stderr);
  return r;
}

/// Start index of worker `w` of `workers`: spread over the key array, chunk-aligned.
std::size_t start_of(std::size_t w, std::size_t workers, std::size_t n) {
  return (n / workers * w) / kChunk * kChunk;
}

void write_all(int fd, const void* p, std::size_t len) {
  const char* c = static_cast<const char*>(p);
  while (len > 0) {
    const ssize_t r = ::write(fd, c, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) std::_Exit(3);
    c += r;
    len -= static_cast<std::size_t>(r);
  }
}

bool read_all(int fd, void* p, std::size_t len) {
  char* c = static_cast<char*>(p);
  while (len > 0) {
    const ssize_t r = ::read(fd, c, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    len -= static_cast<std::size_t>(r);
  }
  return true;
}

/// Round result of a group: total throughput and whether everything was right.
struct Round {
  double ops_per_s = 0;
  double cpus = 0;  // CPUs the workers got on average: their CPU time over their wall time
  std::uint64_t wrong = 0;
  std::string error;
};

Round combine(const std::vector<Result>& rs) {
  Round out;
  for (const Result& r : rs) {
    out.ops_per_s += static_cast<double>(r.ops) / r.seconds;
    out.cpus += r.cpu_seconds / r.seconds;
    out.wrong += r.wrong;
    if (r.error[0] != '\0' && out.error.empty()) out.error = r.error;
  }
  return out;
}

/// A group of worker processes attached to one shared map, driven round by round.
class ProcessGroup {
 public:
  /// attach: builds the worker's own handle on the map (called in the child).
  template <class P>
  ProcessGroup(std::size_t workers, const Keys& keys, std::function<std::unique_ptr<P>()> attach,
               double seconds)
      : workers_(workers) {
    if (::pipe(ready_) != 0 || ::pipe(go_) != 0) throw std::runtime_error("pipe");
    for (std::size_t w = 0; w < workers; ++w) {
      const pid_t pid = ::fork();
      if (pid < 0) throw std::runtime_error("fork");
      if (pid == 0) {
        ::close(ready_[0]);
        ::close(go_[1]);
        child<P>(w, keys, attach, seconds);  // never returns
      }
      pids_.push_back(pid);
    }
    ::close(ready_[1]);
    ::close(go_[0]);
    // One Result per worker once attached and warm (an error result if attaching failed).
    for (std::size_t w = 0; w < workers; ++w) {
      Result r;
      if (!read_all(ready_[0], &r, sizeof r)) throw std::runtime_error("a worker died starting");
      if (r.error[0] != '\0') throw std::runtime_error(std::string("worker: ") + r.error);
    }
  }
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  Round run(Workload w) {
    // Releases every worker at once: each one blocks in read() until its byte arrives.
    const std::string go(workers_, static_cast<char>(w));
    write_all(go_[1], go.data(), go.size());
    std::vector<Result> rs(workers_);
    for (auto& r : rs) {
      if (!read_all(ready_[0], &r, sizeof r)) throw std::runtime_error("a worker died");
    }
    return combine(rs);
  }

  ~ProcessGroup() {
    const std::string quit(workers_, 'q');
    write_all(go_[1], quit.data(), quit.size());
    ::close(go_[1]);
    ::close(ready_[0]);
    for (pid_t pid : pids_) {
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "mp: worker %d ended abnormally (status %d)\n", pid, status);
      }
    }
  }

 private:
  template <class P>
  [[noreturn]] void child(std::size_t w, const Keys& keys,
                          const std::function<std::unique_ptr<P>()>& attach, double seconds) {
    Result r;
    std::unique_ptr<P> p;
    try {
      p = attach();
      // Warm-up: one pass of lookups over all keys fills this process's page tables.
      std::uint64_t v = 0;
      for (std::uint64_t key : keys.lookup_order) p->find(key, &v);
      p->flush();
    } catch (const std::exception& e) {
      std::snprintf(r.error, sizeof r.error, "%s", e.what());
    }
    write_all(ready_[1], &r, sizeof r);
    if (r.error[0] != '\0') std::_Exit(1);
    for (;;) {
      char cmd = 0;
      if (!read_all(go_[0], &cmd, 1) || cmd == 'q') break;
      // A worker stuck (a peer's lock held by a dead process) dies instead of hanging the run.
      ::alarm(static_cast<unsigned>(seconds) + 120);
      try {
        r = run_loop(*p, keys, static_cast<Workload>(cmd), start_of(w, workers_, keys.size()),
                     seconds);
      } catch (const std::exception& e) {
        r = Result{};
        r.seconds = 1;
        std::snprintf(r.error, sizeof r.error, "%s", e.what());
      }
      ::alarm(0);
      write_all(ready_[1], &r, sizeof r);
    }
    p.reset();
    std::_Exit(0);
  }

  std::size_t workers_;
  int ready_[2] = {-1, -1};  // workers -> parent: ready, then one Result per round
  int go_[2] = {-1, -1};     // parent -> workers: one command byte per worker per round
  std::vector<pid_t> pids_;
};

/// In-process peers: threads released together by a latch.
template <class P>
Round run_threads(P& p, std::size_t threads, const Keys& keys, Workload w, double seconds) {
  std::vector<Result> rs(threads);
  std::latch start(static_cast<std::ptrdiff_t>(threads));
  std::vector<std::thread> ts;
  for (std::size_t t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      rs[t] = run_loop(p, keys, w, start_of(t, threads, keys.size()), seconds);
    });
  }
  for (auto& t : ts) t.join();
  return combine(rs);
}

// ---- the table ------------------------------------------------------------------------------

struct Config {
  std::vector<std::size_t> sizes;
  std::vector<std::size_t> procs;
  std::vector<std::string> peers;
  std::vector<Workload> workloads;
  int reps = 5;
  double seconds = 1.0;
  std::size_t growth = 0;
  int growth_reps = 3;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/// samples[peer][workload][procs] = the rounds.
using Samples =
    std::map<std::string, std::map<Workload, std::map<std::size_t, std::vector<Round>>>>;

/// Median of f over the rounds.
template <class F>
double median_of(const std::vector<Round>& rs, F f) {
  std::vector<double> v;
  for (const Round& r : rs) v.push_back(f(r));
  return median(v);
}
double median_ops(const std::vector<Round>& rs) {
  return median_of(rs, [](const Round& r) { return r.ops_per_s; });
}

std::string g_problems;

void note_round(const std::string& peer, Workload w, std::size_t procs, const Round& r,
                std::vector<Round>* into) {
  if (!r.error.empty() || r.wrong != 0) {
    char line[256];
    std::snprintf(line, sizeof line, "- %s %s %zu proc: %s%s (%llu present keys not found)\n",
                  peer.c_str(), workload_name(w), procs,
                  r.error.empty() ? "" : "error: ", r.error.c_str(),
                  static_cast<unsigned long long>(r.wrong));
    g_problems += line;
    std::fputs(line, stderr);
  }
  into->push_back(r);
}

std::string shm_name(const char* peer) {
  return "shmap-mp-" + std::to_string(::getpid()) + "-" + peer;
}

/// Everything measured at one size, alive at once: every map filled, every worker group
/// attached. The rounds then go round-robin over all the cells (map x process count), so a
/// burst of foreign load on the shared machine is spread over all of them instead of landing
/// on one map's figures.
struct Bench {
  struct Cell {
    std::string peer;
    std::size_t procs;
    bool writes;  // may run the mixed workload
    std::function<Round(Workload)> run;
  };
  std::vector<Cell> cells;
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  std::vector<std::shared_ptr<void>> in_process;  // maps of the thread cells
  std::vector<std::function<void()>> unlink;

  ~Bench() {
    cells.clear();
    groups.clear();  // workers detach and exit
    in_process.clear();
    for (auto& u : unlink) u();
  }
};

/// Fills a shared-memory map in the parent, detaches, and attaches a worker group per process
/// count.
template <class P>
void add_shared(Bench& b, const Config& cfg, const Keys& keys,
                std::function<std::unique_ptr<P>(const std::string&)> create,
                std::function<std::unique_ptr<P>(const std::string&)> attach) {
  const std::string name = shm_name(P::kName);
  P::destroy(name);
  b.unlink.push_back([name] { P::destroy(name); });
  {
    const auto t0 = Clock::now();
    auto p = create(name);
    for (std::size_t i = 0; i < keys.size(); ++i) p->insert(keys.insert_order[i], i);
    p->flush();
    if constexpr (requires { p->compact(); }) p->compact();
    std::fprintf(stderr, "mp: %s filled with %zu keys in %.2f s\n", P::kName, keys.size(),
                 std::chrono::duration<double>(Clock::now() - t0).count());
  }  // the parent detaches before forking (LMDB forbids using an environment across fork())
  try {
    for (std::size_t procs : cfg.procs) {
      b.groups.push_back(std::make_unique<ProcessGroup>(
          procs, keys, std::function<std::unique_ptr<P>()>([&] { return attach(name); }),
          cfg.seconds));
      ProcessGroup* g = b.groups.back().get();
      b.cells.push_back({P::kName, procs, true, [g](Workload w) { return g->run(w); }});
    }
  } catch (const std::exception& e) {
    g_problems += std::string("- ") + P::kName + ": " + e.what() + "\n";
    std::fprintf(stderr, "mp: %s failed: %s\n", P::kName, e.what());
  }
}

/// In-process map (made by `make`, filled here) driven by threads.
template <class P>
void add_threads(Bench& b, const Config& cfg, const Keys& keys, const std::string& label,
                 bool concurrent_writes, std::function<std::unique_ptr<P>()> make) {
  std::shared_ptr<P> p = make();
  for (std::size_t i = 0; i < keys.size(); ++i) p->insert(keys.insert_order[i], i);
  p->flush();
  if constexpr (requires { p->compact(); }) p->compact();
  b.in_process.push_back(p);
  for (std::size_t procs : cfg.procs) {
    const double seconds = cfg.seconds;
    b.cells.push_back(
        {label, procs, concurrent_writes || procs == 1, [p, procs, &keys, seconds](Workload w) {
           return run_threads(*p, procs, keys, w, seconds);
         }});
  }
}

void run_rounds(const Config& cfg, Bench& b, Samples* out) {
  for (int rep = 0; rep < cfg.reps; ++rep) {
    for (Workload w : cfg.workloads) {
      for (auto& c : b.cells) {
        if (w == Workload::mixed && !c.writes) continue;
        try {
          note_round(c.peer, w, c.procs, c.run(w), &(*out)[c.peer][w][c.procs]);
        } catch (const std::exception& e) {
          g_problems += "- " + c.peer + ": " + e.what() + "\n";
          c.writes = false;
          c.run = [](Workload) -> Round { throw std::runtime_error("skipped after a failure"); };
        }
      }
    }
  }
}

/// Per size: a row per map and workload with the median throughput at each process count and
/// the scaling ratios; then shmap's ratio to each peer. The machine is shared, so the table
/// also shows how many CPUs the workers really got (their CPU time over their wall time) and
/// the scaling per CPU-second: procs x (ops per CPU-second) against one worker's, which
/// discounts time stolen by other jobs but keeps any slowdown the workers cause each other.
void print_table(const Config& cfg, std::size_t n, Samples& s) {
  std::printf("\n### %s keys: median Mops/s over %d rounds of %.1f s\n\n", count_label(n).c_str(),
              cfg.reps, cfg.seconds);
  std::printf("| map | workload |");
  for (std::size_t p : cfg.procs) std::printf(" %zu proc |", p);
  for (std::size_t i = 1; i < cfg.procs.size(); ++i) {
    std::printf(" %zu/%zu |", cfg.procs[i], cfg.procs[0]);
  }
  std::printf(" CPUs got |");
  for (std::size_t i = 1; i < cfg.procs.size(); ++i) {
    std::printf(" %zu/%zu per CPU-s |", cfg.procs[i], cfg.procs[0]);
  }
  std::printf("\n|---|---|");
  for (std::size_t i = 0; i < 3 * cfg.procs.size() - 1; ++i) std::printf("---:|");
  std::printf("\n");
  for (const auto& peer : cfg.peers) {
    if (!s.count(peer)) continue;
    for (Workload w : cfg.workloads) {
      std::printf("| %s | %s |", peer.c_str(), workload_name(w));
      std::vector<double> med, cpus, per_cpu;
      for (std::size_t p : cfg.procs) {
        const auto& rs = s[peer][w][p];
        med.push_back(median_ops(rs) / 1e6);
        cpus.push_back(median_of(rs, [](const Round& r) { return r.cpus; }));
        per_cpu.push_back(
            median_of(rs, [](const Round& r) { return r.cpus > 0 ? r.ops_per_s / r.cpus : 0; }) *
            static_cast<double>(p));
        if (med.back() > 0) {
          std::printf(" %.2f |", med.back());
        } else {
          std::printf(" - |");
        }
      }
      for (std::size_t i = 1; i < med.size(); ++i) {
        if (med[0] > 0 && med[i] > 0) {
          std::printf(" **%.2fx** |", med[i] / med[0]);
        } else {
          std::printf(" - |");
        }
      }
      std::printf(" ");
      for (std::size_t i = 0; i < cpus.size(); ++i) {
        if (med[i] > 0) {
          std::printf("%s%.2f", i ? " / " : "", cpus[i]);
        } else {
          std::printf("%s-", i ? " / " : "");
        }
      }
      std::printf(" |");
      for (std::size_t i = 1; i < med.size(); ++i) {
        if (per_cpu[0] > 0 && per_cpu[i] > 0) {
          std::printf(" %.2fx |", per_cpu[i] / per_cpu[0]);
        } else {
          std::printf(" - |");
        }
      }
      std::printf("\n");
    }
  }
  if (!s.count("shmap")) return;
  std::printf("\nshmap / peer at the same process (thread) count:\n\n| vs | workload |");
  for (std::size_t p : cfg.procs) std::printf(" %zu proc |", p);
  std::printf("\n|---|---|");
  for (std::size_t i = 0; i < cfg.procs.size(); ++i) std::printf("---:|");
  std::printf("\n");
  for (const auto& peer : cfg.peers) {
    if (peer == "shmap" || !s.count(peer)) continue;
    for (Workload w : cfg.workloads) {
      std::printf("| %s | %s |", peer.c_str(), workload_name(w));
      for (std::size_t p : cfg.procs) {
        const double a = median_ops(s["shmap"][w][p]);
        const double b = median_ops(s[peer][w][p]);
        if (a > 0 && b > 0) {
          std::printf(" %.2fx |", a / b);
        } else {
          std::printf(" - |");
        }
      }
      std::printf("\n");
    }
  }
}

// ---- growth ---------------------------------------------------------------------------------

std::size_t next_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

double cpu_seconds() {
  timespec ts;
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// Wall and CPU seconds of one timed insertion run.
struct Times {
  std::vector<double> wall, cpu;
  template <class F>
  void time(F&& f) {
    const auto w0 = Clock::now();
    const double c0 = cpu_seconds();
    f();
    cpu.push_back(cpu_seconds() - c0);
    wall.push_back(std::chrono::duration<double>(Clock::now() - w0).count());
  }
};

void growth_row(const char* label, const Times& grow, const Times& pre) {
  std::printf("| %s | %.3f | %.3f | **%.2fx** | %.3f | %.3f | %.2fx |\n", label, median(grow.wall),
              median(pre.wall), median(grow.wall) / median(pre.wall), median(grow.cpu),
              median(pre.cpu), median(grow.cpu) / median(pre.cpu));
}

void measure_growth(const Config& cfg) {
  const std::size_t n = cfg.growth;
  std::vector<std::uint64_t> keys(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = mix64((2 * i) ^ kSeed);
  const std::size_t presized = next_pow2(n);
  Times grow, pre, flat_grow, flat_pre;
  std::uint64_t resizes = 0;
  for (int rep = 0; rep < cfg.growth_reps; ++rep) {
#ifndef SHMAP_BENCH_PEERS_ONLY
    for (const std::size_t cap : {std::size_t{8}, presized}) {
      const std::string name = shm_name("growth");
      ShmapPeer::destroy(name);
      {
        ShmapPeer p(Create{}, name, cap);
        (cap == 8 ? grow : pre).time([&] {
          for (std::size_t i = 0; i < n; ++i) p.insert(keys[i], i);
        });
        if (cap == 8) resizes = p.map().stats().resizes;
        if (p.map().size() != n) {
          g_problems += "- growth: shmap size " + std::to_string(p.map().size()) + " after " +
                        std::to_string(n) + " inserts\n";
        }
      }
      ShmapPeer::destroy(name);
    }
#endif
    for (const bool reserve : {false, true}) {
      FlatPeer p(n);
      if (reserve) p.reserve(n);
      (reserve ? flat_pre : flat_grow).time([&] {
        for (std::size_t i = 0; i < n; ++i) p.insert(keys[i], i);
      });
    }
  }
  std::printf("\n### Growth: inserting %s keys (one process), median over %d runs\n\n",
              count_label(n).c_str(), cfg.growth_reps);
  std::printf(
      "| map | wall s, from smallest | wall s, pre-sized | wall ratio | cpu s, from smallest | "
      "cpu s, pre-sized | cpu ratio |\n|---|---:|---:|---:|---:|---:|---:|\n");
  if (!grow.wall.empty()) {
    const std::string label =
        "shmap: capacity 8 (" + std::to_string(resizes) + " resizes) vs " + count_label(presized);
    growth_row(label.c_str(), grow, pre);
  }
  const std::string label = "flat: no reserve vs reserve(" + count_label(n) + ")";
  growth_row(label.c_str(), flat_grow, flat_pre);
}

}  // namespace

int main(int argc, char** argv) {
  std::string sizes = "1M", procs = "1,2", peers = "shmap,bipc,lmdb,shmap-threads,tbb,flat";
  std::string workloads = "find_hit,mixed", reps = "5", seconds = "1", growth = "10M";
  std::string growth_reps = "3";
  bool throughput = true, do_growth = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (take_flag(a, "--sizes", &sizes) || take_flag(a, "--procs", &procs) ||
        take_flag(a, "--peers", &peers) || take_flag(a, "--workloads", &workloads) ||
        take_flag(a, "--reps", &reps) || take_flag(a, "--seconds", &seconds) ||
        take_flag(a, "--growth", &growth) || take_flag(a, "--growth-reps", &growth_reps)) {
      continue;
    }
    if (a == "--no-throughput") {
      throughput = false;
    } else if (a == "--no-growth") {
      do_growth = false;
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--sizes=1M,16M] [--procs=1,2] [--reps=5] [--seconds=1]\n"
          "  [--peers=shmap,bipc,lmdb,shmap-threads,tbb,flat] [--workloads=find_hit,mixed]\n"
          "  [--growth=10M] [--growth-reps=3] [--no-throughput] [--no-growth]\n",
          argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  Config cfg;
  for (const auto& s : split(sizes))
    cfg.sizes.push_back((parse_count(s) + kChunk - 1) / kChunk * kChunk);
  for (const auto& p : split(procs)) cfg.procs.push_back(std::stoul(p));
  cfg.peers = split(peers);
  for (const auto& w : split(workloads)) {
    cfg.workloads.push_back(w == "mixed" ? Workload::mixed : Workload::find_hit);
  }
  cfg.reps = std::stoi(reps);
  cfg.seconds = std::stod(seconds);
  cfg.growth = parse_count(growth);
  cfg.growth_reps = std::stoi(growth_reps);
  auto wanted = [&](const char* p) {
    return std::find(cfg.peers.begin(), cfg.peers.end(), p) != cfg.peers.end();
  };

  std::printf("## shmap_mp: %u hardware threads; workers are %s\n",
              std::thread::hardware_concurrency(),
              "processes (shmap, bipc, lmdb) or threads (tbb, flat)");
  std::fflush(stdout);
  if (throughput) {
    for (std::size_t n : cfg.sizes) {
      const Keys keys = make_keys(n);
      Samples s;
      {
        Bench b;
        // Shared-memory maps first: their workers are forked before the parent's heap holds
        // the in-process maps.
#ifndef SHMAP_BENCH_PEERS_ONLY
        if (wanted("shmap")) {
          add_shared<ShmapPeer>(
              b, cfg, keys,
              [](const std::string& name) {
                return std::make_unique<ShmapPeer>(Create{}, name, 8);
              },
              [](const std::string& name) { return std::make_unique<ShmapPeer>(Attach{}, name); });
        }
#endif
        if (wanted("bipc")) {
          add_shared<BipcPeer>(
              b, cfg, keys,
              [n](const std::string& name) {
                return std::make_unique<BipcPeer>(Create{}, name, n);
              },
              [](const std::string& name) { return std::make_unique<BipcPeer>(Attach{}, name); });
        }
        if (wanted("lmdb")) {
          // Filled in write transactions of 4096 puts; the workers write one put per
          // transaction and read 1024 lookups per read transaction.
          add_shared<LmdbPeer>(
              b, cfg, keys,
              [n](const std::string& name) {
                return std::make_unique<LmdbPeer>(Create{}, name, n);
              },
              [](const std::string& name) { return std::make_unique<LmdbPeer>(Attach{}, name); });
        }
#ifndef SHMAP_BENCH_PEERS_ONLY
        if (wanted("shmap-threads")) {
          // shmap driven by threads of one process: separates what processes cost (own page
          // tables, own handle) from what the map costs.
          const std::string name = shm_name("threads");
          ShmapPeer::destroy(name);
          b.unlink.push_back([name] { ShmapPeer::destroy(name); });
          add_threads<ShmapPeer>(b, cfg, keys, "shmap-threads", true, [&name] {
            return std::make_unique<ShmapPeer>(Create{}, name, 8);
          });
        }
#endif
        if (wanted("tbb")) {
          add_threads<TbbPeer>(b, cfg, keys, "tbb", true,
                               [n] { return std::make_unique<TbbPeer>(n); });
        }
        if (wanted("flat")) {
          add_threads<FlatPeer>(b, cfg, keys, "flat", false,
                                [n] { return std::make_unique<FlatPeer>(n); });
        }
        run_rounds(cfg, b, &s);
      }
      print_table(cfg, n, s);
      std::fflush(stdout);
    }
  }
  if (do_growth && cfg.growth > 0) measure_growth(cfg);
  if (!g_problems.empty()) std::printf("\n### Problems\n\n%s", g_problems.c_str());
  std::fflush(stdout);
  return g_problems.empty() ? 0 : 1;
}
