// Adversarial multi-process tests of the table chain (successors that turn out too small,
// chains of 3+ tables, grow_stuck), of bulk replacement and of reclamation, on one real
// segment from capacity 8:
// - Owned keys, per-key linearizability (tests/adversary_core.hpp): steady processes of 18
//   threads (owners and readers: some on the shared overflow lane), victim processes that are
//   SIGKILLed at random moments, and steady processes SIGSTOPped and SIGCONTinued meanwhile;
//   the parent walks the map and checks every walk. Afterwards: every key holds exactly its
//   last acknowledged state (or, for a killed owner, the one it had in flight), and size() is
//   exact.
// - Bulk replacement racing writers, readers and other replacements, with replacers killed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "adversary_core.hpp"
#include "mp_util.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::test::mp {
namespace {

struct AdvShared {
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::atomic<int> started{0};
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> sabotaged{0};
  std::atomic<std::uint64_t> chains3{0};
  std::atomic<std::uint64_t> session_reads{0};
  std::atomic<std::uint64_t> dead_claims{0};
  std::atomic<std::uint64_t> resumed_claims{0};
};

constexpr std::uint64_t kPer = 3;  // keys per owner thread

// One process: `owners` owner threads (keys [first, first + owners * kPer)), `readers`
// reader threads over keys [0, nkeys). Scratch keys per thread start at scratch.
bool run_process(const std::string& name, adv::KeyState* keys, std::uint64_t nkeys,
                 std::uint64_t first, int owners, int readers, std::uint64_t scratch,
                 std::uint64_t seed, AdvShared* sh, std::atomic<std::uint64_t>* my_ops,
                 bool saboteur = false, int session_readers = 0, bool dead_claimer = false) {
  Map m = Map::open(name);
  std::atomic<bool> ok{true};
  std::vector<std::thread> ts;
  for (int t = 0; t < session_readers; ++t) {
    ts.emplace_back([&, t] {
      try {
        if (!adv::run_session_reader(m, keys, nkeys, seed * 1013 + t, &sh->stop,
                                     &sh->session_reads)) {
          ok = false;
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "session reader pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
      }
      if (!ok) sh->failed = true;
    });
  }
  if (dead_claimer) {
    ts.emplace_back([&] {
      try {
        if (!adv::run_dead_claimer(m, &sh->stop, scratch + (std::uint64_t{1} << 43), seed * 31,
                                   &sh->dead_claims, &sh->resumed_claims)) {
          ok = false;
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "dead claimer pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
      }
      if (!ok) sh->failed = true;
    });
  }
  if (saboteur) {
    ts.emplace_back([&] {
      try {
        adv::run_saboteur(m, &sh->stop, std::chrono::microseconds(50), &sh->sabotaged,
                          &sh->chains3);
      } catch (const Error& e) {
        std::fprintf(stderr, "saboteur pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
        sh->failed = true;
      }
    });
  }
  for (int t = 0; t < owners; ++t) {
    ts.emplace_back([&, t] {
      try {
        if (!adv::run_owner(m, keys, first + t * kPer, kPer, scratch + (std::uint64_t(t) << 36),
                            seed * 131 + t, &sh->stop, UINT64_MAX, my_ops)) {
          ok = false;
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "owner pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
      }
      if (!ok) sh->failed = true;
    });
  }
  for (int t = 0; t < readers; ++t) {
    ts.emplace_back([&, t] {
      try {
        if (!adv::run_reader(m, keys, nkeys, seed * 977 + t, &sh->stop, &sh->reads)) ok = false;
      } catch (const Error& e) {
        std::fprintf(stderr, "reader pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
      }
      if (!ok) sh->failed = true;
    });
  }
  sh->started.fetch_add(1, std::memory_order_release);
  for (auto& t : ts) t.join();
  return ok;
}

class AdversaryTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 240; }
};

TEST_F(AdversaryTest, OwnedKeysLinearizableWithKillsAndStops) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("adv-lin");
  Map m = Map::create(name, {.initial_capacity = 8});
  const int kSteady = 2, kOwners = 10, kReaders = 8;  // 18 threads per steady process
  const int kVictims = kSanitized ? 8 : 30, kVictimOwners = 2;
  const std::uint64_t steady_keys = std::uint64_t(kSteady) * kOwners * kPer;
  const std::uint64_t nkeys = steady_keys + std::uint64_t(kVictims) * kVictimOwners * kPer;
  SharedArray<adv::KeyState> keys(nkeys);
  Shared<AdvShared> sh;
  SharedArray<std::atomic<std::uint64_t>> proc_ops(kSteady);
  std::vector<pid_t> steady;
  for (int p = 0; p < kSteady; ++p) {
    steady.push_back(fork_child([&, p] {
      return run_process(name, &keys[0], nkeys, std::uint64_t(p) * kOwners * kPer, kOwners,
                         kReaders, std::uint64_t(p + 1) << 44, seed + p, sh.get(), &proc_ops[p],
                         /*saboteur=*/p == 0);
    }));
  }
  ASSERT_TRUE(wait_until([&] { return sh->started.load() == kSteady; }, seconds(30 * kSlow)));
  // The parent forces too-small successors too (victims do as well, and die mid-way).
  std::atomic<bool> sab_stop{false};
  std::thread sab([&] {
    try {
      adv::run_saboteur(m, &sab_stop, std::chrono::microseconds(50), &sh->sabotaged, &sh->chains3);
    } catch (const Error& e) {
      std::fprintf(stderr, "parent's saboteur: %s\n", e.what());
      sh->failed = true;
    }
  });
  struct Joiner {
    std::atomic<bool>* stop;
    std::thread* t;
    ~Joiner() {
      stop->store(true);
      if (t->joinable()) t->join();
    }
  } joiner{&sab_stop, &sab};
  int walks = 0, stops = 0;
  std::string walk_error;
  std::size_t max_chain = 0;
  auto walk = [&] {
    max_chain = std::max(max_chain, m.stats().tables);
    if (!walk_error.empty()) return;
    walk_error = adv::check_walk(m, &keys[0], nkeys);
    ++walks;
  };
  for (int v = 0; v < kVictims && !sh->failed.load(); ++v) {
    Shared<AdvShared> vs;
    std::atomic<std::uint64_t>* vops = &vs->ops;
    const pid_t victim = fork_child([&] {
      return run_process(name, &keys[0], nkeys,
                         steady_keys + std::uint64_t(v) * kVictimOwners * kPer, kVictimOwners, 1,
                         std::uint64_t(100 + v) << 44, seed * 7 + v, vs.get(), vops,
                         /*saboteur=*/true);
    });
    // Let it get going (it has acknowledged some operations), then kill it at a random
    // moment; sometimes stop it first, or stop a steady process across the kill.
    ASSERT_TRUE(wait_until([&] { return vs->ops.load() > 20; }, seconds(30 * kSlow)));
    walk();
    const pid_t stopped = rng.chance(30) ? steady[rng.below(kSteady)] : 0;
    if (stopped != 0) {
      ::kill(stopped, SIGSTOP);
      ++stops;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(4000)));
    if (rng.chance(25)) {
      ::kill(victim, SIGSTOP);
      walk();  // the map works around a stopped process (its pins hold tables, nothing else)
    }
    ::kill(victim, SIGKILL);
    EXPECT_EQ(wait_for(victim, seconds(30)).signal, SIGKILL);
    walk();
    if (stopped != 0) ::kill(stopped, SIGCONT);
  }
  // A little more steady-state checking, with walks.
  const auto end = Clock::now() + milliseconds((kSanitized ? 2000 : 1000) * soak());
  while (Clock::now() < end && !sh->failed.load()) walk();
  sab_stop = true;
  sab.join();
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t pid : steady) {
    const ChildResult r = wait_for(pid, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "steady process " << pid << " " << r.describe();
  }
  EXPECT_EQ(walk_error, "");
  EXPECT_FALSE(sh->failed.load()) << "a child saw an impossible answer (see its output)";
  // Final states: a steady key holds exactly its last acknowledged state; a killed owner's key
  // the state after its last acknowledged operation or the one it had in flight.
  std::size_t present = 0;
  for (std::uint64_t i = 0; i < nkeys; ++i) {
    const std::uint64_t a = keys[i].acked.load();
    const std::uint64_t b = keys[i].started.load();
    const auto v = m.find(adv::key_of(i));
    if (i < steady_keys) {
      EXPECT_EQ(v, (a & 1) ? std::optional<std::uint64_t>(a) : std::nullopt) << "key id " << i;
    } else {
      EXPECT_TRUE(adv::answer_possible(a, b == a ? a : b - 1, v)) << adv::describe(i, a, b, v);
    }
    present += v.has_value() ? 1 : 0;
  }
  m.clear_stale_handles();
  m.compact();
  std::size_t others = 0;
  EXPECT_EQ(adv::check_walk(m, &keys[0], nkeys, &others), "");
  EXPECT_EQ(m.size(), present + others) << "size() must stay exact across kills";
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::uint64_t steady_ops = 0;
  for (int p = 0; p < kSteady; ++p) steady_ops += proc_ops[p].load();
  std::fprintf(stderr,
               "[ adversary] %llu steady ops, %llu reads, %d walks, %d kills, %d stops, "
               "%llu resizes, longest chain seen %zu, %llu too-small successors forced, "
               "%llu chains of 3+ seen\n",
               (unsigned long long)steady_ops, (unsigned long long)sh->reads.load(), walks,
               kVictims, stops, (unsigned long long)m.stats().resizes, max_chain,
               (unsigned long long)sh->sabotaged.load(), (unsigned long long)sh->chains3.load());
}

// Table v2 (fingerprints): lookups through Map::Session, whose view of the current table goes
// stale inside a session (replaced, migrated away), stay linearizable while the map churns from
// capacity 8 with too-small successors forced (chains of three); meanwhile dead claimers leave
// buckets CLAIMED with fingerprint 0 -- what a writer SIGKILLed between its claim CAS and its
// fingerprint store leaves -- or resume them after a pause (a SIGSTOPped claimer), and checks
// each resumed key through a Session made before the claim. Victim processes (owners, readers,
// session readers and a dead claimer each) are SIGKILLed at random moments, steady ones
// SIGSTOPped across kills. Afterwards every key is checked through find, find_many and a
// Session, and check() must pass (it verifies every fingerprint against its bucket).
TEST_F(AdversaryTest, SessionsAndDeadClaimsStayLinearizableWithKillsAndStops) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("adv-fp");
  Map m = Map::create(name, {.initial_capacity = 8});
  const int kSteady = 2, kOwners = 6, kReaders = 2, kSessionReaders = 4;
  const int kVictims = kSanitized ? 6 : 24, kVictimOwners = 2;
  const std::uint64_t steady_keys = std::uint64_t(kSteady) * kOwners * kPer;
  const std::uint64_t nkeys = steady_keys + std::uint64_t(kVictims) * kVictimOwners * kPer;
  SharedArray<adv::KeyState> keys(nkeys);
  Shared<AdvShared> sh;
  SharedArray<std::atomic<std::uint64_t>> proc_ops(kSteady);
  std::vector<pid_t> steady;
  for (int p = 0; p < kSteady; ++p) {
    steady.push_back(fork_child([&, p] {
      return run_process(name, &keys[0], nkeys, std::uint64_t(p) * kOwners * kPer, kOwners,
                         kReaders, std::uint64_t(p + 1) << 44, seed + p, sh.get(), &proc_ops[p],
                         /*saboteur=*/p == 0, kSessionReaders, /*dead_claimer=*/true);
    }));
  }
  ASSERT_TRUE(wait_until([&] { return sh->started.load() == kSteady; }, seconds(30 * kSlow)));
  int stops = 0;
  for (int v = 0; v < kVictims && !sh->failed.load(); ++v) {
    Shared<AdvShared> vs;
    std::atomic<std::uint64_t>* vops = &vs->ops;
    const pid_t victim = fork_child([&] {
      return run_process(name, &keys[0], nkeys,
                         steady_keys + std::uint64_t(v) * kVictimOwners * kPer, kVictimOwners, 1,
                         std::uint64_t(100 + v) << 44, seed * 7 + v, vs.get(), vops,
                         /*saboteur=*/v % 2 == 0, /*session_readers=*/1, /*dead_claimer=*/true);
    });
    ASSERT_TRUE(wait_until([&] { return vs->ops.load() > 20; }, seconds(30 * kSlow)));
    const pid_t stopped = rng.chance(30) ? steady[rng.below(kSteady)] : 0;
    if (stopped != 0) {
      ::kill(stopped, SIGSTOP);
      ++stops;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(20000)));
    if (rng.chance(25)) ::kill(victim, SIGSTOP);
    ::kill(victim, SIGKILL);
    EXPECT_EQ(wait_for(victim, seconds(30)).signal, SIGKILL);
    if (stopped != 0) ::kill(stopped, SIGCONT);
    if (vs->failed.load()) sh->failed = true;
  }
  const auto end = Clock::now() + milliseconds(2000 * soak());
  while (Clock::now() < end && !sh->failed.load()) std::this_thread::sleep_for(milliseconds(20));
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t pid : steady) {
    const ChildResult r = wait_for(pid, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "steady process " << pid << " " << r.describe();
  }
  EXPECT_FALSE(sh->failed.load()) << "a child saw an impossible answer (see its output)";
  // Every key through all three lookups: a steady key holds exactly its last acknowledged
  // state; a killed owner's key the state after its last acknowledged operation or the one it
  // had in flight -- the same one whichever lookup is asked.
  std::vector<std::uint64_t> ks(nkeys);
  for (std::uint64_t i = 0; i < nkeys; ++i) ks[i] = adv::key_of(i);
  std::vector<std::optional<std::uint64_t>> many(nkeys);
  m.find_many(ks, many);
  Map::Session session(m);
  for (std::uint64_t i = 0; i < nkeys; ++i) {
    const std::uint64_t a = keys[i].acked.load();
    const std::uint64_t b = keys[i].started.load();
    const auto v = m.find(ks[i]);
    if (i < steady_keys) {
      EXPECT_EQ(v, (a & 1) ? std::optional<std::uint64_t>(a) : std::nullopt) << "key id " << i;
    } else {
      EXPECT_TRUE(adv::answer_possible(a, b == a ? a : b - 1, v)) << adv::describe(i, a, b, v);
    }
    EXPECT_EQ(session.find(ks[i]), v) << "Session::find disagrees with find, key id " << i;
    EXPECT_EQ(many[i], v) << "find_many disagrees with find, key id " << i;
  }
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::fprintf(stderr,
               "[ adversary] %llu reads, %llu session reads, %llu dead claims (%llu resumed), "
               "%d kills, %d stops, %llu resizes, %llu too-small successors forced, %llu "
               "chains of 3+ seen\n",
               (unsigned long long)sh->reads.load(), (unsigned long long)sh->session_reads.load(),
               (unsigned long long)sh->dead_claims.load(),
               (unsigned long long)sh->resumed_claims.load(), kVictims, stops,
               (unsigned long long)m.stats().resizes, (unsigned long long)sh->sabotaged.load(),
               (unsigned long long)sh->chains3.load());
  EXPECT_GT(sh->session_reads.load(), 0u);
  EXPECT_GT(sh->resumed_claims.load(), 0u);
}

