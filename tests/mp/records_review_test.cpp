// Review tests for the record heap (branch review/records): each reproduces a suspected bug.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <cstring>
#include <thread>

#include "mp_util.hpp"
#include "records_util.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"
#include "shmap/typed_map.hpp"

namespace shmap::test::mp {
namespace {

using detail::RecordHeap;
using detail::SegmentHeader;

/// The segment header through a mapping of our own (read only: we only watch).
class HeaderView {
 public:
  explicit HeaderView(const std::string& name) {
    const int fd = ::open(shm_path(name).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("open");
    p_ = ::mmap(nullptr, detail::kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p_ == MAP_FAILED) throw std::runtime_error("mmap");
  }
  ~HeaderView() { ::munmap(p_, detail::kPage); }
  SegmentHeader& h() const { return *static_cast<SegmentHeader*>(p_); }

 private:
  void* p_;
};

class RecordsReview : public MpTest {};

// Shared state for the hooks (set before fork; hooks are plain function pointers): the hook
// says it is in, then waits (bounded) for the parent's go.
std::atomic<int>* g_in_hook = nullptr;
std::atomic<int>* g_go = nullptr;

void signal_and_wait() {
  g_in_hook->store(1, std::memory_order_release);
  if (!wait_until([] { return g_go->load(std::memory_order_acquire) != 0; }, seconds(60))) {
    ::_exit(7);
  }
}

// audit() takes a point-in-time hold (hold_writers) but never checks that the hold is still
// in force before it calls a block "leaked". The hold has a lease (2 s): an auditor stopped or
// slowed past it has its gate broken by the writers, which then allocate blocks the audit
// finds in no list -- compact() retires a block that is being published: the key's record is
// freed and handed to another key.
TEST_F(RecordsReview, AnAuditPastItsLeaseRetiresABlockAWriterIsAboutToPublish) {
  ScopedName n("lease");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 64});
  for (std::uint64_t k = 0; k < 20; ++k) m.insert_or_assign(k, make(k, 1));
  HeaderView hv(n.str());
  Shared<std::atomic<int>> w1_in, w2_in, w1_go, w2_go;

  // W1: stops inside a write (after filling its block), so the auditor's hold waits for it.
  g_in_hook = w1_in.get();
  g_go = w1_go.get();
  const pid_t w1 = fork_child([&] {
    RecMap c = RecMap::open(n.str());
    RecordHeap::after_fill_for_test = &signal_and_wait;
    c.insert_or_assign(5, make(5, 2));
    return true;
  });
  ASSERT_GT(w1, 0);
  ASSERT_TRUE(wait_until([&] { return w1_in->load() == 1; }, seconds(20)));

  // C: compact() -> audit(true). Its hold waits for W1; we stop it there (past the gate CAS
  // and the epoch bump), as any process can be stopped.
  const std::uint64_t epoch_before = hv.h().global_epoch.load();
  const pid_t c = fork_child([&] {
    RecMap x = RecMap::open(n.str());
    x.compact();
    return true;
  });
  ASSERT_GT(c, 0);
  ASSERT_TRUE(wait_until(
      [&] { return hv.h().writer_gate.load() != 0 && hv.h().global_epoch.load() > epoch_before; },
      seconds(20)));
  ASSERT_EQ(::kill(c, SIGSTOP), 0);
  ASSERT_TRUE(wait_stopped(c, seconds(10)));
  w1_go->store(1);  // W1's write ends; W1 exits
  ASSERT_TRUE(wait_for(w1, seconds(20)).ok());

  // W2: a write that waits for the gate, breaks it once the lease is over, allocates and
  // fills its block, and stops before its CAS.
  g_in_hook = w2_in.get();
  g_go = w2_go.get();
  const pid_t w2 = fork_child([&] {
    RecMap x = RecMap::open(n.str());
    RecordHeap::after_fill_for_test = &signal_and_wait;
    x.insert_or_assign(100, make(100, 1));
    return true;
  });
  ASSERT_GT(w2, 0);
  ASSERT_TRUE(wait_until([&] { return w2_in->load() == 1; }, seconds(20)))
      << "the writer never got past the lease";

