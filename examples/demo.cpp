// The shmap demo: several processes share one map, grow it from 8 buckets to millions while
// they work, one of them is killed with SIGKILL in the middle of its writes, the others carry
// on, and the parent checks that every write anybody saw acknowledged is there.
//
//   shmap_demo [--writers N] [--keys N] [--keep NAME]
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "shmap/shmap.hpp"

namespace {

struct Shared {  // anonymous shared memory between the demo's processes (not the map)
  std::atomic<std::uint64_t> acked[16];  // per writer: writes acknowledged so far
  std::atomic<std::uint64_t> go;
  std::atomic<std::uint64_t> reader_checks;
  std::atomic<std::uint64_t> reader_errors;
};

std::uint64_t key_of(int writer, std::uint64_t i) {
  return (static_cast<std::uint64_t>(writer) << 40) | i;
}
std::uint64_t value_of(int writer, std::uint64_t i) {
  return i * 7 + static_cast<std::uint64_t>(writer);
}

constexpr std::uint64_t kCounterKey = ~std::uint64_t{0};  // every writer bumps it: fetch_add

[[noreturn]] void writer(const std::string& name, int id, std::uint64_t keys, Shared* sh) {
  {
    auto m = shmap::Map::open(name);  // closed (slot freed) at the end of this scope
    while (sh->go.load(std::memory_order_acquire) == 0) {
    }
    for (std::uint64_t i = 0; i < keys; ++i) {
      m.insert_or_assign(key_of(id, i), value_of(id, i));
      if (i % 64 == 0) m.fetch_add(kCounterKey, 1);
      // Recorded only after the call returned: this write is acknowledged.
      sh->acked[id].store(i + 1, std::memory_order_release);
    }
  }
  _exit(0);
}

[[noreturn]] void reader(const std::string& name, int writers, Shared* sh) {
  {
    auto m = shmap::Map::open(name);
    std::mt19937_64 rng(42);
    while (sh->go.load(std::memory_order_acquire) != 2) {
      const int w = static_cast<int>(rng() % static_cast<std::uint64_t>(writers));
      const std::uint64_t n = sh->acked[w].load(std::memory_order_acquire);
      if (n == 0) continue;
      const std::uint64_t i = rng() % n;
      const auto v = m.find(key_of(w, i));
      if (!v || *v != value_of(w, i)) sh->reader_errors.fetch_add(1, std::memory_order_relaxed);
      sh->reader_checks.fetch_add(1, std::memory_order_relaxed);
    }
  }
  _exit(0);
}

}  // namespace

constexpr const char* kUsage =
    "usage: shmap_demo [--writers 2..16] [--keys N>=1000] [--keep NAME]\n"
    "\n"
    "Several processes share one shmap map that starts with 8 buckets: N writers insert --keys\n"
    "keys each (default 3 writers, 400000 keys) while a reader checks what they acknowledged;\n"
    "the map grows to millions of buckets meanwhile. Writer 0 is killed with SIGKILL in the\n"
    "middle of its writes; the others carry on. At the end the parent checks that every\n"
    "acknowledged write is there and prints a summary. The map is removed, unless --keep NAME\n"
    "names it and leaves it for 'shmap stat NAME' and friends. Exit 0 if all is well.\n";

