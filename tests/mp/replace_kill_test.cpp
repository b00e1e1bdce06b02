// Bulk replacement (what `load --replace` does) killed at random moments: the loader links a
// table built off to the side, its entry count is added once, and the old entries are
// discarded with a count each. A loader or a discarding mover SIGKILLed between any CAS and
// its count used to leave size() off for good (100,006-100,016 for a 100,000-entry map). Now
// every such count is recorded like a write, and size() must equal what the table holds.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "mp_util.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::test::mp {
namespace {

struct ReplaceShared {
  std::atomic<std::uint64_t> published{0};
  std::atomic<bool> stop{false};
};

// Replaces the whole content with `n` entries, again and again.
bool run_replacer(const std::string& name, std::uint64_t n, ReplaceShared* sh) {
  Map m = Map::open(name);
  detail::MapImpl& impl = m.impl();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> kv(n);
  for (std::uint64_t round = 0; !sh->stop.load(std::memory_order_acquire); ++round) {
    for (std::uint64_t i = 0; i < n; ++i) kv[i] = {i * 7 + (round % 3), round};
    const std::uint64_t t = impl.build_table(n);
    impl.bulk_put_many(t, kv.data(), kv.size());
    impl.publish_replace(t);
    sh->published.fetch_add(1, std::memory_order_release);
  }
  return true;
}

class ReplaceKillTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 180; }
};

TEST_F(ReplaceKillTest, SizeStaysExactWhenReplacersAreKilled) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("replace-kill");
  Map m = Map::create(name, {.initial_capacity = 8});
  constexpr std::uint64_t kEntries = 3000;
  const int kKills = (kSanitized ? 10 : 40) * soak();
  Shared<ReplaceShared> steady;
  // One replacer that is never killed, so discards by others' tables are under way too.
  const pid_t steady_pid = fork_child([&] { return run_replacer(name, kEntries, steady.get()); });
  for (int i = 0; i < kKills; ++i) {
    Shared<ReplaceShared> vs;
    const pid_t victim = fork_child([&] { return run_replacer(name, kEntries, vs.get()); });
    ASSERT_TRUE(wait_until([&] { return vs->published.load() > 0; }, seconds(30 * kSlow)));
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(3000)));
    ::kill(victim, SIGKILL);
    EXPECT_EQ(wait_for(victim, seconds(30)).signal, SIGKILL);
    // A reader meanwhile never sees more than two tables' worth of entries counted... and
    // never a negative (wrapped) size.
    EXPECT_LE(m.size(), 2 * kEntries + 2) << "after kill " << i;
  }
  steady->stop.store(true, std::memory_order_release);
  const ChildResult r = wait_for(steady_pid, seconds(60 * kSlow));
  EXPECT_TRUE(r.ok()) << r.describe();
  m.clear_stale_handles();
  m.compact();
  std::size_t walked = 0;
  m.for_each([&](std::uint64_t, std::uint64_t) { ++walked; });
  EXPECT_EQ(walked, kEntries);
  EXPECT_EQ(m.size(), walked) << "size() must stay exact across killed replacements";
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
}

}  // namespace
}  // namespace shmap::test::mp
