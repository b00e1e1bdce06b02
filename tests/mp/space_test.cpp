// Space: a full /dev/shm (a small private tmpfs) or Options::max_bytes is an out_of_space
// error, never a SIGBUS, and the map keeps answering; memory of freed tables goes back to the
// system.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <array>
#include <vector>

#include "mp_util.hpp"
#include "shmap/string_map.hpp"

namespace shmap::test::mp {
namespace {

constexpr int kSkipCode = 77;

class SpaceTest : public MpTest {};

std::uint64_t space_value(std::uint64_t k) { return k * 5 + 3; }

/// Inserts keys from *next on until out_of_space. Any other error, or a thrown insert that
/// is not out_of_space, makes it return false.
bool fill_until_out_of_space(Map& m, std::uint64_t* next, std::uint64_t limit) {
  for (; *next < limit; ++*next) {
    try {
      if (!m.insert(*next, space_value(*next))) {
        std::fprintf(stderr, "insert(%llu) says present\n", (unsigned long long)*next);
        return false;
      }
    } catch (const Error& e) {
      CHILD_CHECK(e.code() == Errc::out_of_space, "insert %llu failed with %s: %s",
                  (unsigned long long)*next, std::string(errc_name(e.code())).c_str(), e.what());
      CHILD_CHECK(std::string(e.what()).find(m.name()) != std::string::npos,
                  "message does not name the map: %s", e.what());
      return true;
    }
  }
  std::fprintf(stderr, "never ran out of space after %llu keys\n", (unsigned long long)limit);
  return false;
}

/// The first n keys are there with their values; size() agrees.
bool check_keys(const Map& m, std::uint64_t from, std::uint64_t to, std::uint64_t size) {
  for (std::uint64_t k = from; k < to; ++k) {
    const auto v = m.find(k);
    CHILD_CHECK(v == space_value(k), "key %llu %s after out_of_space", (unsigned long long)k,
                v ? "has a wrong value" : "is missing");
  }
  CHILD_CHECK(m.size() == size, "size %zu, want %llu", m.size(), (unsigned long long)size);
  return true;
}

/// Fills the file system of `path` with a file until it is full (posix_fallocate reserves
/// real pages). Returns the bytes taken.
std::uint64_t fill_fs(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return 0;
  std::uint64_t size = 0;
  for (std::uint64_t step = 1 << 20; step >= 4096; step /= 2) {
    while (::posix_fallocate(fd, static_cast<off_t>(size), static_cast<off_t>(step)) == 0) {
      size += step;
    }
  }
  ::close(fd);
  return size;
}

/// Runs body in a child whose /dev/shm is a private tmpfs of `size` (its own mount namespace),
/// waiting at most `timeout`. Where the machine does not allow that, *skipped says why.
ChildResult in_private_shm(const char* size, std::string* skipped,
                           const std::function<bool()>& body, milliseconds timeout,
                           const char* more_options = "") {
  Shared<std::array<char, 512>> reason;
  const ChildResult r = run_child(
      [&]() -> bool {
        auto skip = [&](const char* what) {
          std::snprintf(reason->data(), reason->size(), "%s: %s", what, std::strerror(errno));
          ::_exit(kSkipCode);
        };
        if (::unshare(CLONE_NEWNS) != 0) skip("unshare(CLONE_NEWNS) not permitted");
        if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
          skip("cannot make mounts private");
        }
        const std::string options = std::string("size=") + size + more_options;
        if (::mount("tmpfs", "/dev/shm", "tmpfs", 0, options.c_str()) != 0) {
          skip("cannot mount a tmpfs on /dev/shm");
        }
        return body();
      },
      timeout);
  if (r.exited && r.code == kSkipCode) *skipped = reason->data();
  return r;
}

// Item 9: /dev/shm is a private 8 MiB tmpfs in a child's own mount namespace.
TEST_F(SpaceTest, FullDevShmIsOutOfSpaceNeverSigbus) {
  std::string skipped;
  const auto r = in_private_shm(
      "8m", &skipped,
      [&]() -> bool {
        const std::string name = "shmap-test-full";
        Map m = Map::create(name, {.initial_capacity = 8});
        std::uint64_t next = 0;
        if (!fill_until_out_of_space(m, &next, 100'000'000)) return false;
        const std::uint64_t n = next;
        std::fprintf(stderr, "[ info     ] %llu keys fit in 8 MiB; segment %zu bytes\n",
                     (unsigned long long)n, m.stats().segment_bytes);
        CHILD_CHECK(n > 10000, "only %llu keys fit in 8 MiB", (unsigned long long)n);
        if (!check_keys(m, 0, n, n)) return false;
        // More inserts keep failing cleanly (or fit), and the map stays consistent.
        std::uint64_t extra = n;
        for (int i = 0; i < 100; ++i) {
          try {
            CHILD_CHECK(m.insert(extra, space_value(extra)), "insert %llu",
                        (unsigned long long)extra);
            ++extra;
          } catch (const Error& e) {
            CHILD_CHECK(e.code() == Errc::out_of_space, "retry %d: %s", i, e.what());
          }
        }
        if (!check_keys(m, 0, extra, extra)) return false;
        // Erasing must work on a full file system (a shrink that cannot get space is skipped).
        for (std::uint64_t k = n / 2; k < extra; ++k) {
          try {
            CHILD_CHECK(m.erase(k), "erase %llu", (unsigned long long)k);
          } catch (const Error& e) {
            CHILD_CHECK(false, "erase %llu threw on a full /dev/shm: %s", (unsigned long long)k,
                        e.what());
          }
        }
        if (!check_keys(m, 0, n / 2, n / 2)) return false;
        m.compact();
        // Freed extents went back to tmpfs (hole punch). Take that space with another file,
        // then grow again: reusing a punched extent must reserve it anew (else: SIGBUS).
        const std::uint64_t taken = fill_fs("/dev/shm/filler");
        std::fprintf(stderr, "[ info     ] filler took %llu bytes\n", (unsigned long long)taken);
        std::uint64_t k = n;
        if (!fill_until_out_of_space(m, &k, 100'000'000)) return false;
        if (!check_keys(m, 0, n / 2, n / 2 + (k - n))) return false;
        if (!check_keys(m, n, k, n / 2 + (k - n))) return false;
        const auto report = m.check();
        CHILD_CHECK(report.ok, "check: %s",
                    report.problems.empty() ? "" : report.problems.front().c_str());
        Map::remove(name);
        return true;
      },
      seconds(120 * kSlow));
  if (!skipped.empty()) GTEST_SKIP() << skipped;
  EXPECT_TRUE(r.ok()) << "the child " << r.describe()
                      << (r.signal == SIGBUS ? ": SIGBUS on a full /dev/shm" : "");
}

// Item 5 of issue 6: extents reused from the free list were hole-punched when freed. Grow a
// map, erase nearly everything (it shrinks; the big extents go to the free list, their pages
// to the system), fill the file system to the last page, then grow again: the growth reuses
// those punched extents, and each must be reserved anew -- out_of_space, never a SIGBUS on the
// first store into a table whose pages are not there.
TEST_F(SpaceTest, ReusedExtentsAreReservedAgainOnAFullDevShm) {
  std::string skipped;
  const auto r = in_private_shm(
      "32m", &skipped,
      [&]() -> bool {
        const std::string name = "shmap-test-reuse";
        Map m = Map::create(name, {.initial_capacity = 8});
        constexpr std::uint64_t kKeys = 150'000;  // a 16 MiB table at the end
        for (std::uint64_t k = 0; k < kKeys; ++k) {
          CHILD_CHECK(m.insert(k, space_value(k)), "insert %llu", (unsigned long long)k);
        }
        for (std::uint64_t k = 10; k < kKeys; ++k) CHILD_CHECK(m.erase(k), "erase");
        for (int i = 0; i < 2000; ++i) m.insert_or_assign(i % 10, space_value(i % 10));
        m.compact();
        const auto st = m.stats();
        std::fprintf(stderr, "[ info     ] after shrinking: capacity %zu, %zu bytes resident\n",
                     st.capacity, st.allocated_bytes);
        CHILD_CHECK(st.capacity < 4096, "the map did not shrink (capacity %zu)", st.capacity);
        const std::uint64_t taken = fill_fs("/dev/shm/filler");
        std::fprintf(stderr, "[ info     ] filler took %llu bytes\n", (unsigned long long)taken);
        std::uint64_t k = 10;
        if (!fill_until_out_of_space(m, &k, kKeys)) return false;
        std::fprintf(stderr, "[ info     ] %llu keys back in before out_of_space\n",
                     (unsigned long long)k);
        if (!check_keys(m, 0, k, k)) return false;
        // Space returns: the extents given back to the free list are usable again.
        ::unlink("/dev/shm/filler");
        if (!fill_until_out_of_space(m, &k, 100'000'000)) return false;
        if (!check_keys(m, 0, k, k)) return false;
        Map::remove(name);
        return true;
      },
      seconds(120 * kSlow));
  if (!skipped.empty()) GTEST_SKIP() << skipped;
  EXPECT_TRUE(r.ok()) << "the child " << r.describe()
                      << (r.signal == SIGBUS ? ": SIGBUS writing into a reused extent" : "");
}

// A freed large record gave its pages back to the system (records.cpp). Free 16 MiB of them,
// fill the file system to the last page, then write large values again: reusing a freed large
// record must reserve its pages anew -- out_of_space with nothing written, never a SIGBUS in
// the copy of the value -- and works again once space returns.
TEST_F(SpaceTest, FreedLargeRecordsAreReservedAgainOnAFullDevShm) {
  std::string skipped;
  const auto r = in_private_shm(
      "32m", &skipped,
      [&]() -> bool {
        const std::string name = "shmap-test-large";
        StringMap m = StringMap::create(name, {.initial_capacity = 8});
        auto value = [](int i) { return std::string((1u << 20) + i, static_cast<char>('a' + i)); };
        for (int i = 0; i < 16; ++i) {
          CHILD_CHECK(m.insert("v" + std::to_string(i), value(i)), "insert %d", i);
        }
        for (int i = 0; i < 16; ++i) CHILD_CHECK(m.erase("v" + std::to_string(i)), "erase %d", i);
        m.compact();
        CHILD_CHECK(m.insert("small", "s"), "insert small");
        const std::uint64_t taken = fill_fs("/dev/shm/filler");
        std::fprintf(stderr, "[ info     ] filler took %llu bytes\n", (unsigned long long)taken);
        int put = 0;
        for (;; ++put) {
          try {
            CHILD_CHECK(m.insert("w" + std::to_string(put), value(put)), "insert w%d", put);
          } catch (const Error& e) {
            CHILD_CHECK(e.code() == Errc::out_of_space, "insert w%d: %s", put, e.what());
            break;
          }
          CHILD_CHECK(put < 16, "16 MiB of values fit in a full /dev/shm");
        }
        CHILD_CHECK(!m.contains("w" + std::to_string(put)), "the failed write left its key");
        for (int i = 0; i < put; ++i) {
          CHILD_CHECK(m.find("w" + std::to_string(i)) == value(i), "w%d is wrong", i);
        }
        ::unlink("/dev/shm/filler");
        for (int i = put; i < 16; ++i) {
          CHILD_CHECK(m.insert("w" + std::to_string(i), value(i)), "insert w%d", i);
        }
        for (int i = 0; i < 16; ++i) {
          CHILD_CHECK(m.find("w" + std::to_string(i)) == value(i), "w%d is wrong", i);
        }
        RecordStats rs;
        const auto report = m.check(&rs);
        CHILD_CHECK(report.ok && rs.leaked == 0, "check: %s",
                    report.problems.empty() ? "" : report.problems.front().c_str());
        StringMap::remove(name);
        return true;
      },
      seconds(120 * kSlow));
  if (!skipped.empty()) GTEST_SKIP() << skipped;
  EXPECT_TRUE(r.ok()) << "the child " << r.describe()
                      << (r.signal == SIGBUS ? ": SIGBUS writing into a reused record" : "");
}

TEST_F(SpaceTest, MaxBytesIsOutOfSpace) {
  ScopedName name("maxbytes");
  const std::size_t max_bytes = std::size_t{2} << 20;
  const auto r = run_child(
      [&]() -> bool {
        Map m = Map::create(name, {.initial_capacity = 8, .max_bytes = max_bytes});
        std::uint64_t next = 0;
        if (!fill_until_out_of_space(m, &next, 100'000'000)) return false;
        const std::uint64_t n = next;
        CHILD_CHECK(n > 1000, "only %llu keys fit in %zu bytes", (unsigned long long)n, max_bytes);
        const auto st = m.stats();
        CHILD_CHECK(st.segment_bytes <= max_bytes, "segment %zu bytes > max_bytes %zu",
                    st.segment_bytes, max_bytes);
        CHILD_CHECK(st.options.max_bytes == max_bytes, "options.max_bytes %zu",
                    st.options.max_bytes);
        if (!check_keys(m, 0, n, n)) return false;
        // Another process is bound by the same limit.
        Map o = Map::open(name);
        std::uint64_t k = n;
        if (!fill_until_out_of_space(o, &k, n + 100'000'000)) return false;
        CHILD_CHECK(o.stats().segment_bytes <= max_bytes, "second handle passed max_bytes");
        for (std::uint64_t e = 0; e < 100; ++e)
          CHILD_CHECK(o.erase(e), "erase %llu", (unsigned long long)e);
        return check_keys(m, 100, k, k - 100);
      },
      seconds(60 * kSlow));
  EXPECT_TRUE(r.ok()) << "the child " << r.describe();

  ScopedName tiny("maxbytes-tiny");
  try {
    Map::create(tiny, {.initial_capacity = 8, .max_bytes = 4096});
    ADD_FAILURE() << "a map cannot fit in 4096 bytes";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == Errc::out_of_space || e.code() == Errc::invalid_argument)
        << errc_name(e.code()) << ": " << e.what();
  }
}

