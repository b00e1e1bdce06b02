// A healthy map is never reported corrupt, and a damaged or hostile segment never takes a
// process down: each case below damages one field of a real segment the way a buggy or
// malicious attacher with write access could (through its own mapping of /dev/shm/NAME), then
// uses the map in a child process with a time limit. The child must end normally -- the
// operations succeed or throw shmap::Error -- never by a signal, never by hanging.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <vector>

#include "mp_util.hpp"
#include "shmap/detail/map_impl.hpp"

namespace shmap::test::mp {
namespace {

using detail::HandleSlot;
using detail::kPage;
using detail::SegmentHeader;
using detail::TableHeader;

class HostileTest : public MpTest {};

/// A read-write mapping of the whole object, as another attacher would have it.
class RawView {
 public:
  explicit RawView(const std::string& name) {
    fd_ = ::open(shm_path(name).c_str(), O_RDWR | O_CLOEXEC);
    struct stat st {};
    if (fd_ < 0 || ::fstat(fd_, &st) != 0) throw std::runtime_error("cannot open the object");
    size_ = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map the object");
    base_ = static_cast<char*>(p);
  }
  ~RawView() {
    ::munmap(base_, size_);
    ::close(fd_);
  }
  RawView(const RawView&) = delete;
  RawView& operator=(const RawView&) = delete;
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }
  TableHeader& table(std::uint64_t off) const {
    return *reinterpret_cast<TableHeader*>(base_ + off);
  }
  TableHeader& current() const {
    return table(header().current_table.load(std::memory_order_acquire));
  }
  HandleSlot& slot(std::size_t i) const {
    return reinterpret_cast<HandleSlot*>(base_ + header().slots_offset)[i];
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  char* base_ = nullptr;
  std::size_t size_ = 0;
};

/// Every operation of the API once; each may throw shmap::Error (a damaged segment), nothing
/// else may happen. Returns how many threw.
int exercise(Map& m) {
  int errors = 0;
  auto run = [&](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      ++errors;
      if (std::string(e.what()).find(m.name()) == std::string::npos) {
        std::fprintf(stderr, "message does not name the map: %s\n", e.what());
        ::_exit(5);
      }
    }
  };
  run([&] { (void)m.find(1); });
  run([&] {
    std::vector<std::uint64_t> keys(100);
    for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = i * 7;
    std::vector<std::optional<std::uint64_t>> out(keys.size());
    (void)m.find_many(keys, out);
  });
  run([&] {
    for (std::uint64_t k = 0; k < 2000; ++k) m.insert(k, k);
  });
  run([&] { (void)m.size(); });
  run([&] { (void)m.stats(); });
  run([&] { (void)m.check(); });
  run([&] { m.for_each([](std::uint64_t, std::uint64_t) {}); });
  run([&] {
    for (std::uint64_t k = 0; k < 2000; ++k) m.erase(k);
  });
  run([&] { (void)m.readers(); });
  run([&] { m.compact(); });
  return errors;
}

struct Damage {
  const char* what;
  std::function<void(RawView&)> apply;
};

/// For each damage: a fresh map (a few resizes behind it), a child that opens it, the damage
/// done by the parent through a raw view while the child is attached, then every operation in
/// the child, and in a second child that opens the damaged map afresh.
void expect_survived(const std::vector<Damage>& cases) {
  for (const auto& d : cases) {
    SCOPED_TRACE(d.what);
    ScopedName name("hostile");
    {
      Map m = Map::create(name, {.initial_capacity = 8, .max_handles = 8});
      for (std::uint64_t k = 0; k < 300; ++k) m.insert(k, k);
      for (std::uint64_t k = 0; k < 250; ++k) m.erase(k);
    }
    Gate gate;
    Shared<std::atomic<int>> attached;
    const pid_t early = fork_child([&]() -> bool {
      Map m = Map::open(name);
      (void)m.find(1);
      attached->store(1);
      CHILD_CHECK(gate.wait(), "gate");
      std::fprintf(stderr, "[ info     ] %s, attached before: %d of 10 operations threw\n", d.what,
                   exercise(m));
      return true;
    });
    ASSERT_GT(early, 0);
    ASSERT_TRUE(wait_until([&] { return attached->load() == 1; }, seconds(20 * kSlow)));
    {
      RawView raw(name);
      d.apply(raw);
    }
    gate.release();
    const auto r1 = wait_for(early, seconds(20 * kSlow));
    EXPECT_TRUE(r1.ok()) << d.what << ": the attached process " << r1.describe();
    const auto r2 = run_child(
        [&]() -> bool {
          try {
            Map m = Map::open(name);
            std::fprintf(stderr, "[ info     ] %s, opened after: %d of 10 operations threw\n",
                         d.what, exercise(m));
          } catch (const Error& e) {
            std::fprintf(stderr, "[ info     ] %s: open refused: %s\n", d.what, e.what());
          }
          return true;
        },
        seconds(20 * kSlow));
    EXPECT_TRUE(r2.ok()) << d.what << ": the opening process " << r2.describe();
  }
}

// ---- 1b: a healthy map is never corrupt ----------------------------------------------------

// open() reads two words another process changes when it grows the segment (the current table
// and the object size). The hook runs right after open's first read and makes another process
// grow the map past the end of the object, deterministically, each time.
TEST_F(HostileTest, OpenWhileAnotherProcessGrowsTheSegmentIsNeverCorrupt) {
  ScopedName name("open-grow");
  Map m = Map::create(name, {.initial_capacity = 8});
  struct Sync {
    std::atomic<int> want{0};  // grow requests
    std::atomic<int> done{0};  // growths finished
    std::atomic<int> stop{0};
  };
  Shared<Sync> sync;
  const pid_t grower = fork_child([&]() -> bool {
    Map g = Map::open(name);
    std::uint64_t next = 0;
    for (int served = 0; sync->stop.load() == 0;) {
      if (sync->want.load() == served) {
        std::this_thread::yield();
        continue;
      }
      // Double the live count: the successor table is twice as large, no freed extent fits
      // it, so it is carved past the end of the object -- file_bytes and current_table move.
      const std::uint64_t target = std::max<std::uint64_t>(64, 2 * g.size());
      const std::uint64_t before = g.stats().segment_bytes;
      while (g.size() < target) g.insert(next, next), ++next;
      g.compact();  // migration finished: the new table is current
      CHILD_CHECK(g.stats().segment_bytes > before, "the segment did not grow");
      sync->done.store(++served);
    }
    return true;
  });
  ASSERT_GT(grower, 0);
  constexpr int kOpens = 12;
  const auto r = run_child(
      [&]() -> bool {
        static Sync* s;
        s = sync.get();
        detail::MapImpl::open_after_first_read_for_test = [] {
          const int n = s->want.load() + 1;
          s->want.store(n);
          while (s->done.load() < n) std::this_thread::yield();
        };
        for (int i = 0; i < kOpens; ++i) {
          try {
            Map o = Map::open(name);
            CHILD_CHECK(o.size() > 0 || i == 0, "open %d sees an empty map", i);
          } catch (const Error& e) {
            CHILD_CHECK(false, "open %d of a healthy map failed: %s", i, e.what());
          }
        }
        return true;
      },
      seconds(60 * kSlow));
  sync->stop.store(1);
  EXPECT_TRUE(r.ok()) << "the opener " << r.describe();
  EXPECT_TRUE(wait_for(grower, seconds(20 * kSlow)).ok());
  EXPECT_GE(sync->done.load(), kOpens) << "every open raced a growth";
  EXPECT_TRUE(m.check().ok);
}

// open_or_create racing remove (and creates) from several processes: every call ends on a
// usable map; "corrupt" or any other error is a failure. Bounded run (a few seconds).
TEST_F(HostileTest, OpenOrCreateRacingRemoveIsNeverCorrupt) {
  ScopedName name("ooc-remove");
  constexpr int kProcs = 4;
  const int calls = kSanitized ? 300 : 2000;
  std::vector<pid_t> pids;
  Gate gate;
  for (int c = 0; c < kProcs; ++c) {
    pids.push_back(fork_child([&, c]() -> bool {
      CHILD_CHECK(gate.wait(), "gate");
      for (int i = 0; i < calls; ++i) {
        try {
          Map m = Map::open_or_create(name, {.initial_capacity = 8});
          for (std::uint64_t k = 0; k < 40; ++k) m.insert_or_assign(k + 100 * c, k);
          CHILD_CHECK(m.find(100 * c + 39) == 39u, "own key missing");
          if (i % 3 == c % 3) Map::remove(name);
        } catch (const Error& e) {
          CHILD_CHECK(false, "call %d: %s: %s", i, std::string(errc_name(e.code())).c_str(),
                      e.what());
        }
      }
      return true;
    }));
    ASSERT_GT(pids.back(), 0);
  }
  gate.release();
  for (const pid_t p : pids) {
    const auto r = wait_for(p, seconds(120 * kSlow));
    EXPECT_TRUE(r.ok()) << "process " << p << " " << r.describe();
  }
}

// ---- 4: bad or hostile segments ------------------------------------------------------------

// An object larger than the reservation (max_bytes) must not be mapped past it: MAP_FIXED there
// replaces the process's own mappings (segfault inside open).
TEST_F(HostileTest, ObjectLargerThanMaxBytesIsNotMappedPastTheReservation) {
  ScopedName name("too-big");
  { Map m = Map::create(name, {.initial_capacity = 8, .max_bytes = std::size_t{1} << 20}); }
  {
    RawView raw(name);
    ASSERT_EQ(::ftruncate(raw.fd(), std::int64_t{64} << 20), 0);
  }
  const auto r = run_child(
      [&]() -> bool {
        // Fill the address space after fresh mappings, so a mapping past the reservation
        // lands on something of ours.
        for (int round = 0; round < 3; ++round) {
          try {
            Map m = Map::open(name);
            exercise(m);
          } catch (const Error& e) {
            CHILD_CHECK(e.code() == Errc::corrupt, "%s", e.what());
          }
        }
        return true;
      },
      seconds(20 * kSlow));
  EXPECT_TRUE(r.ok()) << "the opener " << r.describe();
}

TEST_F(HostileTest, DamagedTableHeadersAreCorruptNeverACrash) {
  std::vector<Damage> cases = {
      {"bits+5", [](RawView& r) { r.current().bits += 5; }},
      {"bits=0", [](RawView& r) { r.current().bits = 0; }},
      {"capacity=0", [](RawView& r) { r.current().capacity = 0; }},
      {"capacity=2^50", [](RawView& r) { r.current().capacity = std::uint64_t{1} << 50; }},
      {"capacity*4",
       [](RawView& r) {
         r.current().capacity *= 4;
         r.current().bits += 2;
       }},
      {"extent=0", [](RawView& r) { r.current().extent_bytes = 0; }},
      {"older=header", [](RawView& r) { r.current().older.store(0x40); }},
      {"older=far", [](RawView& r) { r.current().older.store(std::uint64_t{1} << 45); }},
      {"current=slots", [](RawView& r) { r.header().current_table.store(kPage); }},
      {"current=misaligned", [](RawView& r) { r.header().current_table.fetch_add(8); }},
      {"current=past-max-bytes",
       [](RawView& r) { r.header().current_table.store(std::uint64_t{1} << 45); }},
  };
  expect_survived(cases);
}

TEST_F(HostileTest, DamagedSegmentFieldsAreCorruptNeverACrash) {
  std::vector<Damage> cases = {
      // Raised max_handles: size() and every slot walk would run off the slots into tables.
      {"max_handles=4095", [](RawView& r) { r.header().max_handles = 4095; }},
      // A free-list entry of 8 pages at offset 0: handed out, the header page becomes a table.
      {"free-list=header",
       [](RawView& r) {
         for (auto& e : r.header().free_list) e.store(0);
         r.header().free_list[0].store(8);
       }},
      {"free-list=far",
       [](RawView& r) { r.header().free_list[0].store((std::uint64_t{1} << 40) << 24 | 8); }},
      {"arena_top=0", [](RawView& r) { r.header().arena_top.store(0); }},
      {"arena_top=huge", [](RawView& r) { r.header().arena_top.store(~std::uint64_t{0} << 12); }},
      {"file_bytes=huge", [](RawView& r) { r.header().file_bytes.store(~std::uint64_t{0}); }},
      // A size count near 2^62: the successor sizing loop doubled past 2^63 into 0, forever.
      {"size_delta=2^62",
       [](RawView& r) { r.slot(0).lanes[0].size_delta = std::uint64_t{1} << 62; }},
      // A count of 2^27: the successor would be an 8 GiB table (and every walk of it slow).
      {"size_delta=2^27",
       [](RawView& r) { r.slot(0).lanes[6].size_delta = std::uint64_t{1} << 27; }},
      {"retired_head=bad", [](RawView& r) { r.header().retired_head.store(kPage + 8); }},
      {"retired_head=header", [](RawView& r) { r.header().retired_head.store(0x40); }},
  };
  // A dead owner whose lane records a pending write at offset 2^64-1 (off + 32 wraps): open
  // recovers dead slots before anything else.
  const pid_t dead = fork_child([] { return true; });
  ASSERT_GT(dead, 0);
  ASSERT_TRUE(wait_for(dead, seconds(10)).ok());
  for (const std::uint64_t off : {~std::uint64_t{0}, std::uint64_t{64}, std::uint64_t{1} << 44}) {
    cases.push_back({off == 64                  ? "pending=header"
                     : off == ~std::uint64_t{0} ? "pending=~0"
                                                : "pending=far",
                     [dead, off](RawView& r) {
                       HandleSlot& s = r.slot(7);
                       s.owner.owner.store(static_cast<std::uint64_t>(dead) | (1ULL << 32));
                       s.owner.start_time.store(0);
                       s.lanes[0].record_gen.store(2);
                       s.lanes[0].pending.store(off);
                     }});
  }
  expect_survived(cases);
}

// A free-list entry pointing at the header page must never be handed out: the map keeps
// working and its header stays intact.
TEST_F(HostileTest, FreeListEntryOutsideTheArenaIsNeverHandedOut) {
  ScopedName name("free-list");
  const auto r = run_child(
      [&]() -> bool {
        Map m = Map::create(name, {.initial_capacity = 8});
        {
          RawView raw(name);
          for (auto& e : raw.header().free_list) e.store(0);
          raw.header().free_list[0].store(8);  // offset 0, 8 pages: fits tables of 4-8 pages
        }
        for (std::uint64_t k = 0; k < 5000; ++k) CHILD_CHECK(m.insert(k, k + 1), "insert");
        for (std::uint64_t k = 0; k < 5000; ++k) CHILD_CHECK(m.find(k) == k + 1, "find %d", int(k));
        const auto rep = m.check();
        CHILD_CHECK(rep.ok, "check: %s", rep.problems.empty() ? "" : rep.problems[0].c_str());
        Map o = Map::open(name);  // the header is intact
        CHILD_CHECK(o.size() == 5000, "size %zu", o.size());
        return true;
      },
      seconds(30 * kSlow));
  EXPECT_TRUE(r.ok()) << r.describe();
}

// ---- files in /dev/shm that are not segments -------------------------------------------------

// Zero-filled and junk objects, and a header that was never finished: corrupt at once (no wait
// for a creator: a segment is published only when complete).
TEST_F(HostileTest, UnfinishedOrZeroFilledObjectsAreCorruptAtOnce) {
  ScopedName name("zeros");
  for (const std::size_t bytes : {std::size_t{0}, std::size_t{100}, std::size_t{1} << 20}) {
    SCOPED_TRACE(bytes);
    const int fd = ::open(shm_path(name).c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ::close(fd);
    const auto t0 = Clock::now();
    const auto r = run_child(
        [&]() -> bool {
          for (int which = 0; which < 2; ++which) {
            try {
              if (which == 0) {
                Map::open(name);
              } else {
                Map::open_or_create(name);
              }
              CHILD_CHECK(false, "opened a zero-filled object");
            } catch (const Error& e) {
              CHILD_CHECK(e.code() == Errc::corrupt, "%s", e.what());
            }
          }
          return true;
        },
        seconds(20 * kSlow));
    EXPECT_TRUE(r.ok()) << r.describe();
    EXPECT_LT(Clock::now() - t0, seconds(2 * kSlow)) << "refused only after waiting";
    ::unlink(shm_path(name).c_str());
  }
}

// A creator killed mid-create leaves only a temporary object, which the next create of the
// name removes and which lists never show.
TEST_F(HostileTest, OrphanedTemporarySegmentsAreIgnoredAndCleaned) {
  ScopedName name("orphan");
  const pid_t dead = fork_child([] { return true; });
  ASSERT_GT(dead, 0);
  ASSERT_TRUE(wait_for(dead, seconds(10)).ok());
  const std::string orphan =
      "/dev/shm/.shmap-new-" + name.str() + "-" + std::to_string(dead) + "-0badf00d";
  const std::string live =
      "/dev/shm/.shmap-new-" + name.str() + "-" + std::to_string(::getpid()) + "-0badf00d";
  for (const auto& p : {orphan, live}) {
    const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ::close(fd);
  }
  expect_error([&] { Map::open(name); }, Errc::not_found, "open of a name with only an orphan");
  for (const auto& n : Map::list()) EXPECT_NE(n.rfind(".shmap-new-", 0), 0u) << n;
  { Map m = Map::create(name, {.initial_capacity = 8}); }
  struct stat st {};
  EXPECT_NE(::stat(orphan.c_str(), &st), 0) << "the orphan of a dead creator was not removed";
  EXPECT_EQ(::stat(live.c_str(), &st), 0) << "the temporary of a live creator was removed";
  ::unlink(live.c_str());
  expect_error([&] { Map::create(".shmap-new-x-1-0"); }, Errc::invalid_argument, "a reserved name");
}

// Map::list() and open() must not block on a FIFO (or follow a symlink) in /dev/shm.
TEST_F(HostileTest, FifoInDevShmDoesNotBlockListOrOpen) {
  ScopedName fifo("fifo");
  ASSERT_EQ(::mkfifo(shm_path(fifo).c_str(), 0600), 0) << std::strerror(errno);
  ScopedName real("listed");
  Map m = Map::create(real, {.initial_capacity = 8});
  const auto r = run_child(
      [&]() -> bool {
        const auto names = Map::list();
        CHILD_CHECK(std::find(names.begin(), names.end(), real.str()) != names.end(),
                    "the real map is not listed");
        CHILD_CHECK(std::find(names.begin(), names.end(), fifo.str()) == names.end(),
                    "the FIFO is listed");
        try {
          Map::open(fifo);
          CHILD_CHECK(false, "opened a FIFO");
        } catch (const Error& e) {
          CHILD_CHECK(e.code() == Errc::corrupt, "%s", e.what());
        }
        return true;
      },
      seconds(10 * kSlow));
  EXPECT_TRUE(r.ok()) << "list/open with a FIFO in /dev/shm: " << r.describe();
  ::unlink(shm_path(fifo).c_str());
}

}  // namespace
}  // namespace shmap::test::mp
