// The record heap's crash windows, each hit exactly: a child process dies at a test hook inside
// a write (or inside a reclaim), and the parent checks that the map lost nothing it had
// acknowledged, that check() finds the leaked block, and that compact() gives it back -- and
// that nothing is ever freed twice (a block freed twice would be handed to two keys, which
// check() reports and the value round trips below would catch).
#include "shmap/detail/records.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "mp_util.hpp"
#include "records_util.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::test::mp {
namespace {

using detail::RecordHeap;

class Records : public MpTest {};

RecordStats audit(const RecMap& m, bool* ok) {
  RecordStats rs;
  const CheckReport rep = m.check(&rs);
  *ok = rep.ok;
  for (const auto& p : rep.problems) std::fprintf(stderr, "check: %s\n", p.c_str());
  return rs;
}

/// Runs `write` in a child that dies (exit 0) in the hook `hook`; returns whether it died there.
bool die_in(void (*&hook)(), const std::function<void()>& write) {
  const ChildResult r = run_child(
      [&] {
        hook = [] { ::_exit(42); };
        write();
        return false;  // the hook never ran
      },
      std::chrono::seconds(30 * kSlow));
  return r.exited && r.code == 42;
}

TEST_F(Records, AWriterKilledAfterFillingItsRecordLeaksItUntilCompact) {
  ScopedName n("fill");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 100; ++k) m.insert_or_assign(k, make(k, 1));
  ASSERT_TRUE(die_in(RecordHeap::after_fill_for_test, [&] {
    RecMap c = RecMap::open(n.str());
    c.insert_or_assign(7, make(7, 2));
  }));
  bool ok = true;
  RecordStats rs = audit(m, &ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(rs.leaked, 1u) << "the dead writer's filled, unpublished record";
  EXPECT_EQ(rs.live, 100u);
  // The write never happened: the old value is there, whole.
  ASSERT_TRUE(m.find(7).has_value());
  EXPECT_EQ(m.find(7)->gen, 1u);
  m.compact();
  rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 100u);
}

TEST_F(Records, AWriterKilledBetweenItsCasAndTheRetireLeaksTheOldRecordUntilCompact) {
  ScopedName n("retire");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 100; ++k) m.insert_or_assign(k, make(k, 1));
  ASSERT_TRUE(die_in(RecordHeap::before_retire_for_test, [&] {
    RecMap c = RecMap::open(n.str());
    c.insert_or_assign(9, make(9, 2));
  }));
  // The CAS landed: the new value is the map's.
  ASSERT_TRUE(m.find(9).has_value());
  EXPECT_EQ(m.find(9)->gen, 2u);
  EXPECT_TRUE(intact(*m.find(9), 9));
  bool ok = true;
  RecordStats rs = audit(m, &ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(rs.leaked, 1u) << "the replaced record, never retired";
  m.compact();
  rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.leaked, 0u);
}

TEST_F(Records, AReclaimerKilledWhileFreeingABatchNeverFreesABlockTwice) {
  ScopedName n("batch");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 200; ++k) m.insert_or_assign(k, make(k, 1));
  // Retire 200 records (erase them all); the child's compact() frees the batch and dies at
  // its first block.
  for (std::uint64_t k = 0; k < 200; ++k) ASSERT_TRUE(m.erase(k));
  ASSERT_TRUE(die_in(RecordHeap::in_batch_free_for_test, [&] {
    RecMap c = RecMap::open(n.str());
    c.compact();
  }));
  bool ok = true;
  RecordStats rs = audit(m, &ok);
  EXPECT_EQ(rs.leaked, 1u) << "the block the reclaimer held when it died";
  m.compact();
  rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.leaked, 0u);
  // Every block is handed out once: fill the map again from the free lists and read back.
  for (std::uint64_t k = 0; k < 400; ++k) m.insert_or_assign(k, make(k, 3));
  for (std::uint64_t k = 0; k < 400; ++k) {
    const auto v = m.find(k);
    ASSERT_TRUE(v.has_value()) << k;
    EXPECT_TRUE(intact(*v, k) && v->gen == 3) << k;
  }
  rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.live, 400u);
  EXPECT_EQ(rs.leaked, 0u);
}