// Item 10: freed tables give their memory back: allocated_bytes (st_blocks) falls well below
// its peak once nearly every key is erased. An idle attached process must not prevent it.
TEST_F(SpaceTest, MemoryGoesBackAfterErasing) {
  ScopedName name("memback");
  Map m = Map::create(name, {.initial_capacity = 8});
  Gate gate;
  Shared<std::atomic<int>> attached;
  const pid_t idle = fork_child([&]() -> bool {
    Map c = Map::open(name);
    attached->store(1);
    CHILD_CHECK(gate.wait(), "gate");
    return c.size() == 10;
  });
  ASSERT_GT(idle, 0);
  ASSERT_TRUE(wait_until([&] { return attached->load() == 1; }, seconds(20 * kSlow)));

  const std::uint64_t n = 1'000'000 / kScale;
  std::size_t peak = 0;
  std::size_t segment_first = 0;
  for (int cycle = 0; cycle < 2; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    for (std::uint64_t k = cycle == 0 ? 0 : 10; k < n; ++k) {  // keys 0-9 stay
      ASSERT_TRUE(m.insert(k, k));
      if (k % 65536 == 0) peak = std::max(peak, m.stats().allocated_bytes);
    }
    const auto full = m.stats();
    peak = std::max(peak, full.allocated_bytes);
    EXPECT_GT(full.allocated_bytes, n * 16) << "the table of " << n << " keys";
    for (std::uint64_t k = 10; k < n; ++k) ASSERT_TRUE(m.erase(k));
    for (int i = 0; i < 1000; ++i) m.insert_or_assign(i % 10, i);
    m.compact();
    const auto after = m.stats();
    std::fprintf(stderr,
                 "[ info     ] peak %zu bytes, after erase %zu bytes, segment %zu, capacity %zu\n",
                 peak, after.allocated_bytes, after.segment_bytes, after.capacity);
    EXPECT_EQ(after.size, 10u);
    EXPECT_EQ(after.retired_pending, 0u);
    EXPECT_LT(after.allocated_bytes * 8, peak) << "freed tables still occupy memory";
    EXPECT_LT(after.capacity, 1024u) << "the table shrank";
    if (cycle == 0) {
      segment_first = after.segment_bytes;
    } else {
      // The second growth reuses the freed extents instead of only extending the file.
      EXPECT_LE(after.segment_bytes, segment_first * 2) << "freed extents are not reused";
    }
  }
  gate.release();
  const auto r = wait_for(idle, seconds(20 * kSlow));
  EXPECT_TRUE(r.ok()) << "idle child " << r.describe();
}

