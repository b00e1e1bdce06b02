// Hostile inputs to load: files built to exhaust the stack, the memory or the patience of the
// loader. Each must end in a shmap::Error (never a crash, a hang or another exception), having
// allocated nothing a damaged length asked for, and leave every map as it was.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <new>
#include <thread>

#include "snapshot/alloc_probe.hpp"
#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

/// Loads `file` into a new map named `name`; returns the Error, or fails the test if the load
/// succeeded or anything but a shmap::Error came out.
std::optional<Error> load_error(const std::string& file, const std::string& name,
                                LoadOptions::Mode mode = LoadOptions::Mode::create) {
  try {
    Map::load(file, name, load_mode(mode));
    ADD_FAILURE() << file << ": load succeeded";
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << file << ": a " << typeid(e).name() << " left Map::load: " << e.what();
  } catch (...) {
    ADD_FAILURE() << file << ": a non-standard exception left Map::load";
  }
  return std::nullopt;
}

/// The same in a child process that must exit 0: a crash (stack overflow) or a hang (killed
/// by its alarm) fails the test instead of the whole suite.
void expect_rejected_in_child(const std::string& file, const std::string& name, Errc code,
                              const std::string& needle) {
  const pid_t pid = spawn([&] {
    ::alarm(60);  // a hang ends as SIGALRM: the test fails, the suite goes on
    try {
      Map::load(file, name);
    } catch (const Error& e) {
      if (e.code() == code && std::string(e.what()).find(needle) != std::string::npos) return true;
      std::fprintf(stderr, "unexpected error: %s\n", e.what());
    }
    return false;
  });
  EXPECT_EQ(wait_child(pid), 0) << file << ": the loader crashed (128+signal) or failed";
}

class Hostile : public ::testing::Test {
 protected:
  TempDir dir_;
  ScopedName name_{"hostile"};
};

TEST_F(Hostile, DeeplyNestedJsonIsRejectedBeforeParsing) {
  const std::string file = dir_.path("deep.json");
  write_file(file, "{\"snapshot\": " + std::string(1'000'000, '[') + "\n");
  expect_rejected_in_child(file, name_, Errc::corrupt, "nested more than");
  // Brackets inside strings are not nesting: this one fails later, as a bad magic.
  write_file(file, "{\"snapshot\": {\"magic\": \"" + std::string(100'000, '[') +
                       "\", \"format_version\": 1}}");
  const auto e = load_error(file, name_);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), Errc::corrupt) << e->what();
  EXPECT_NE(std::string(e->what()).find("magic"), std::string::npos) << e->what();
}

TEST_F(Hostile, HugeSparseJsonIsRefusedWithoutAllocating) {
  const std::string file = dir_.path("huge.json");
  {
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "{", 1), 1);
    if (::ftruncate(fd, std::int64_t{1} << 40) != 0) {
      ::close(fd);
      GTEST_SKIP() << "this file system cannot hold a 1 TiB sparse file";
    }
    ::close(fd);
  }
  reset_largest_allocation();
  const auto e = load_error(file, name_);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code(), Errc::corrupt) << e->what();
  EXPECT_NE(std::string(e->what()).find("binary form"), std::string::npos) << e->what();
  EXPECT_LT(largest_allocation(), std::size_t{64} << 20);
  struct stat st {};
  EXPECT_NE(::stat(("/dev/shm/" + name_.str()).c_str(), &st), 0);
}

TEST_F(Hostile, FifoIsRefusedNotWaitedOn) {
  const std::string fifo = dir_.path("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // No writer ever opens the FIFO: opening it for reading would block forever.
  // The message says what it is and points to '-' (standard input) for pipes.
  expect_rejected_in_child(
      fifo, name_, Errc::corrupt,
      "is a FIFO (named pipe), not a snapshot file; to read a snapshot from a pipe, give '-'");
  expect_rejected_in_child("/dev/zero", name_, Errc::corrupt, "character device");
}

TEST_F(Hostile, DeclaredLengthsAreBoundedByTheFile) {
  ScopedName src_name("src");
  Map src = Map::create(src_name);
  for (std::uint64_t k = 0; k < 100; ++k) src.insert_or_assign(k, k);
  const std::string good = dir_.path("good.shmap");
  src.dump(good);
  std::string b = read_file(good);
  // The header body (byte 16 on) is cereal: the endianness flag, then key_type's u64 length.
  ASSERT_EQ(b[16], 1);
  const std::uint64_t len = std::uint64_t{1} << 31;
  std::memcpy(b.data() + 17, &len, 8);
  reseal(b);  // valid checksums: only the declared length is wrong
  const std::string bad = dir_.path("bad.shmap");
  write_file(bad, b);
  for (const auto mode :
       {LoadOptions::Mode::create, LoadOptions::Mode::replace, LoadOptions::Mode::merge}) {
    reset_largest_allocation();
    const auto e =
        load_error(bad, mode == LoadOptions::Mode::create ? name_.str() : src_name.str(), mode);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->code(), Errc::corrupt) << e->what();
    EXPECT_NE(std::string(e->what()).find("key_type"), std::string::npos) << e->what();
    EXPECT_LT(largest_allocation(), std::size_t{64} << 20)
        << "allocated from the declared length: " << e->what();
  }
  EXPECT_EQ(src.size(), 100u);
}

