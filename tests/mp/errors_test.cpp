// Failure modes of attaching: bad names, missing and existing maps, foreign or damaged objects
// in /dev/shm (an error naming the map, never a crash or a hang), exhausted handle slots
// (reclaimed from dead processes), and permissions.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <set>
#include <vector>

#include "mp_util.hpp"
#include "shmap/detail/layout.hpp"

namespace shmap::test::mp {
namespace {

class ErrorsTest : public MpTest {};

bool names_map(const std::string& message, const std::string& name) {
  return message.find(name) != std::string::npos;
}

TEST_F(ErrorsTest, BadNamesAreInvalidArgument) {
  const std::vector<std::string> bad = {
      "", "a/b", ".", "..", std::string(201, 'x'), "x y", "/", "tab\there", "new\nline"};
  for (const auto& n : bad) {
    SCOPED_TRACE("name \"" + n + "\"");
    expect_error([&] { Map::create(n); }, Errc::invalid_argument, "create");
    expect_error([&] { Map::open(n); }, Errc::invalid_argument, "open");
    expect_error([&] { Map::open_or_create(n); }, Errc::invalid_argument, "open_or_create");
    try {
      EXPECT_FALSE(Map::remove(n));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    }
  }
  struct stat st {};
  EXPECT_NE(::stat("/dev/shm/x y", &st), 0) << "a bad name must not create anything";
}

TEST_F(ErrorsTest, MissingAndExisting) {
  ScopedName name("exist");
  const std::string m1 = expect_error([&] { Map::open(name); }, Errc::not_found, "open missing");
  EXPECT_TRUE(names_map(m1, name)) << m1;
  EXPECT_FALSE(Map::remove(name));

  Map m = Map::create(name, {.initial_capacity = 16});
  m.insert(1, 2);
  const std::string m2 =
      expect_error([&] { Map::create(name); }, Errc::already_exists, "create existing");
  EXPECT_TRUE(names_map(m2, name)) << m2;
  EXPECT_EQ(m.find(1), 2u) << "a failed create must not touch the existing map";
  Map o = Map::open_or_create(name, {.initial_capacity = 4096});
  EXPECT_EQ(o.find(1), 2u);
  EXPECT_EQ(o.stats().options.initial_capacity, 16u) << "open_or_create opened, not created";

  const auto names = Map::list();
  EXPECT_NE(std::find(names.begin(), names.end(), name.str()), names.end());
  EXPECT_TRUE(Map::remove(name));
  expect_error([&] { Map::open(name); }, Errc::not_found, "open after remove");
  EXPECT_EQ(m.find(1), 2u) << "attached processes keep using a removed map";
}

// ---- foreign and damaged objects -----------------------------------------------------------

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& path, const std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    ASSERT_GT(n, 0);
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

template <class T>
void poke(std::vector<char>& bytes, std::size_t offset, T value) {
  ASSERT_LE(offset + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

/// The bytes of a real, freshly created (and closed) segment.
std::vector<char> real_segment() {
  ScopedName n("template");
  { Map m = Map::create(n, {.initial_capacity = 8, .max_handles = 4}); }
  return read_file(shm_path(n));
}

struct Foreign {
  std::string tag;
  std::vector<char> bytes;
  std::set<Errc> accept;
};

/// Opens a foreign object in a child (a crash must not take the test binary down) and expects
/// one of the accepted errors, with a message naming the map, from open and (unless only_open)
/// open_or_create; the object must be left as it was.
void expect_refused(const Foreign& f, milliseconds timeout, bool only_open = false) {
  SCOPED_TRACE(f.tag);
  ScopedName name("foreign-" + f.tag);
  const std::string path = shm_path(name);
  write_file(path, f.bytes);
  const auto r = run_child(
      [&]() -> bool {
        for (int which = 0; which < (only_open ? 1 : 2); ++which) {
          const char* call = which == 0 ? "open" : "open_or_create";
          try {
            if (which == 0) {
              Map::open(name);
            } else {
              Map::open_or_create(name);
            }
            CHILD_CHECK(false, "%s of a foreign object (%s) succeeded", call, f.tag.c_str());
          } catch (const Error& e) {
            CHILD_CHECK(f.accept.count(e.code()) == 1, "%s (%s): unexpected %s: %s", call,
                        f.tag.c_str(), std::string(errc_name(e.code())).c_str(), e.what());
            CHILD_CHECK(names_map(e.what(), name), "%s: message does not name the map: %s", call,
                        e.what());
          }
        }
        return true;
      },
      timeout);
  EXPECT_TRUE(r.ok()) << f.tag << ": the opening process " << r.describe();
  EXPECT_EQ(read_file(path), f.bytes) << f.tag << ": a refused object must not be modified";
  ::unlink(path.c_str());
}

TEST_F(ErrorsTest, ForeignObjectsAreRefusedNeverCrash) {
  const std::vector<char> real = real_segment();
  ASSERT_GE(real.size(), detail::kPage);
  Rng rng(12345);
  std::vector<Foreign> cases;
  {
    std::vector<char> g(8192);
    for (auto& c : g) c = static_cast<char>(rng.next());
    cases.push_back({"garbage8k", g, {Errc::corrupt}});
  }
  {
    std::vector<char> g(100);
    for (auto& c : g) c = static_cast<char>(rng.next());
    cases.push_back({"garbage100", g, {Errc::corrupt}});
  }
  {
    const std::string s = "hello shm\n";
    cases.push_back({"short", std::vector<char>(s.begin(), s.end()), {Errc::corrupt}});
  }
  {
    std::vector<char> b = real;
    poke<std::uint64_t>(b, 0, __builtin_bswap64(detail::kMagic));
    cases.push_back({"swapped-magic", b, {Errc::layout_mismatch}});
  }
  {
    std::vector<char> b = real;
    poke<std::uint32_t>(b, 8, detail::kFormatVersion + 1);
    cases.push_back({"version", b, {Errc::version_mismatch}});
  }
  {
    std::vector<char> b = real;
    std::uint64_t sig = 0;
    std::memcpy(&sig, b.data() + 16, 8);
    poke<std::uint64_t>(b, 16, sig ^ 0x10);
    cases.push_back({"signature", b, {Errc::layout_mismatch}});
  }
  {
    std::vector<char> b = real;
    poke<std::uint32_t>(b, 12, 2048);
    cases.push_back({"header-bytes", b, {Errc::layout_mismatch, Errc::corrupt}});
  }
  {
    // A valid header, cut short: the slots and the first table are missing (SIGBUS bait).
    std::vector<char> b(real.begin(), real.begin() + detail::kPage);
    cases.push_back({"truncated", b, {Errc::corrupt}});
  }
  {
    // Initialising, but the creator (a reaped child) is dead: no 30 s wait.
    const pid_t dead = fork_child([] { return true; });
    ASSERT_GT(dead, 0);
    ASSERT_TRUE(wait_for(dead, seconds(10)).ok());
    std::vector<char> b = real;
    poke<std::uint32_t>(b, offsetof(detail::SegmentHeader, init_state), 0);
    poke<std::uint64_t>(b, offsetof(detail::SegmentHeader, creator_pid),
                        static_cast<std::uint64_t>(dead));
    cases.push_back({"dead-creator", b, {Errc::corrupt}});
  }
  for (const auto& f : cases) expect_refused(f, seconds(20 * kSlow));

  // Map::list() skips foreign objects and does not crash on them.
  ScopedName g("garbage-in-list");
  write_file(shm_path(g), cases[0].bytes);
  ScopedName s("short-in-list");
  write_file(shm_path(s), cases[2].bytes);
  const auto names = Map::list();
  EXPECT_EQ(std::find(names.begin(), names.end(), g.str()), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), s.str()), names.end());
  ::unlink(shm_path(g).c_str());
  ::unlink(shm_path(s).c_str());
}

// Beyond foreign files: a real header with fields damaged so that trusting them would
// read outside the object. Open must check them against the object's size.
TEST_F(ErrorsTest, DamagedHeaderFieldsAreRefused) {
  const std::vector<char> real = real_segment();
  ASSERT_GE(real.size(), detail::kPage);
  std::vector<Foreign> cases;
  {
    // A valid header whose offsets point past the end of the object.
    std::vector<char> b = real;
    poke<std::uint64_t>(b, offsetof(detail::SegmentHeader, current_table), real.size() * 16);
    cases.push_back({"bad-table-offset", b, {Errc::corrupt}});
  }
  {
    std::vector<char> b = real;
    poke<std::uint64_t>(b, offsetof(detail::SegmentHeader, max_handles), 1ULL << 40);
    cases.push_back({"bad-max-handles", b, {Errc::corrupt}});
  }
  for (const auto& f : cases) expect_refused(f, seconds(20 * kSlow));
}

// Objects that look like a segment being initialised: a creator publishes a segment under
// the map's name only once it is complete (it builds it under a temporary name and links it),
// so these are corrupt at once -- no wait for a creator, dead or alive.
TEST_F(ErrorsTest, ObjectsThatWereNeverFinishedAreCorruptAtOnce) {
  const std::vector<char> real = real_segment();
  std::vector<Foreign> cases;
  cases.push_back({"empty", {}, {Errc::corrupt}});
  cases.push_back({"zeros", std::vector<char>(1 << 20, 0), {Errc::corrupt}});
  {
    std::vector<char> b = real;  // initialising, creator alive (this process) but stuck
    poke<std::uint32_t>(b, offsetof(detail::SegmentHeader, init_state), 0);
    poke<std::uint64_t>(b, offsetof(detail::SegmentHeader, creator_pid),
                        static_cast<std::uint64_t>(::getpid()));
    cases.push_back({"stuck-creator", b, {Errc::corrupt}});
  }
  for (const auto& f : cases) {
    const auto t0 = Clock::now();
    expect_refused(f, seconds(20 * kSlow));
    EXPECT_LT(Clock::now() - t0, seconds(2 * kSlow)) << f.tag << ": refused only after a wait";
  }
}

// ---- handle slots --------------------------------------------------------------------------

TEST_F(ErrorsTest, HandleSlotsExhaustedAndDeadSlotsReclaimedOnOpen) {
  ScopedName name("slots");
  Map m1 = Map::create(name, {.initial_capacity = 8, .max_handles = 4});
  EXPECT_EQ(m1.stats().max_handles, 4u);
  std::optional<Map> m2(Map::open(name));
  Map m3 = Map::open(name);
  std::optional<Map> m4(Map::open(name));
  EXPECT_EQ(m1.stats().handles_in_use, 4u);
  const std::string msg =
      expect_error([&] { Map::open(name); }, Errc::handles_exhausted, "5th open");
  EXPECT_TRUE(names_map(msg, name)) << msg;
  expect_error([&] { Map::open_or_create(name); }, Errc::handles_exhausted, "5th open_or_create");
  // In another process too.
  const auto r = run_child(
      [&]() -> bool {
        try {
          Map::open(name);
        } catch (const Error& e) {
          return e.code() == Errc::handles_exhausted;
        }
        return false;
      },
      seconds(20 * kSlow));
  EXPECT_TRUE(r.ok()) << "open in a child with every slot taken: " << r.describe();

  m4.reset();
  EXPECT_EQ(m1.stats().handles_in_use, 3u);
  m4.emplace(Map::open(name));  // a closed slot is free again
  m4.reset();

  // A process takes the 4th slot and dies without closing it (SIGKILL).
  Shared<std::atomic<int>> opened;
  const pid_t pid = fork_child([&]() -> bool {
    Map c = Map::open(name);
    c.insert(99, 99);
    opened->store(1);
    for (;;) ::pause();
  });
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_until([&] { return opened->load() == 1; }, seconds(20 * kSlow)));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_EQ(wait_for(pid, seconds(10)).signal, SIGKILL);
  EXPECT_EQ(m1.stats().handles_in_use, 4u) << "the dead process still owns its slot";
  bool saw_dead = false;
  for (const auto& rd : m1.readers()) saw_dead = saw_dead || (rd.pid == pid && !rd.alive);
  EXPECT_TRUE(saw_dead) << "readers() shows the dead owner as not alive";

