// Mode::merge is all or nothing: a merge that cannot complete (no room under max_bytes) leaves
// the map exactly as it was, and one that completes loses no write made meanwhile by other
// processes.
#include <gtest/gtest.h>
#include <unistd.h>

#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

TEST(Merge, OutOfSpaceLeavesTheMapExactlyAsItWas) {
  TempDir dir;
  ScopedName src_name("src"), small_name("small");
  const std::string file = dir.path("big.shmap");
  {
    Map src = Map::create(src_name);
    for (std::uint64_t k = 0; k < 50'000; ++k) src.insert_or_assign(k * 3, k);
    src.dump(file);
  }
  Map small = Map::create(small_name, {.initial_capacity = 8, .max_bytes = std::size_t{1} << 20});
  for (std::uint64_t k = 0; k < 3'000; ++k) small.insert_or_assign(k * 2, 7);
  const Content before = contents(small);
  try {
    Map::load(file, small_name, load_mode(LoadOptions::Mode::merge));
    FAIL() << "50,000 more entries fit in 1 MiB?";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_space) << e.what();
  }
  EXPECT_TRUE(contents(small) == before)
      << "a failed merge changed the map: " << contents(small).size() << " entries, was "
      << before.size();
  EXPECT_EQ(small.size(), before.size());
  EXPECT_TRUE(small.check().ok);
  // The map still works, and a merge that fits still merges.
  small.insert_or_assign(1, 1);
  EXPECT_EQ(small.find(1), 1u);
}

TEST(Merge, MergesAndKeepsConcurrentWritesOfOtherProcesses) {
  TempDir dir;
  ScopedName src_name("src"), dst_name("dst");
  const std::string file = dir.path("part.shmap");
  {
    Map src = Map::create(src_name);
    for (std::uint64_t k = 0; k < 20'000; ++k) src.insert_or_assign(k, k + 1);
    src.dump(file);
  }
  Map dst = Map::create(dst_name, {.initial_capacity = 8});
  for (std::uint64_t k = 10'000; k < 30'000; ++k) dst.insert_or_assign(k, 5);
  constexpr std::uint64_t kBase = 1'000'000, kWrites = 30'000;
  int started[2];
  ASSERT_EQ(::pipe(started), 0);
  const pid_t writer = spawn([&] {
    Map m = Map::open(dst_name);
    for (std::uint64_t i = 0; i < kWrites; ++i) {
      m.insert_or_assign(kBase + i, i);
      if (i == 100) {
        const char c = 1;
        if (::write(started[1], &c, 1) != 1) return false;
      }
    }
    return true;
  });
  char c;
  ASSERT_EQ(::read(started[0], &c, 1), 1);
  for (int round = 0; round < 5; ++round) {
    Map::load(file, dst_name, load_mode(LoadOptions::Mode::merge));
  }
  ASSERT_EQ(wait_child(writer), 0);
  ::close(started[0]);
  ::close(started[1]);
  const Content got = contents(dst);
  for (std::uint64_t k = 0; k < 20'000; ++k) ASSERT_EQ(got.at(k), k + 1) << "the file wins";
  for (std::uint64_t k = 20'000; k < 30'000; ++k) ASSERT_EQ(got.at(k), 5u);
  for (std::uint64_t i = 0; i < kWrites; ++i) {
    ASSERT_TRUE(got.count(kBase + i)) << "a concurrent write was lost: " << kBase + i;
    ASSERT_EQ(got.at(kBase + i), i);
  }
  EXPECT_EQ(got.size(), 30'000u + kWrites);
  EXPECT_EQ(dst.size(), got.size());
}

}  // namespace
}  // namespace shmap::test