/// The kB of this process's mappings of /dev/shm/NAME that are mapped by huge (PMD) page-table
/// entries, summed over /proc/self/smaps ("ShmemPmdMapped", or "FilePmdMapped"); -1 if no
/// mapping of it was found. Mappings are matched by inode: the path smaps shows is the name
/// the segment was made under (a temporary one, then linked to NAME).
long huge_mapped_kb(const std::string& name) {
  struct stat st {};
  if (::stat(("/dev/shm/" + name).c_str(), &st) != 0) return -1;
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return -1;
  char line[512];
  bool in_it = false, found = false;
  long kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long lo = 0, hi = 0, offset = 0, inode = 0;
    char perms[8], dev[16];
    if (std::sscanf(line, "%lx-%lx %7s %lx %15s %lu", &lo, &hi, perms, &offset, dev, &inode) == 6) {
      in_it = inode == static_cast<unsigned long>(st.st_ino);
      found = found || in_it;
      continue;
    }
    long v = 0;
    if (in_it && (std::sscanf(line, "ShmemPmdMapped: %ld kB", &v) == 1 ||
                  std::sscanf(line, "FilePmdMapped: %ld kB", &v) == 1)) {
      kb += v;
    }
  }
  std::fclose(f);
  return found ? kb : -1;
}

