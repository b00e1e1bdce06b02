// Dumps while other processes write: a weakly consistent dump never tears or duplicates an
// entry; a point-in-time dump holds writers (not readers) and a dumper that dies releases them.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <set>

#include "shmap/detail/map_impl.hpp"
#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

using namespace std::chrono_literals;

// value = key << 24 | generation: every value names the key it belongs to.
constexpr std::uint64_t enc(std::uint64_t k, std::uint64_t gen) { return k << 24 | gen; }

struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() { EXPECT_EQ(::pipe(fd), 0); }
  ~Pipe() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void signal() const {
    const char c = 1;
    EXPECT_EQ(::write(fd[1], &c, 1), 1);
  }
  /// True if a byte arrived within `timeout`.
  bool wait(std::chrono::milliseconds timeout) const {
    pollfd p{fd[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    char c;
    return ::read(fd[0], &c, 1) == 1;
  }
};

TEST(ConcurrentDump, EveryEntryIsOneTheKeyHeldAndNoneTwice) {
  constexpr std::uint64_t kStable = 20'000;  // keys 0..kStable-1: never erased
  constexpr std::uint64_t kChurn = 20'000;   // keys kStable..: inserted and erased repeatedly
  ScopedName name("conc");
  TempDir dir;
  Map m = Map::create(name, {.initial_capacity = 64});
  for (std::uint64_t k = 0; k < kStable; ++k) m.insert_or_assign(k, enc(k, 0));

  auto* stop = static_cast<std::atomic<int>*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (stop) std::atomic<int>(0);
  std::vector<pid_t> writers;
  // Stops and reaps the writers on every way out, a failed ASSERT included (they would run
  // for ever, and keep ctest waiting on their output).
  struct StopWriters {
    std::atomic<int>* stop;
    std::vector<pid_t>& writers;
    ~StopWriters() {
      stop->store(1);
      for (const pid_t p : writers) EXPECT_EQ(wait_child(p), 0);
      writers.clear();
      ::munmap(stop, 4096);
    }
  } stop_writers{stop, writers};
  for (int w = 0; w < 2; ++w) {
    writers.push_back(spawn([&, w] {
      Map mm = Map::open(name);
      for (std::uint64_t gen = 1; stop->load(std::memory_order_relaxed) == 0; ++gen) {
        for (std::uint64_t k = static_cast<std::uint64_t>(w); k < kStable; k += 2) {
          mm.insert_or_assign(k, enc(k, gen % (1 << 24)));
        }
        // Grow, then shrink: the dumps run across resizes and migrations.
        for (std::uint64_t k = kStable; k < kStable + kChurn; ++k) {
          if (gen % 2 == 1) {
            mm.insert_or_assign(k, enc(k, gen % (1 << 24)));
          } else {
            mm.erase(k);
          }
        }
      }
      return true;
    }));
  }
  for (int round = 0; round < 12; ++round) {
    std::string stem = "d";  // (not "d" + to_string: GCC 12 -O3 warns falsely, bug 105329)
    stem += std::to_string(round);
    const std::string file = dir.path(stem);
    m.dump(file, {.json = round % 4 == 3});
    if (round % 4 == 3) {
      ScopedName back("back");
      Map b = Map::load(file, back);
      const Content c = contents(b);
      for (std::uint64_t k = 0; k < kStable; ++k) ASSERT_TRUE(c.count(k)) << k;
      for (const auto& [k, v] : c) ASSERT_EQ(v >> 24, k);
      continue;
    }
    const Entries e = read_raw(file);
    std::set<std::uint64_t> seen;
    for (const auto& [k, v] : e) {
      ASSERT_TRUE(seen.insert(k).second) << "key " << k << " dumped twice (round " << round << ")";
      ASSERT_EQ(v >> 24, k) << "torn or foreign value for key " << k;
      ASSERT_LT(k, kStable + kChurn);
    }
    for (std::uint64_t k = 0; k < kStable; ++k) {
      ASSERT_TRUE(seen.count(k)) << "stable key " << k << " missing (round " << round << ")";
    }
  }
}

/// A dumper child that stops inside a point-in-time dump (writers held) until told to go on.
struct HeldDumper {
  Pipe holding, go;
  pid_t pid = -1;
  HeldDumper(const std::string& name, const std::string& file) {
    pid = spawn([&] {
      Map mm = Map::open(name);
      detail::set_snapshot_progress(
          [](void* ctx, const char* phase, std::uint64_t done, std::uint64_t) {
            auto* self = static_cast<HeldDumper*>(ctx);
            if (std::string(phase) == "dump" && done == 0) {
              self->holding.signal();
              self->go.wait(60'000ms);
            }
          },
          this);
      mm.dump(file, {.point_in_time = true});
      return true;
    });
  }
};

TEST(PointInTimeDump, WritersWaitReadersDoNotAndTheImageIsExact) {
  ScopedName name("pit");
  TempDir dir;
  Map m = Map::create(name);
  Content expected;
  for (std::uint64_t k = 0; k < 5000; ++k)
    m.insert_or_assign(k, enc(k, 1)), expected[k] = enc(k, 1);

  Pipe start, wrote;
  const pid_t writer = spawn([&] {
    Map mm = Map::open(name);
    if (!start.wait(60'000ms)) return false;
    mm.insert_or_assign(999'999, 1);
    mm.insert_or_assign(7, 7);
    wrote.signal();
    return true;
  });
  HeldDumper dumper(name, dir.path("pit.shmap"));
  ASSERT_TRUE(dumper.holding.wait(30'000ms)) << "the dumper never started";
  start.signal();
  EXPECT_FALSE(wrote.wait(500ms)) << "a writer ran while a point-in-time dump held writers";
  // Readers never wait.
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t k = 0; k < 1000; ++k) ASSERT_EQ(m.find(k), enc(k, 1));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  dumper.go.signal();
  EXPECT_EQ(wait_child(dumper.pid), 0);
  EXPECT_TRUE(wrote.wait(30'000ms)) << "the writer did not resume after the dump";
  EXPECT_EQ(wait_child(writer), 0);
  const Entries e = read_raw(dir.path("pit.shmap"));
  EXPECT_TRUE(Content(e.begin(), e.end()) == expected) << "the image is not the held state";
  EXPECT_EQ(e.size(), expected.size());
  EXPECT_EQ(m.find(999'999), 1u);
}

TEST(PointInTimeDump, AKilledDumperDoesNotLeaveWritersBlocked) {
  ScopedName name("pitkill");
  TempDir dir;
  Map m = Map::create(name);
  for (std::uint64_t k = 0; k < 1000; ++k) m.insert_or_assign(k, k);
  Pipe start, wrote;
  const pid_t writer = spawn([&] {
    Map mm = Map::open(name);
    if (!start.wait(60'000ms)) return false;
    mm.insert_or_assign(123'456, 1);
    wrote.signal();
    return true;
  });
  HeldDumper dumper(name, dir.path("killed.shmap"));
  ASSERT_TRUE(dumper.holding.wait(30'000ms));
  start.signal();
  EXPECT_FALSE(wrote.wait(300ms)) << "writers were not held";
  ::kill(dumper.pid, SIGKILL);
  EXPECT_EQ(wait_child(dumper.pid), 128 + SIGKILL);
  EXPECT_TRUE(wrote.wait(30'000ms)) << "writers stayed blocked after the dumper died";
  EXPECT_EQ(wait_child(writer), 0);
  // This process writes too, and the final name never appeared.
  m.insert_or_assign(5, 55);
  EXPECT_EQ(m.find(5), 55u);
  struct stat st {};
  EXPECT_NE(::stat(dir.path("killed.shmap").c_str(), &st), 0);
  // A new point-in-time dump works after the dead one.
  m.dump(dir.path("after.shmap"), {.point_in_time = true});
  EXPECT_EQ(read_raw(dir.path("after.shmap")).size(), 1001u);
}

// Writers wait for the in-memory copy only, never for the file: a dumper stopped while it
// writes the file (after its copy) holds nobody back, and the image is still the held state.
TEST(PointInTimeDump, WritersAreNotHeldWhileTheFileIsWritten) {
  ScopedName name("pitio");
  TempDir dir;
  Map m = Map::create(name);
  Content expected;
  for (std::uint64_t k = 0; k < 20000; ++k)
    m.insert_or_assign(k, enc(k, 1)), expected[k] = enc(k, 1);
  Pipe writing, go;
  const pid_t dumper = spawn([&] {
    Map mm = Map::open(name);
    struct Ctx {
      Pipe* writing;
      Pipe* go;
      bool once = false;
    } ctx{&writing, &go};
    detail::set_snapshot_progress(
        [](void* c, const char* phase, std::uint64_t done, std::uint64_t) {
          auto* x = static_cast<Ctx*>(c);
          if (std::string(phase) == "dump" && done > 0 && !x->once) {  // a chunk is written
            x->once = true;
            x->writing->signal();
            x->go->wait(60'000ms);
          }
        },
        &ctx);
    mm.dump(dir.path("io.shmap"), {.point_in_time = true});
    return true;
  });
  ASSERT_TRUE(writing.wait(30'000ms)) << "the dumper never wrote a chunk";
  // The dumper sits in its file writing: a write here must not wait for it.
  std::atomic<bool> done{false};
  std::thread w([&] {
    m.insert_or_assign(7, 7);
    done = true;
  });
  // Polled against a deadline (the suite's rule): held, the writer would wait for `go`.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  const bool wrote = done.load();
  go.signal();
  w.join();
  EXPECT_TRUE(wrote) << "a writer was held while the dumper wrote its file";
  EXPECT_EQ(wait_child(dumper), 0);
  const Entries e = read_raw(dir.path("io.shmap"));
  EXPECT_TRUE(Content(e.begin(), e.end()) == expected) << "the image is not the held state";
}

// A reader parked inside for_each (pinned, for as long as it likes) does not hold up a
// point-in-time dump, nor, through it, any writer: the hold waits for writes only.
TEST(PointInTimeDump, AReaderInsideForEachDoesNotBlockTheDump) {
  ScopedName name("pitreader");
  TempDir dir;
  Map m = Map::create(name);
  for (std::uint64_t k = 0; k < 1000; ++k) m.insert_or_assign(k, k);
  Pipe inside, go;
  const pid_t reader = spawn([&] {
    Map mm = Map::open(name);
    bool once = false;
    mm.for_each([&](std::uint64_t, std::uint64_t) {
      if (once) return;
      once = true;
      inside.signal();
      go.wait(60'000ms);
    });
    return true;
  });
  ASSERT_TRUE(inside.wait(30'000ms));
  EXPECT_NO_THROW(m.dump(dir.path("r.shmap"), {.point_in_time = true}));
  m.insert_or_assign(5000, 1);
  go.signal();
  EXPECT_EQ(wait_child(reader), 0);
  EXPECT_EQ(read_raw(dir.path("r.shmap")).size(), 1000u);
}

// A point-in-time holder stopped (SIGSTOP) while it holds writers releases them when its
// lease runs out: kWriterHoldLeaseNs (2 s) plus 1 s per 256 MiB of tables, not 60 s.
TEST(PointInTimeDump, AStoppedHolderReleasesWritersWhenItsLeaseEnds) {
  ScopedName name("pitstop");
  Map m = Map::create(name);
  m.insert(1, 1);
  Pipe holding;
  const pid_t holder = spawn([&] {
    Map mm = Map::open(name);
    mm.impl().hold_writers();
    holding.signal();
    ::raise(SIGSTOP);
    return true;
  });
  ASSERT_TRUE(holding.wait(30'000ms));
  const std::uint64_t lease = m.impl().writer_hold_lease_ns(0);
  const auto t0 = std::chrono::steady_clock::now();
  m.insert_or_assign(1, 2);  // waits for the lease at most
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_LE(waited, std::chrono::nanoseconds(lease) + 5s) << "writers held past the lease";
  EXPECT_EQ(m.find(1), 2u);
  ::kill(holder, SIGKILL);
  wait_child(holder);
}

}  // namespace
}  // namespace shmap::test