  // C goes on: its audit finds W2's block in no list and retires it.
  ASSERT_EQ(::kill(c, SIGCONT), 0);
  const ChildResult rc = wait_for(c, seconds(30));
  ASSERT_TRUE(rc.ok()) << rc.describe();
  w2_go->store(1);
  ASSERT_TRUE(wait_for(w2, seconds(20)).ok());

  // Key 100's record is live and retired at once.
  RecordStats rs;
  const CheckReport rep = m.check(&rs);
  for (const auto& p : rep.problems) std::fprintf(stderr, "check: %s\n", p.c_str());
  EXPECT_TRUE(rep.ok) << "a published record was retired by compact()";
  // Let reclamation free it and new keys reuse it.
  m.compact();
  for (std::uint64_t k = 1000; k < 1200; ++k) m.insert_or_assign(k, make(k, 1));
  const auto v = m.find(100);
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(intact(*v, 100)) << "key 100 now reads key " << v->key << "'s value";
}

/// The whole object, read-write, as another attacher with write access has it.
class RawObject {
 public:
  explicit RawObject(const std::string& name) {
    const int fd = ::open(shm_path(name).c_str(), O_RDWR | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) throw std::runtime_error("open");
    size_ = static_cast<std::size_t>(st.st_size);
    p_ = static_cast<char*>(::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    if (p_ == MAP_FAILED) throw std::runtime_error("mmap");
  }
  ~RawObject() { ::munmap(p_, size_); }
  SegmentHeader& h() const { return *reinterpret_cast<SegmentHeader*>(p_); }
  template <class T>
  T& at(std::uint64_t off) const {
    return *reinterpret_cast<T*>(p_ + off);
  }

 private:
  char* p_;
  std::size_t size_;
};

using Big = std::array<std::uint64_t, 14>;  // 112 bytes: 128-byte records, 2^16 % 128 == 0
Big make_big(std::uint64_t k) {
  Big b{};
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = k * 1000 + i;
  return b;
}

// One damaged word -- a slab's extent_bytes doubled (still "valid": <= 2 * kSlabBytes) -- makes
// the slab overlap the next one. audit() accepts overlapping slabs: the doubled slab's
// phantom blocks are exactly the next slab's blocks, marked (live) under the next slab, never
// under this one, so they count as "leaked"; compact() retires them -- every live record of
// the next slab -- and reclamation hands them to new keys. Damage must be a check() problem,
// never a repair that corrupts.
TEST_F(RecordsReview, ASlabWhoseExtentOverlapsTheNextIsDamageNotLeakedRecords) {
  ScopedName n("overlap");
  auto m = TypedMap<std::uint64_t, Big>::create(n.str(), {.initial_capacity = 8192});
  constexpr std::uint64_t kKeys = 1500;  // 3 slabs of 511 records
  for (std::uint64_t k = 0; k < kKeys; ++k) m.insert_or_assign(k, make_big(k));
  RecordStats rs;
  ASSERT_TRUE(m.check(&rs).ok);
  ASSERT_EQ(rs.leaked, 0u);
  {
    RawObject raw(n.str());
    std::vector<std::uint64_t> slabs;
    for (std::uint64_t s = raw.h().slab_head.load(); s != 0;
         s = raw.at<detail::SlabHeader>(s).next) {
      slabs.push_back(s);
    }
    std::uint64_t victim = 0;
    for (const auto a : slabs) {
      for (const auto b : slabs) {
        if (b == a + detail::kSlabBytes) victim = a;
      }
    }
    ASSERT_NE(victim, 0u) << "no two adjacent slabs";
    raw.at<detail::SlabHeader>(victim).extent_bytes = 2 * detail::kSlabBytes;
  }
  const CheckReport rep = m.check(&rs);
  for (const auto& p : rep.problems) std::fprintf(stderr, "check: %s\n", p.c_str());
  EXPECT_EQ(rs.leaked, 0u) << "live records of the next slab counted as leaked";
  m.compact();
  for (std::uint64_t k = kKeys; k < 3 * kKeys; ++k) m.insert_or_assign(k, make_big(k));
  std::size_t wrong = 0;
  for (std::uint64_t k = 0; k < kKeys; ++k) {
    const auto v = m.find(k);
    wrong += !v || *v != make_big(k);
  }
  EXPECT_EQ(wrong, 0u) << "keys whose record compact() gave to another key";
}

// Retired records go back to the free lists only from RecordHeap::reclaim. Were it run only
// after a thread's own Nth retirement (as it once was) or compact(), writers that each retire
// fewer -- short-lived threads, or processes that do a few updates and exit -- would never
// reclaim: the limbo stack would grow without bound and a map of ONE key run out of space,
// although every retired record is reclaimable (nothing is pinned). The trigger is the bytes
// retired in the segment, by anyone (RecordHeap::retire).
TEST_F(RecordsReview, ShortLivedWritersNeverReclaimAndAOneKeyMapRunsOutOfSpace) {
  ScopedName n("limbo");
  RecMap m = RecMap::create(n.str(), {.initial_capacity = 8, .max_bytes = 4u << 20});
  m.insert_or_assign(1, make(1, 0));
  std::uint64_t gen = 0;
  bool out_of_space = false;
  for (int t = 0; t < 2000 && !out_of_space; ++t) {
    std::thread([&] {
      try {
        for (int i = 0; i < 50; ++i) m.insert_or_assign(1, make(1, ++gen));
      } catch (const Error& e) {
        out_of_space = e.code() == Errc::out_of_space;
        if (!out_of_space) ADD_FAILURE() << e.what();
      }
    }).join();
  }
  RecordStats rs;
  (void)m.check(&rs);
  std::fprintf(stderr, "after %llu replacements: %zu live, %zu free, %zu retired, %zu slabs\n",
               static_cast<unsigned long long>(gen), rs.live, rs.free, rs.retired, rs.slabs);
  EXPECT_FALSE(out_of_space) << "a map of one key ran out of space: " << rs.retired
                             << " records retired and never reclaimed";
}

// RecordHeap::check_block() and retire() are noexcept, but check_block() calls ensure_mapped(),
// which throws (corrupt) for an offset past the object. Its bound is min(arena_top,
// file_bytes, max_bytes): with both header words damaged high, a block offset past the end of
// the object reaches ensure_mapped and the throw ends in std::terminate. Here the limbo head
// names such a block; compact() (whose reclaim pass frees the batch) aborts the process.
TEST_F(RecordsReview, ABlockOffsetPastTheObjectIsCorruptNotTerminate) {
  ScopedName n("noexcept");
  {
    RecMap m = RecMap::create(n.str(), {.initial_capacity = 8, .max_bytes = 64u << 20});
    for (std::uint64_t k = 0; k < 100; ++k) m.insert_or_assign(k, make(k, 1));
  }
  Shared<std::atomic<int>> attached, damaged;
  // Attached before the damage (as hostile_test's "attached before" child).
  const pid_t child = fork_child([&] {
    try {
      RecMap c = RecMap::open(n.str());
      attached->store(1);
      if (!wait_until([&] { return damaged->load() == 1; }, seconds(20))) return false;
      c.compact();
    } catch (const Error& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    return true;
  });
  ASSERT_GT(child, 0);
  ASSERT_TRUE(wait_until([&] { return attached->load() == 1; }, seconds(20)));
  {
    RawObject raw(n.str());
    struct stat st {};
    ASSERT_EQ(::stat(shm_path(n.str()).c_str(), &st), 0);
    const std::uint64_t past = (static_cast<std::uint64_t>(st.st_size) + (1u << 20)) / 16 * 16;
    raw.h().arena_top.store(std::uint64_t{60} << 20);
    raw.h().file_bytes.store(std::uint64_t{60} << 20);
    raw.h().limbo.top = past;
  }
  damaged->store(1);
  const ChildResult r = wait_for(child, seconds(30));
  EXPECT_TRUE(r.ok()) << "the process " << r.describe();
}

}  // namespace
}  // namespace shmap::test::mp