/// A large value (a record of a large class, one to a slab) that names its key and version.
std::string large_value(std::uint64_t k, std::uint64_t ver) {
  std::string v = "k" + std::to_string(k) + "v" + std::to_string(ver) + ":";
  v.resize(5000 + (k * 7919 + ver * 104729) % 300000, static_cast<char>('a' + (k + ver) % 26));
  return v;
}

// The same crash windows on large records: a dead writer's filled large block is leaked, found
// and given back; a reclaimer dead in the middle of a batch of large blocks frees none twice.
TEST_F(Records, LargeRecordsOfKilledWritersAndReclaimersAreFoundAndGivenBackOnce) {
  ScopedName n("large");
  StringMap m = StringMap::create(n.str(), {.initial_capacity = 8});
  for (std::uint64_t k = 0; k < 40; ++k) m.insert_or_assign(std::to_string(k), large_value(k, 1));
  ASSERT_TRUE(die_in(RecordHeap::after_fill_for_test, [&] {
    StringMap c = StringMap::open(n.str());
    c.insert_or_assign("7", large_value(7, 2));
  }));
  RecordStats rs;
  EXPECT_FALSE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 1u) << "the dead writer's filled, unpublished large record";
  EXPECT_EQ(m.find("7"), large_value(7, 1));
  m.compact();
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 40u);
  // Retire them all; the child's compact() dies freeing the batch's first block.
  for (std::uint64_t k = 0; k < 40; ++k) ASSERT_TRUE(m.erase(std::to_string(k)));
  ASSERT_TRUE(die_in(RecordHeap::in_batch_free_for_test, [&] {
    StringMap c = StringMap::open(n.str());
    c.compact();
  }));
  m.check(&rs);
  EXPECT_EQ(rs.leaked, 1u) << "the block the reclaimer held when it died";
  m.compact();
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  // Every block is handed out once: refill from the free lists and read everything back.
  for (std::uint64_t k = 0; k < 80; ++k) m.insert_or_assign(std::to_string(k), large_value(k, 3));
  for (std::uint64_t k = 0; k < 80; ++k) ASSERT_EQ(m.find(std::to_string(k)), large_value(k, 3));
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.live, 80u);
  EXPECT_EQ(rs.leaked, 0u);
}

// A multimap writer killed after its CAS, before it counted its value: the value is there and
// so is its count -- the next write to that bucket applies the dead writer's lane record
// before its own, and so does freeing the dead writer's handle slot. No recount.
TEST_F(Records, AMultimapWriterKilledBetweenItsCasAndItsCountLosesNoCount) {
  ScopedName n("multi");
  StringMultimap m = StringMultimap::create(n.str(), {.initial_capacity = 8});
  m.insert("k", "first");
  for (int i = 0; i < 50; ++i) m.insert("other", std::to_string(i));
  ASSERT_EQ(m.size(), 51u);
  ASSERT_TRUE(die_in(detail::MapImpl::after_write_cas_for_test, [&] {
    StringMultimap c = StringMultimap::open(n.str());
    c.insert("k", "second");
  }));
  EXPECT_EQ(m.find("k"), (std::vector<std::string>{"first", "second"})) << "the CAS landed";
  // The next write to the bucket counts the dead writer's value first, then its own.
  m.insert("k", "third");
  EXPECT_EQ(m.size(), 53u);
  // Killed in an erase of two values at once: freeing its slot applies its -2.
  ASSERT_TRUE(die_in(detail::MapImpl::after_write_cas_for_test, [&] {
    StringMultimap c = StringMultimap::open(n.str());
    c.erase("k", "third");
    c.erase("k");  // "first" and "second"
  }));
  EXPECT_EQ(m.count("k"), 2u) << "the hook fires on the first erase's CAS";
  EXPECT_GE(m.clear_stale_handles(), 1u);
  EXPECT_EQ(m.size(), 52u) << "the dead writer's -1, applied when its slot was freed";
  // Each removal of a whole key counts all its values, also when its writer dies.
  ASSERT_TRUE(die_in(detail::MapImpl::after_write_cas_for_test, [&] {
    StringMultimap c = StringMultimap::open(n.str());
    c.erase("other");
  }));
  EXPECT_EQ(m.count("other"), 0u);
  EXPECT_GE(m.clear_stale_handles(), 1u);
  EXPECT_EQ(m.size(), 2u);
  RecordStats rs;
  m.compact();  // the lists the dead writers never retired
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(m.size(), 2u) << "compact counts nothing";
  m.insert("k", "fourth");
  EXPECT_EQ(m.size(), 3u);
}

