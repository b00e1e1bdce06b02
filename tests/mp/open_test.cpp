// Many processes opening one name at the same moment: open_or_create, create and open released
// together by a pipe gate must all end on one map, exactly one creator wins, and an opener
// racing a creator sees either "not found" or a fully initialised map, never a half-made one.
#include <gtest/gtest.h>

#include <vector>

#include "mp_util.hpp"

namespace shmap::test::mp {
namespace {

struct RaceShared {
  std::atomic<int> ready{0};
  std::atomic<int> inserted{0};
  std::atomic<int> failed{0};  // a process failed: the others stop waiting for it
};

/// Runs a child body; if it fails (false or an exception), the others learn it at once.
template <class F>
bool failing_fast(RaceShared* sh, F&& body) {
  bool ok = false;
  try {
    ok = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
  }
  if (!ok) sh->failed.fetch_add(1);
  return ok;
}

class OpenTest : public MpTest {};

TEST_F(OpenTest, ManyProcessesOpenOrCreateAtOnceEndOnOneMap) {
  constexpr int kProcs = 12;
  const int rounds = kSanitized ? 10 : 30;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ScopedName name("ooc");
    Shared<RaceShared> sh;
    Gate gate;
    std::vector<pid_t> pids;
    for (int c = 0; c < kProcs; ++c) {
      pids.push_back(fork_child([&, c] {
        return failing_fast(sh.get(), [&]() -> bool {
          sh->ready.fetch_add(1);
          CHILD_CHECK(gate.wait(), "gate");
          Map m = Map::open_or_create(name, {.initial_capacity = 64});
          CHILD_CHECK(m.insert(c, static_cast<std::uint64_t>(::getpid())), "insert own key %d", c);
          sh->inserted.fetch_add(1);
          // Everyone stays attached until all have inserted; then each must see every key
          // through its own handle: proof that all are on one map, not on replaced ones.
          CHILD_CHECK(wait_until([&] { return sh->inserted.load() == kProcs || sh->failed.load(); },
                                 seconds(30 * kSlow)) &&
                          sh->failed.load() == 0,
                      "others never inserted (%d of %d)", sh->inserted.load(), kProcs);
          for (int j = 0; j < kProcs; ++j) {
            CHILD_CHECK(m.contains(j), "key of process %d is not in this process's map", j);
          }
          CHILD_CHECK(m.stats().options.initial_capacity == 64, "options of the creator");
          return true;
        });
      }));
      ASSERT_GT(pids.back(), 0);
    }
    ASSERT_TRUE(wait_until([&] { return sh->ready.load() == kProcs; }, seconds(30 * kSlow)));
    gate.release();
    for (int c = 0; c < kProcs; ++c) {
      const auto r = wait_for(pids[c], seconds(60 * kSlow));
      EXPECT_TRUE(r.ok()) << "process " << c << " " << r.describe();
    }
    Map m = Map::open(name);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(kProcs));
    for (int c = 0; c < kProcs; ++c) EXPECT_EQ(m.find(c), static_cast<std::uint64_t>(pids[c]));
    EXPECT_EQ(m.stats().handles_in_use, 1u) << "every process closed its handle";
    if (HasFailure()) break;
  }
}