TEST_F(Hostile, JsonBitFlipsNeverLoadChangedContent) {
  ScopedName src_name("src");
  Content original;
  const std::string good = dir_.path("good.json");
  {
    Map src = Map::create(src_name);
    for (std::uint64_t k = 0; k < 20; ++k) {
      src.insert_or_assign(k * 1000003, k * k * 977 + (k << 40));
      original[k * 1000003] = k * k * 977 + (k << 40);
    }
    src.dump(good, {.json = true});
  }
  const std::string j = read_file(good);
  ASSERT_NE(j.find("\"content_xxh3\": \"0x"), std::string::npos) << j;
  const std::string bad = dir_.path("flipped.json");
  std::size_t rejected = 0, unchanged = 0;
  for (std::size_t i = 0; i < j.size(); ++i) {
    for (const int bit : {static_cast<int>(i % 8), static_cast<int>((i + 3) % 8)}) {
      std::string b = j;
      b[i] = static_cast<char>(b[i] ^ (1 << bit));
      write_file(bad, b);
      try {
        Map m = Map::load(bad, name_);
        // A flip that changes nothing a load applies (blanks, the case of a hex digit that
        // still means the same) may load: with exactly the original content.
        ASSERT_TRUE(contents(m) == original)
            << "flip of bit " << bit << " at byte " << i << " loaded changed content";
        ++unchanged;
        m = Map::open(name_);
        ASSERT_TRUE(Map::remove(name_));
      } catch (const Error& e) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, j.size());
  // Edited by hand: the checksum says so, and deleting it loads the file unchecked.
  std::string edited = j;
  const auto at = edited.find("\"value\": ");
  edited.insert(at + 9, "1");
  write_file(bad, edited);
  const auto e = load_error(bad, name_);
  ASSERT_TRUE(e);
  EXPECT_NE(std::string(e->what()).find("content checksum mismatch"), std::string::npos)
      << e->what();
  const auto line = edited.find("\"content_xxh3\"");
  const auto comma = edited.rfind(',', line);
  const auto close = edited.find('"', edited.find('"', line + 14) + 1);
  edited.erase(comma, close + 1 - comma);
  write_file(bad, edited);
  EXPECT_NO_THROW(Map::load(bad, name_)) << edited.substr(0, 200);
}

TEST_F(Hostile, KilledDumpsTemporaryIsRemovedByTheNextDump) {
  Map m = Map::create(name_);
  for (std::uint64_t k = 0; k < 1000; ++k) m.insert_or_assign(k, k);
  const std::string file = dir_.path("snap.shmap");
  for (const bool json : {false, true}) {
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    // A dumper stopped once its temporary file exists, then SIGKILLed: no handler runs.
    const pid_t pid = spawn([&] {
      static int fd = ready[1];
      detail::set_snapshot_progress(
          [](void*, const char* phase, std::uint64_t, std::uint64_t) {
            if (std::string(phase) != "dump") return;
            const char c = 1;
            if (::write(fd, &c, 1) == 1) ::pause();
          },
          nullptr);
      m.dump(file, {.json = json});
      return false;
    });
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    ::close(ready[0]);
    ::close(ready[1]);
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    std::vector<std::string> left = dir_.files();
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(left[0].rfind("snap.shmap.tmp." + std::to_string(pid) + ".", 0), 0u) << left[0];
    m.dump(file);  // the next dump to the same file removes the dead process's temporary
    left = dir_.files();
    ASSERT_EQ(left.size(), 1u) << left[0] << (left.size() > 1 ? " " + left[1] : "");
    EXPECT_EQ(left[0], "snap.shmap");
    ASSERT_EQ(::unlink(file.c_str()), 0);
  }
}

}  // namespace
}  // namespace shmap::test
