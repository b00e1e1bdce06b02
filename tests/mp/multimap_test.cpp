// StringMultimap across real processes: four processes adding values to one key and to keys of
// their own from capacity 8 (counts exact, nothing doubled, each process's order kept), and a
// SIGKILL loop in which every acknowledged value survives and none appears twice. Seeds are
// printed; replay with SHMAP_TEST_SEED=<n>. SHMAP_SOAK=N runs N times more.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <set>
#include <string>
#include <vector>

#include "mp_util.hpp"
#include "shmap/string_multimap.hpp"

namespace shmap::test::mp {
namespace {

class MultimapMpTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 300; }
};

TEST_F(MultimapMpTest, FourProcessesAddingToOneKeyAndToManyCountExactly) {
  ScopedName name("multi-procs");
  auto m = StringMultimap::create(name, {.initial_capacity = 8});
  constexpr int kProcs = 4, kOwnKeys = 100;
  const int per = static_cast<int>(1000 * soak() / kScale);
  Gate gate;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(fork_child([&, p] {
      auto s = StringMultimap::open(name);
      if (!gate.wait()) return false;
      for (int i = 0; i < per; ++i) {
        s.insert("shared", std::to_string(p) + ":" + std::to_string(i));
        s.insert("p" + std::to_string(p) + ":" + std::to_string(i % kOwnKeys), std::to_string(i));
      }
      // Half of its own values go again: erase(k, v) of values that are there.
      for (int i = 0; i < per; i += 2) {
        CHILD_CHECK(s.erase("p" + std::to_string(p) + ":" + std::to_string(i % kOwnKeys),
                            std::to_string(i)),
                    "erase of value %d that was added", i);
      }
      return true;
    }));
  }
  gate.release();
  for (int p = 0; p < kProcs; ++p) {
    const auto r = wait_for(pids[p], seconds(120 * kSlow * soak()));
    EXPECT_TRUE(r.ok()) << "process " << p << " " << r.describe();
  }
  const auto shared = m.find("shared");
  ASSERT_EQ(shared.size(), static_cast<std::size_t>(kProcs * per));
  EXPECT_EQ(std::set<std::string>(shared.begin(), shared.end()).size(), shared.size())
      << "a value doubled";
  for (int p = 0; p < kProcs; ++p) {
    int last = -1;
    for (const auto& v : shared) {
      if (v.rfind(std::to_string(p) + ":", 0) != 0) continue;
      const int i = std::stoi(v.substr(v.find(':') + 1));
      EXPECT_EQ(i, last + 1) << "process " << p << "'s values out of order";
      last = i;
    }
    EXPECT_EQ(last, per - 1);
  }
  std::size_t own = 0;
  for (int p = 0; p < kProcs; ++p) {
    for (int j = 0; j < kOwnKeys; ++j) {
      for (const auto& v : m.find("p" + std::to_string(p) + ":" + std::to_string(j))) {
        EXPECT_EQ(std::stoi(v) % 2, 1) << "an erased value is back";
        EXPECT_EQ(std::stoi(v) % kOwnKeys, j);
        ++own;
      }
    }
  }
  EXPECT_EQ(own, static_cast<std::size_t>(kProcs * (per / 2)));
  EXPECT_EQ(m.size(), shared.size() + own);
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
}

// Writers append "0", "1", "2", ... to keys of their own and acknowledge each value in shared
// memory; the parent SIGKILLs them at random moments, and a new writer carries on from the
// values the map holds. In the end each key holds exactly 0..n-1 in order, with n the
// acknowledged count or one more (the write in flight may have landed): nothing lost, nothing
// doubled, nothing torn. Other writers add to a shared key meanwhile, from capacity 8.
TEST_F(MultimapMpTest, KilledWritersLoseNoAcknowledgedValue) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("multi-kill");
  auto m = StringMultimap::create(name, {.initial_capacity = 8});
  constexpr int kKeys = 3;
  SharedArray<std::atomic<std::uint64_t>> acked(kKeys);
  const int rounds = (kSanitized ? 15 : 60) * soak();
  for (int r = 0; r < rounds; ++r) {
    const int key = r % kKeys;
    const std::string k = "writer" + std::to_string(key);
    const std::uint64_t target = acked[key].load() + 1 + rng.below(300);
    const pid_t pid = fork_child([&] {
      auto s = StringMultimap::open(name);
      // Carry on from what the map holds (the killed writer's last value may have landed).
      for (std::uint64_t i = s.count(k);; ++i) {
        s.insert(k, std::to_string(i));
        // Spread over 64 keys: one key's values share one record of at most 2 MiB.
        s.insert("noise" + std::to_string(i % 64), std::string(i % 200, 'n'));
        acked[key].store(i + 1);
      }
      return true;
    });
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(wait_until([&] { return acked[key].load() >= target; }, seconds(60 * kSlow)))
        << "writer of " << k << " made no progress (seed " << seed << ")";
    ::kill(pid, SIGKILL);
    const auto res = wait_for(pid, seconds(30));
    ASSERT_EQ(res.signal, SIGKILL) << res.describe();
  }
  std::size_t total = 0;
  for (int key = 0; key < kKeys; ++key) {
    const auto vals = m.find("writer" + std::to_string(key));
    const std::uint64_t a = acked[key].load();
    EXPECT_TRUE(vals.size() == a || vals.size() == a + 1)
        << "writer" << key << " holds " << vals.size() << " values, " << a << " acknowledged";
    for (std::size_t i = 0; i < vals.size(); ++i) {
      ASSERT_EQ(vals[i], std::to_string(i)) << "writer" << key << " value " << i;
    }
    total += vals.size();
  }
  for (int j = 0; j < 64; ++j) {
    for (const auto& v : m.find("noise" + std::to_string(j))) {
      ASSERT_EQ(v, std::string(v.size(), 'n')) << "a torn noise value";
    }
    total += m.count("noise" + std::to_string(j));
  }
  // Exact with no recount: freeing the dead writers' slots applies what they left pending.
  m.clear_stale_handles();
  EXPECT_EQ(m.size(), total);
  m.compact();  // frees the lists the killed writers never retired
  EXPECT_EQ(m.size(), total);
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
}

}  // namespace
}  // namespace shmap::test::mp