int main(int argc, char** argv) try {
  int writers = 3;
  std::uint64_t keys = 400000;
  std::string keep;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc || (a != "--writers" && a != "--keys" && a != "--keep")) {
      std::fprintf(stderr, "shmap_demo: %s '%s'\n%s",
                   i + 1 >= argc && (a == "--writers" || a == "--keys" || a == "--keep")
                       ? "missing value after"
                       : "unknown argument",
                   a.c_str(), kUsage);
      return 2;
    }
    const char* v = argv[++i];
    if (a == "--writers") writers = std::atoi(v);
    if (a == "--keys") keys = std::strtoull(v, nullptr, 10);
    if (a == "--keep") keep = v;
  }
  if (writers < 2 || writers > 16 || keys < 1000) {
    std::fprintf(stderr, "shmap_demo: --writers must be 2..16 and --keys at least 1000\n%s",
                 kUsage);
    return 2;
  }
  const std::string name = keep.empty() ? "shmap-demo-" + std::to_string(getpid()) : keep;
  auto* sh = static_cast<Shared*>(
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (sh) Shared{};

  const auto t0 = std::chrono::steady_clock::now();
  auto map = shmap::Map::create(name, {.initial_capacity = 8});
  std::printf("created map '%s' with %zu buckets (%zu bytes)\n", name.c_str(), map.stats().capacity,
              map.stats().segment_bytes);

  std::vector<pid_t> pids;
  for (int w = 0; w < writers; ++w) {
    const pid_t pid = fork();
    if (pid == 0) writer(name, w, keys, sh);
    pids.push_back(pid);
  }
  const pid_t reader_pid = fork();
  if (reader_pid == 0) reader(name, writers, sh);
  // Everyone attached (each holds a handle slot) before the race starts.
  while (map.stats().handles_in_use < static_cast<std::size_t>(writers) + 2) {
  }
  std::printf("%d writers and 1 reader attached (handles in use: %zu)\n", writers,
              map.stats().handles_in_use);
  sh->go.store(1, std::memory_order_release);

  // Kill writer 0 at a random moment in the middle of its writes.
  std::mt19937_64 rng(static_cast<std::uint64_t>(getpid()));
  const std::uint64_t kill_at = keys / 4 + rng() % (keys / 2);
  while (sh->acked[0].load(std::memory_order_acquire) < kill_at) {
  }
  kill(pids[0], SIGKILL);
  int status = 0;
  waitpid(pids[0], &status, 0);
  const std::uint64_t killed_acked = sh->acked[0].load(std::memory_order_acquire);
  std::printf(
      "killed writer 0 (pid %d) with SIGKILL after %llu acknowledged writes; "
      "the map now has %zu buckets in %zu table(s)\n",
      pids[0], static_cast<unsigned long long>(killed_acked), map.stats().capacity,
      map.stats().tables);

  bool ok = true;
  for (int w = 1; w < writers; ++w) {
    waitpid(pids[w], &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::printf("writer %d failed (status %d)\n", w, status);
      ok = false;
    }
  }
  sh->go.store(2, std::memory_order_release);
  waitpid(reader_pid, &status, 0);
  const auto t1 = std::chrono::steady_clock::now();

  const std::size_t cleared = map.clear_stale_handles();
  // Verify: every acknowledged write of every writer, the killed one included.
  std::uint64_t missing = 0, checked = 0;
  for (int w = 0; w < writers; ++w) {
    const std::uint64_t n = w == 0 ? killed_acked : keys;
    for (std::uint64_t i = 0; i < n; ++i, ++checked) {
      const auto v = map.find(key_of(w, i));
      if (!v || *v != value_of(w, i)) ++missing;
    }
  }
  std::size_t walked = 0;
  map.for_each([&](std::uint64_t, std::uint64_t) { ++walked; });
  const auto check = map.check();
  const auto st = map.stats();
  const double secs = std::chrono::duration<double>(t1 - t0).count();

  std::printf("\n== summary ==\n");
  std::printf("writers                 %d (+1 reader), writer 0 killed mid-write\n", writers);
  std::printf("acknowledged writes     %llu checked, %llu missing\n",
              static_cast<unsigned long long>(checked), static_cast<unsigned long long>(missing));
  std::printf("reader checks           %llu during the run, %llu wrong\n",
              static_cast<unsigned long long>(sh->reader_checks.load()),
              static_cast<unsigned long long>(sh->reader_errors.load()));
  std::printf("shared counter          %llu (fetch_add from all writers)\n",
              static_cast<unsigned long long>(map.find(kCounterKey).value_or(0)));
  std::printf("entries                 %zu (for_each walked %zu, check counted %zu)\n", st.size,
              walked, check.live_entries);
  std::printf("capacity                8 -> %zu buckets, %llu resizes, %llu tables freed\n",
              st.capacity, static_cast<unsigned long long>(st.resizes),
              static_cast<unsigned long long>(st.tables_freed));
  std::printf("segment                 %.1f MiB (%.1f MiB allocated)\n",
              static_cast<double>(st.segment_bytes) / (1 << 20),
              static_cast<double>(st.allocated_bytes) / (1 << 20));
  std::printf(
      "killed writer's slot    freed (%zu by clear_stale_handles); handles in use %zu of %zu\n",
      cleared, st.handles_in_use, st.max_handles);
  std::printf("check                   %s\n", check.ok ? "all invariants hold" : "PROBLEMS");
  for (const auto& p : check.problems) std::printf("  problem: %s\n", p.c_str());
  std::printf("wall time               %.2f s\n", secs);

  // size() is kept exact across the kill (a pending record of the killed writer is applied
  // when its slot is freed); the walk and check() count the tables themselves.
  // The killed writer's slot is back: freed by clear_stale_handles(), or earlier by the
  // reclaimer, which frees dead owners' slots it meets (recovering their last write first).
  ok = ok && missing == 0 && sh->reader_errors.load() == 0 && check.ok && st.handles_in_use == 1 &&
       walked == check.live_entries && walked == st.size;
  if (keep.empty()) {
    shmap::Map::remove(name);
  } else {
    std::printf("map '%s' kept (remove it with 'shmap rm %s')\n", name.c_str(), name.c_str());
  }
  std::printf("\n%s\n", ok ? "DEMO OK" : "DEMO FAILED");
  return ok ? 0 : 1;
} catch (const shmap::Error& e) {
  std::fprintf(stderr, "shmap_demo: %s\n", e.what());
  return 1;
}