TEST_F(Records, ARecordOutlivesItsReplacementWhileAReaderIsPinned) {
  // A reader pinned before a record is replaced could still be copying it: no record retired
  // after the pin is reused until the reader moves on, however many writes come after.
  ScopedName n("pinned");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8});
  m.insert_or_assign(1, make(1, 0));
  Shared<std::atomic<int>> phase;
  Gate go;
  const pid_t reader = fork_child([&] {
    RecMap c = RecMap::open(n.str());
    bool ok = true;
    // A for_each callback runs pinned: inside it, hold the pin while the parent churns.
    c.for_each([&](const std::uint64_t&, const Rec& r) {
      ok = intact(r, 1);
      phase->store(1, std::memory_order_release);
      ok = go.wait() && ok;
    });
    return ok;
  });
  ASSERT_GT(reader, 0);
  ASSERT_TRUE(wait_until([&] { return phase->load(std::memory_order_acquire) == 1; },
                         std::chrono::seconds(30 * kSlow)));
  // 20,000 replacements: without the grace period the pinned record would be reused many
  // times over (a reclaim pass every 4,096 retirements of these small records).
  for (std::uint64_t g = 1; g <= 20000; ++g) m.insert_or_assign(1, make(1, g));
  bool ok = true;
  RecordStats rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  // Every record replaced since the reader pinned is still retired, none reused: the reader
  // could be copying any of them (it pinned before the first replacement).
  EXPECT_EQ(rs.retired, 20000u) << "a record was reused under a pinned reader";
  EXPECT_EQ(rs.live, 1u);
  go.release();
  const ChildResult r = wait_for(reader, std::chrono::seconds(30 * kSlow));
  EXPECT_TRUE(r.exited && r.code == 0) << "the reader saw its record change under its pin";
  m.compact();
  rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.retired, 0u) << "once the reader is gone, compact() frees every retired record";
  EXPECT_EQ(rs.live, 1u);
}

TEST_F(Records, RunningOutOfSpaceLosesNothingAndLeaksNothing) {
  ScopedName n("full");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8, .max_bytes = 8u << 20});
  std::uint64_t k = 0;
  try {
    for (;; ++k) m.insert_or_assign(k, make(k, 1));
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::out_of_space) << e.what();
  }
  ASSERT_GT(k, 1000u);
  EXPECT_FALSE(m.find(k).has_value()) << "the write that failed left nothing";
  for (std::uint64_t i = 0; i < k; ++i) {
    const auto v = m.find(i);
    ASSERT_TRUE(v.has_value()) << i;
    ASSERT_TRUE(intact(*v, i)) << i;
  }
  EXPECT_EQ(m.size(), k);
  bool ok = true;
  RecordStats rs = audit(m, &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(rs.leaked, 0u);
  // Erasing makes room again: records are reused once retired and reclaimed.
  for (std::uint64_t i = 0; i < k / 2; ++i) ASSERT_TRUE(m.erase(i));
  m.compact();
  for (std::uint64_t i = 0; i < k / 4; ++i) ASSERT_NO_THROW(m.insert_or_assign(i, make(i, 2)));
}

}  // namespace
}  // namespace shmap::test::mp