  // Every slot is owned, but one owner is dead: open reclaims it.
  Map m5 = Map::open(name);
  EXPECT_EQ(m5.find(99), 99u);
  EXPECT_EQ(m1.stats().handles_in_use, 4u);
  expect_error([&] { Map::open(name); }, Errc::handles_exhausted, "open with 4 live owners");
  m2.reset();
  EXPECT_EQ(m1.clear_stale_handles(), 0u) << "no dead owner left";
  EXPECT_EQ(m1.stats().handles_in_use, 3u);
}

// ---- permissions ---------------------------------------------------------------------------

/// In a child: drop to uid/gid 65534 and try to open; returns the child's result.
ChildResult open_as_nobody(const std::string& name, bool expect_ok) {
  return run_child(
      [&]() -> bool {
        CHILD_CHECK(::setgid(65534) == 0 && ::setuid(65534) == 0, "setuid: %s",
                    std::strerror(errno));
        for (int which = 0; which < 2; ++which) {
          try {
            Map m = which == 0 ? Map::open(name) : Map::open_or_create(name);
            CHILD_CHECK(expect_ok, "open as nobody succeeded on a map it may not write");
            m.insert(4242, 1);
          } catch (const Error& e) {
            CHILD_CHECK(!expect_ok, "open as nobody failed: %s", e.what());
            CHILD_CHECK(e.code() == Errc::permission_denied, "want permission_denied, got %s: %s",
                        std::string(errc_name(e.code())).c_str(), e.what());
            CHILD_CHECK(names_map(e.what(), name), "message does not name the map: %s", e.what());
          }
        }
        return true;
      },
      seconds(20 * kSlow));
}

TEST_F(ErrorsTest, ModeIsAppliedExactlyAndEnforced) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to switch to another user";
  const mode_t old_umask = ::umask(077);
  struct Restore {
    mode_t m;
    ~Restore() { ::umask(m); }
  } restore{old_umask};
  for (const unsigned mode : {0600u, 0644u, 0666u}) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    ScopedName name("mode" + std::to_string(mode));
    Map m = Map::create(name, {.initial_capacity = 8, .mode = mode});
    struct stat st {};
    ASSERT_EQ(::stat(shm_path(name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, mode) << "mode not applied exactly (umask 077 in effect)";
    const bool writable_by_others = (mode & 0006) == 0006;
    const auto r = open_as_nobody(name, writable_by_others);
    EXPECT_TRUE(r.ok()) << "child " << r.describe();
    EXPECT_EQ(m.find(4242).has_value(), writable_by_others);
    EXPECT_EQ(m.stats().handles_in_use, 1u) << "a refused open must not keep a slot";
    EXPECT_EQ(m.stats().options.mode, mode);
  }
}

}  // namespace
}  // namespace shmap::test::mp