// Huge pages: where /dev/shm hands them out (here a private tmpfs mounted with huge=within_size,
// the operator's recipe in the README, "Large maps: huge pages"), a large map is mapped by 2 MiB
// page-table entries -- in the process that made it and in one that only opens it -- because each
// process's mapping starts on a 2 MiB boundary (Segment::reserve). Every key is still there.
TEST_F(SpaceTest, LargeMapsUseHugePagesWhereDevShmHandsThemOut) {
  std::string skipped;
  const auto r = in_private_shm(
      "512m", &skipped,
      [&]() -> bool {
        constexpr std::uint64_t kKeys = 400'000;  // a table of 16 MiB and more
        const std::string name = "hp-" + std::to_string(::getpid());
        auto mapped_well = [&](const char* who) {
          const long kb = huge_mapped_kb(name);
          std::fprintf(stderr, "[ info     ] %s: %ld kB mapped by huge pages\n", who, kb);
          CHILD_CHECK(kb >= 4096, "%s maps %ld kB of the map by huge pages", who, kb);
          return true;
        };
        {
          Map m = Map::create(name, {.initial_capacity = 8});
          for (std::uint64_t k = 0; k < kKeys; ++k) m.insert(k, k ^ 0x5a5a);
          if (!mapped_well("the creator")) return false;
        }
        const ChildResult opener = run_child(
            [&]() -> bool {
              Map m = Map::open(name);
              std::uint64_t sum = 0;
              for (std::uint64_t k = 0; k < kKeys; ++k) {
                const auto v = m.find(k);
                CHILD_CHECK(v && *v == (k ^ 0x5a5a), "key %llu lost", (unsigned long long)k);
                sum += *v;
              }
              return mapped_well("an opener") && sum != 0;
            },
            seconds(60 * kSlow));
        CHILD_CHECK(opener.ok(), "opener %s", opener.describe().c_str());
        Map::remove(name);
        return true;
      },
      seconds(120 * kSlow), ",huge=within_size");
  if (!skipped.empty()) GTEST_SKIP() << skipped;
  EXPECT_TRUE(r.ok()) << r.describe();
}

}  // namespace
}  // namespace shmap::test::mp