TEST_F(OpenTest, ConcurrentCreateHasExactlyOneWinner) {
  constexpr int kProcs = 10;
  const int rounds = kSanitized ? 10 : 30;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ScopedName name("create");
    Shared<RaceShared> sh;
    Gate gate;
    std::vector<pid_t> pids;
    for (int c = 0; c < kProcs; ++c) {
      pids.push_back(fork_child([&, c]() -> bool {
        sh->ready.fetch_add(1);
        CHILD_CHECK(gate.wait(), "gate");
        try {
          {
            Map m = Map::create(name, {.initial_capacity = 128});
            m.insert(1000, static_cast<std::uint64_t>(c));
          }
          ::_exit(0);  // the winner
        } catch (const Error& e) {
          CHILD_CHECK(e.code() == Errc::already_exists, "create failed with %s: %s",
                      std::string(errc_name(e.code())).c_str(), e.what());
          CHILD_CHECK(std::string(e.what()).find(name.str()) != std::string::npos,
                      "message does not name the map: %s", e.what());
          ::_exit(10);  // lost the race, correctly
        }
      }));
      ASSERT_GT(pids.back(), 0);
    }
    ASSERT_TRUE(wait_until([&] { return sh->ready.load() == kProcs; }, seconds(30 * kSlow)));
    gate.release();
    int winners = 0;
    int winner = -1;
    for (int c = 0; c < kProcs; ++c) {
      const auto r = wait_for(pids[c], seconds(60 * kSlow));
      EXPECT_TRUE(r.exited && (r.code == 0 || r.code == 10))
          << "process " << c << " " << r.describe();
      if (r.exited && r.code == 0) ++winners, winner = c;
    }
    EXPECT_EQ(winners, 1) << "exactly one create() may succeed";
    Map m = Map::open(name);
    EXPECT_EQ(m.find(1000), static_cast<std::uint64_t>(winner));
    EXPECT_EQ(m.size(), 1u);
    if (HasFailure()) break;
  }
}

// Openers spin on open() while one process creates: each sees not_found until it sees a map
// with the creator's options, never corrupt/timeout/a crash on a half-initialised segment.
TEST_F(OpenTest, OpenRacingCreateSeesNotFoundOrAReadyMap) {
  constexpr int kOpeners = 8;
  const int rounds = kSanitized ? 10 : 30;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ScopedName name("openrace");
    Shared<RaceShared> sh;
    Gate gate;
    std::vector<pid_t> pids;
    for (int c = 0; c <= kOpeners; ++c) {
      pids.push_back(fork_child([&, c] {
        return failing_fast(sh.get(), [&]() -> bool {
          sh->ready.fetch_add(1);
          CHILD_CHECK(gate.wait(), "gate");
          if (c == kOpeners) {
            Map m = Map::create(name, {.initial_capacity = 4096, .max_handles = 32});
            m.insert(7, 7);
            CHILD_CHECK(
                wait_until([&] { return sh->inserted.load() == kOpeners || sh->failed.load(); },
                           seconds(30 * kSlow)) &&
                    sh->failed.load() == 0,
                "openers never attached");
            return true;
          }
          const auto deadline = Clock::now() + seconds(20 * kSlow);
          for (;;) {
            try {
              Map m = Map::open(name);
              const auto st = m.stats();
              CHILD_CHECK(st.options.initial_capacity == 4096 && st.max_handles == 32,
                          "opened a map without the creator's options (capacity %zu, slots %zu)",
                          st.options.initial_capacity, st.max_handles);
              CHILD_CHECK(st.capacity >= 4096, "capacity %zu", st.capacity);
              m.insert(100 + c, 1);
              sh->inserted.fetch_add(1);
              return true;
            } catch (const Error& e) {
              CHILD_CHECK(e.code() == Errc::not_found, "open during create failed with %s: %s",
                          std::string(errc_name(e.code())).c_str(), e.what());
            }
            CHILD_CHECK(Clock::now() < deadline, "the map never appeared");
            std::this_thread::yield();
          }
        });
      }));
      ASSERT_GT(pids.back(), 0);
    }
    ASSERT_TRUE(wait_until([&] { return sh->ready.load() == kOpeners + 1; }, seconds(30 * kSlow)));
    gate.release();
    for (std::size_t c = 0; c < pids.size(); ++c) {
      const auto r = wait_for(pids[c], seconds(60 * kSlow));
      EXPECT_TRUE(r.ok()) << "process " << c << " " << r.describe();
    }
    Map m = Map::open(name);
    EXPECT_EQ(m.size(), static_cast<std::size_t>(kOpeners + 1));
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace shmap::test::mp