// Bulk replacement racing everything else: replacers (some killed at random moments) publish
// tables of kEntries keys [0, kEntries) with value round << 20 | key; writers churn their own
// keys (which each replacement wipes) from capacity 8, so built tables fill and get
// successors of their own; readers check that every replaced key, once the first replacement
// was acknowledged, is present with a value made for it. Afterwards size() is exact and every
// replaced key holds a value from one and the same replacement.
struct ReplaceAdvShared {
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::atomic<std::uint64_t> round{0};
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> writes{0};
  std::atomic<std::uint64_t> reads{0};
};

constexpr std::uint64_t kEntries = 300;

bool replacer(const std::string& name, ReplaceAdvShared* sh, std::atomic<std::uint64_t>* mine) {
  Map m = Map::open(name);
  detail::MapImpl& impl = m.impl();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> kv(kEntries);
  while (!sh->stop.load(std::memory_order_acquire)) {
    const std::uint64_t round = sh->round.fetch_add(1) + 1;
    for (std::uint64_t i = 0; i < kEntries; ++i) kv[i] = {i, round << 20 | i};
    const std::uint64_t t = impl.build_table(kEntries);
    impl.bulk_put_many(t, kv.data(), kv.size());
    impl.publish_replace(t);
    sh->published.fetch_add(1, std::memory_order_release);
    if (mine != nullptr) mine->fetch_add(1, std::memory_order_release);
  }
  return true;
}

