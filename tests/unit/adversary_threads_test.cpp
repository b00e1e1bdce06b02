// Adversarial thread-only checks (label "concurrency": these run under TSan too).
// - Owned keys, per-key linearizability (tests/adversary_core.hpp) from capacity 8 with 18+
//   threads on one Map (threads past the 15th share the overflow lane), readers with find and
//   find_many, and walks.
// - The writer gate: two threads of one Map holding writers at once; and a holder on the
//   shared overflow lane, which must still wait for the writes of other overflow-lane threads
//   that were under way when it set the gate.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>
#include <vector>

#include "adversary_core.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap {
namespace {

using test::ScopedName;
namespace adv = test::adv;

bool sanitized() { return std::getenv("SHMAP_SANITIZED") != nullptr; }

TEST(Adversary, OwnedKeysStayLinearizableThroughTinyTableChurn) {
  ScopedName n("adv-lin");
  auto m = Map::create(n, {.initial_capacity = 8});
  constexpr int kOwners = 8, kReaders = 10;
  constexpr std::uint64_t kPer = 3, kKeys = kOwners * kPer;
  std::vector<adv::KeyState> keys(kKeys);
  std::atomic<bool> stop{false}, ok{true};
  std::atomic<std::uint64_t> ops{0}, reads{0};
  const std::uint64_t max_ops = sanitized() ? 6000 : 40000;
  std::atomic<int> owners_left{kOwners};
  std::vector<std::thread> ts;
  for (int t = 0; t < kOwners; ++t) {
    ts.emplace_back([&, t] {
      if (!adv::run_owner(m, keys.data(), t * kPer, kPer, std::uint64_t(t + 1) << 40, 77 + t, &stop,
                          max_ops, &ops)) {
        ok = false;
      }
      if (--owners_left == 0) stop = true;
    });
  }
  for (int t = 0; t < kReaders; ++t) {
    ts.emplace_back([&, t] {
      if (!adv::run_reader(m, keys.data(), kKeys, 1000 + t, &stop, &reads)) ok = false;
    });
  }
  // Successors that are too small, forced (see run_saboteur): chains of three all the time.
  std::atomic<std::uint64_t> sabotaged{0}, chains3{0};
  ts.emplace_back([&] {
    try {
      adv::run_saboteur(m, &stop, std::chrono::microseconds(20), &sabotaged, &chains3);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what();
      ok = false;
    }
  });
  int walks = 0;
  while (!stop.load() && ok.load()) {
    const std::string why = adv::check_walk(m, keys.data(), kKeys);
    EXPECT_EQ(why, "");
    if (!why.empty()) ok = false;
    ++walks;
  }
  stop = true;
  for (auto& t : ts) t.join();
  EXPECT_TRUE(ok.load());
  std::size_t present = 0;
  for (std::uint64_t i = 0; i < kKeys; ++i) {
    const std::uint64_t s = keys[i].acked.load();
    const auto v = m.find(adv::key_of(i));
    EXPECT_EQ(v, (s & 1) ? std::optional<std::uint64_t>(s) : std::nullopt) << i;
    present += s & 1;
  }
  EXPECT_EQ(m.size(), present);
  EXPECT_TRUE(m.check().ok);
  std::fprintf(stderr,
               "[ adversary] %llu ops, %llu reads, %d walks, %llu resizes, %llu too-small "
               "successors forced, %llu chains of 3+ seen\n",
               (unsigned long long)ops.load(), (unsigned long long)reads.load(), walks,
               (unsigned long long)m.stats().resizes, (unsigned long long)sabotaged.load(),
               (unsigned long long)chains3.load());
}

// Table v2 (fingerprints): the same owned keys, read through Map::Session (views that go stale
// inside each session) while dead claimers leave CLAIMED buckets with fingerprint 0 (a writer
// killed between its claim CAS and its fingerprint store) or resume them later (a stopped
// one) and check each resumed key through a Session made before the claim; too-small
// successors forced all the while (chains of three).
TEST(Adversary, SessionsAndDeadClaimsStayLinearizableThroughTinyTableChurn) {
  ScopedName n("adv-fp");
  auto m = Map::create(n, {.initial_capacity = 8});
  constexpr int kOwners = 6, kReaders = 2, kSessionReaders = 5, kDeadClaimers = 2;
  constexpr std::uint64_t kPer = 3, kKeys = kOwners * kPer;
  std::vector<adv::KeyState> keys(kKeys);
  std::atomic<bool> stop{false}, ok{true};
  std::atomic<std::uint64_t> ops{0}, reads{0}, session_reads{0}, dead{0}, resumed{0};
  const std::uint64_t max_ops = sanitized() ? 8000 : 100000;
  std::atomic<int> owners_left{kOwners};
  std::vector<std::thread> ts;
  auto guarded = [&](auto body) {
    return [&, body] {
      try {
        if (!body()) ok = false;
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
        ok = false;
      }
      if (!ok) stop = true;
    };
  };
  for (int t = 0; t < kOwners; ++t) {
    ts.emplace_back(guarded([&, t] {
      const bool r = adv::run_owner(m, keys.data(), t * kPer, kPer, std::uint64_t(t + 1) << 40,
                                    91 + t, &stop, max_ops, &ops);
      if (--owners_left == 0) stop = true;
      return r;
    }));
  }
  for (int t = 0; t < kReaders; ++t) {
    ts.emplace_back(guarded(
        [&, t] { return adv::run_reader(m, keys.data(), kKeys, 2000 + t, &stop, &reads); }));
  }
  for (int t = 0; t < kSessionReaders; ++t) {
    ts.emplace_back(guarded([&, t] {
      return adv::run_session_reader(m, keys.data(), kKeys, 3000 + t, &stop, &session_reads);
    }));
  }
  for (int t = 0; t < kDeadClaimers; ++t) {
    ts.emplace_back(guarded([&, t] {
      return adv::run_dead_claimer(m, &stop, std::uint64_t(t + 1) << 50, 4000 + t, &dead, &resumed);
    }));
  }
  std::atomic<std::uint64_t> sabotaged{0}, chains3{0};
  ts.emplace_back(guarded([&] {
    adv::run_saboteur(m, &stop, std::chrono::microseconds(50), &sabotaged, &chains3);
    return true;
  }));
  for (auto& t : ts) t.join();
  EXPECT_TRUE(ok.load());
  Map::Session s(m);
  std::size_t present = 0;
  for (std::uint64_t i = 0; i < kKeys; ++i) {
    const std::uint64_t a = keys[i].acked.load();
    const auto want = (a & 1) ? std::optional<std::uint64_t>(a) : std::nullopt;
    EXPECT_EQ(m.find(adv::key_of(i)), want) << i;
    EXPECT_EQ(s.find(adv::key_of(i)), want) << i;
    present += a & 1;
  }
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::fprintf(stderr,
               "[ adversary] %llu ops, %llu reads, %llu session reads, %llu dead claims (%llu "
               "resumed), %llu resizes, %llu too-small successors, %llu chains of 3+\n",
               (unsigned long long)ops.load(), (unsigned long long)reads.load(),
               (unsigned long long)session_reads.load(), (unsigned long long)dead.load(),
               (unsigned long long)resumed.load(), (unsigned long long)m.stats().resizes,
               (unsigned long long)sabotaged.load(), (unsigned long long)chains3.load());
  EXPECT_GT(session_reads.load(), 0u);
  EXPECT_GT(resumed.load(), 0u);
}

// Two threads of one Map take the point-in-time gate in a loop. The gate must be held by one
// of them at a time: hold_writers() returning in both at once means neither dump is a picture
// of one moment, and the first release voids the other's hold.
//
// Suspected interleaving (hold_writers): A loads gate 0, stores gate_thread_ = A; B loads
// gate 0, stores gate_thread_ = B; A's CAS sets the gate (owner word of the Map); B's CAS
// fails, B reloads the gate = this Map's owner word and gate_is_mine() sees gate_thread_ == B:
// B returns holding "its" gate while A holds it too (and A's own writes now wait on it).
TEST(Adversary, TwoThreadsOfOneMapNeverHoldTheGateTogether) {
  ScopedName n("adv-gate2");
  auto m = Map::create(n, {.initial_capacity = 8});
  detail::MapImpl& impl = m.impl();
  std::atomic<int> inside{0}, overlaps{0}, broken{0};
  std::atomic<bool> go{false};
  const int rounds = sanitized() ? 3000 : 30000;
  auto body = [&] {
    while (!go.load()) std::this_thread::yield();
    for (int r = 0; r < rounds; ++r) {
      try {
        impl.hold_writers();
      } catch (const Error&) {
        ++broken;  // timed out waiting for the other holder: acceptable here
        continue;
      }
      if (inside.fetch_add(1) != 0) ++overlaps;
      std::this_thread::yield();
      inside.fetch_sub(1);
      if (!impl.release_writers()) ++broken;
    }
  };
  std::thread a(body), b(body);
  go = true;
  a.join();
  b.join();
  std::fprintf(stderr, "[ adversary] gate: %d overlaps, %d broken holds in 2 x %d rounds\n",
               overlaps.load(), broken.load(), rounds);
  EXPECT_EQ(overlaps.load(), 0) << "two threads held the writer gate at once";
  EXPECT_EQ(broken.load(), 0) << "a hold was released by someone else";
}

// A holder whose thread number is past the 15th shares the overflow lane with other threads.
// hold_writers() skips its own lane when it waits for writes under way -- the whole shared
// lane -- so a write by another overflow-lane thread that passed the gate check before the
// gate was set can land after hold_writers() returned. Detected as a counter that changes
// while the gate is held.
TEST(Adversary, HolderOnTheOverflowLaneWaitsForOverflowLaneWriters) {
  ScopedName n("adv-gate-lane");
  // One handle slot: no extra slots can be had, so every thread past the 15th of this Map
  // shares the overflow lane (lane 15 of its slot).
  auto m = Map::create(n, {.initial_capacity = 64, .max_handles = 1});
  detail::MapImpl& impl = m.impl();
  // 23 threads alive at once hold 23 distinct thread numbers, so at least 8 are past the
  // 15th (numbers are reused, in any order): the first of those becomes the holder.
  constexpr int kThreads = 23;
  std::atomic<bool> stop{false}, holder_taken{false};
  std::atomic<int> ready{0}, writers{0};
  std::atomic<int> violations{0}, holds{0}, timeouts{0};
  std::atomic<std::size_t> holder_number{0};
  auto hold_loop = [&] {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(sanitized() ? 6 : 4);
    std::uint64_t before[kThreads];
    while (std::chrono::steady_clock::now() < end) {
      try {
        impl.hold_writers();
      } catch (const Error&) {
        ++timeouts;
        continue;
      }
      for (int t = 0; t < kThreads; ++t)
        before[t] = m.find(static_cast<std::uint64_t>(t)).value_or(0);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
      for (int t = 0; t < kThreads; ++t) {
        if (m.find(static_cast<std::uint64_t>(t)).value_or(0) != before[t]) {
          ++violations;
          break;
        }
      }
      impl.release_writers();
      ++holds;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      (void)m.find(0);  // takes this thread's number (and lane) now
      ++ready;
      while (ready.load() < kThreads) std::this_thread::yield();  // all numbers taken
      if (detail::thread_number() >= detail::kLanes - 1 && !holder_taken.exchange(true)) {
        holder_number = detail::thread_number();
        while (writers.load() < kThreads - 1) std::this_thread::yield();
        hold_loop();
        stop = true;
        return;
      }
      ++writers;
      for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        m.fetch_add(static_cast<std::uint64_t>(t), 1);
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE(holder_taken.load())
      << "no thread past the 15th: the holder must use the overflow lane";
  ASSERT_GE(holder_number.load(), detail::kLanes - 1);
  std::fprintf(stderr, "[ adversary] overflow-lane holder: %d holds, %d violations, %d timeouts\n",
               holds.load(), violations.load(), timeouts.load());
  EXPECT_EQ(violations.load(), 0) << "a write landed while the writer gate was held";
  EXPECT_GT(holds.load(), 0);
}

}  // namespace
}  // namespace shmap

namespace shmap::detail {
namespace {

// Minimal, deterministic repro of the read bug found by the tests above. Chain
// top -> small -> old, k LIVE in old (not yet migrated). A writer of another key k2 settles
// k2 in `small`, which seals the first EMPTY bucket of k2's run there -- a bucket on k's run
// in `small` too. A lookup of k then probes top (absent), small (SEALED: "forward") and, on
// that forward, looks again only at the tables newer than small -- never at `old`, which
// still holds k. It answers absent for a key whose insert was acknowledged.
TEST(AdversaryProtocol, SealedMiddleTableDoesNotHideTheOldestTable) {
  ScopedName name("adv-sealed-middle");
  Map map = Map::create(name, {.initial_capacity = 64});
  MapImpl& m = map.impl();
  const std::uint64_t k = 12345, v = 777;
  ASSERT_TRUE(map.insert(k, v));
  for (std::uint64_t i = 0; i < 10; ++i) map.insert(1000 + i, i);
  PinGuard pin(m);
  TableHeader* old = m.table(m.header().current_table.load());
  const std::uint64_t small_off = m.create_table(8, m.offset_of(old));
  m.link_successor(old, small_off);  // a successor that turns out too small
  TableHeader* small = m.table(small_off);
  m.grow_stuck(small);  // ... gets its own successor: top -> small -> old
  TableHeader* top = m.table(m.header().current_table.load());
  ASSERT_EQ(top->older.load(), small_off);
  ASSERT_EQ(small->older.load(), m.offset_of(old));
  // Another key whose home in `small` is k's home there.
  std::uint64_t k2 = 1;
  while (k2 == k || m.home(k2, small) != m.home(k, small)) ++k2;
  m.settle(small, top, k2);  // what a writer of k2 does before writing k2 in top
  ASSERT_EQ(read_cell(*m.bucket(small, m.home(k, small)).slot).state(), kSealed);
  ASSERT_EQ(read_cell(*m.probe(old, k, false).bucket.slot).state(), kLive) << "k not migrated yet";
  EXPECT_EQ(map.find(k), v) << "find hid k, still LIVE in the oldest table";
  std::optional<std::uint64_t> out[1];
  const std::uint64_t keys[1] = {k};
  map.find_many(keys, out);
  EXPECT_EQ(out[0], v) << "find_many hid k";
}

}  // namespace
}  // namespace shmap::detail