bool churner(const std::string& name, int threads, std::uint64_t base, ReplaceAdvShared* sh) {
  Map m = Map::open(name);
  std::atomic<bool> ok{true};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      const std::uint64_t b = base + (std::uint64_t(t) << 24);
      adv::Xs rng{b | 1};
      try {
        while (!sh->stop.load(std::memory_order_relaxed) && ok) {
          const std::uint64_t k = b + rng.below(48);
          switch (rng.below(5)) {
            case 0:
              m.erase(k);
              break;
            case 1:
              m.fetch_add(k, 2);
              break;
            default:
              m.insert_or_assign(k, k * 2);
              break;
          }
          if (const auto v = m.find(k)) {
            // Only this thread writes k: k * 2 plus some 2s, or a replacement wiped it.
            if ((*v & 1) != 0) {
              std::fprintf(stderr, "churner pid %d: key %llu has odd value %llu\n", (int)::getpid(),
                           (unsigned long long)k, (unsigned long long)*v);
              ok = false;
            }
          }
          sh->writes.fetch_add(1, std::memory_order_relaxed);
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "churner pid %d: %s\n", (int)::getpid(), e.what());
        ok = false;
      }
    });
  }
  // A reader thread over the replaced keys.
  ts.emplace_back([&] {
    adv::Xs rng{base | 3};
    try {
      while (!sh->stop.load(std::memory_order_relaxed) && ok) {
        const bool any = sh->published.load(std::memory_order_acquire) > 0;
        const std::uint64_t k = rng.below(kEntries);
        const auto v = m.find(k);
        if ((any && !v) || (v && (*v & 0xfffff) != k)) {
          std::fprintf(stderr, "reader pid %d: replaced key %llu: %s %llu\n", (int)::getpid(),
                       (unsigned long long)k, v ? "value" : "absent",
                       v ? (unsigned long long)*v : 0ULL);
          ok = false;
        }
        sh->reads.fetch_add(1, std::memory_order_relaxed);
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "reader pid %d: %s\n", (int)::getpid(), e.what());
      ok = false;
    }
  });
  for (auto& t : ts) t.join();
  if (!ok) sh->failed = true;
  return ok;
}

TEST_F(AdversaryTest, BulkReplacementRacingWritersReadersAndKills) {
  const std::uint64_t seed = test_seed();
  Rng rng(seed);
  ScopedName name("adv-replace");
  Map m = Map::create(name, {.initial_capacity = 8});
  Shared<ReplaceAdvShared> sh;
  std::vector<pid_t> steady;
  steady.push_back(fork_child([&] { return replacer(name, sh.get(), nullptr); }));
  for (int p = 0; p < 2; ++p) {
    steady.push_back(
        fork_child([&, p] { return churner(name, 4, std::uint64_t(p + 1) << 40, sh.get()); }));
  }
  ASSERT_TRUE(wait_until([&] { return sh->published.load() > 0; }, seconds(30 * kSlow)));
  const int kKills = (kSanitized ? 6 : 20) * soak();
  for (int i = 0; i < kKills && !sh->failed.load(); ++i) {
    Shared<std::atomic<std::uint64_t>> mine(0);
    const pid_t victim = fork_child([&] { return replacer(name, sh.get(), mine.get()); });
    ASSERT_TRUE(wait_until([&] { return mine->load() > 0; }, seconds(30 * kSlow)));
    std::this_thread::sleep_for(std::chrono::microseconds(rng.below(3000)));
    ::kill(victim, SIGKILL);
    EXPECT_EQ(wait_for(victim, seconds(30)).signal, SIGKILL);
    // The parent's view meanwhile: every replaced key present, with a value made for it.
    for (std::uint64_t k = 0; k < kEntries; k += 7) {
      const auto v = m.find(k);
      ASSERT_TRUE(v.has_value()) << "replaced key " << k << " absent after kill " << i;
      ASSERT_EQ(*v & 0xfffff, k);
    }
  }
  sh->stop.store(true, std::memory_order_release);
  for (const pid_t pid : steady) {
    const ChildResult r = wait_for(pid, seconds(60 * kSlow));
    EXPECT_TRUE(r.ok()) << "child " << pid << " " << r.describe();
  }
  EXPECT_FALSE(sh->failed.load()) << "a child saw an impossible answer (see its output)";
  m.clear_stale_handles();
  m.compact();
  std::size_t walked = 0, replaced = 0;
  std::uint64_t round = 0;
  bool one_round = true;
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    ++walked;
    if (k < kEntries) {
      ++replaced;
      if (round == 0) round = v >> 20;
      if (v >> 20 != round || (v & 0xfffff) != k) one_round = false;
    }
  });
  EXPECT_EQ(replaced, kEntries);
  EXPECT_TRUE(one_round) << "replaced keys from two different replacements";
  EXPECT_EQ(m.size(), walked) << "size() must stay exact across killed replacements";
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::fprintf(stderr,
               "[ adversary] %llu replacements, %llu writes, %llu reads, %d kills, %llu resizes\n",
               (unsigned long long)sh->published.load(), (unsigned long long)sh->writes.load(),
               (unsigned long long)sh->reads.load(), kKills, (unsigned long long)m.stats().resizes);
}

}  // namespace
}  // namespace shmap::test::mp
