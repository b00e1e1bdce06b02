// Small-key churn from the smallest capacity: threads that insert and then erase their own few
// keys in a loop make the map grow and shrink every few milliseconds. A shrink decided in the
// lull of an empty-and-refill cycle used to publish a successor too small for what the table
// held by the time it was migrated, and every later write threw "successor table full during
// migration" for good (issue 6, item 1). Each thread checks every answer it gets for its own
// keys, and the map must accept writes to the end.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap {
namespace {

using test::ScopedName;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kSlow = 4;
#else
constexpr int kSlow = 1;
#endif

struct ChurnResult {
  std::uint64_t cycles = 0;
  std::uint64_t wrong = 0;
  std::string error;
  std::string first_wrong;
  void mismatch(const char* what, std::uint64_t k) {
    if (wrong++ == 0) first_wrong = std::string(what) + " for key " + std::to_string(k);
  }
};

// `threads` threads, each churning its own `keys` keys for `ms` milliseconds.
std::vector<ChurnResult> churn(Map& m, int threads, std::uint64_t keys, int ms) {
  std::vector<ChurnResult> out(threads);
  std::vector<std::thread> ts;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      ChurnResult& r = out[t];
      const std::uint64_t base = static_cast<std::uint64_t>(t) << 32;
      try {
        while (std::chrono::steady_clock::now() < end) {
          for (std::uint64_t k = 0; k < keys; ++k) {
            if (!m.insert(base + k, r.cycles + k)) r.mismatch("insert found it present", k);
          }
          for (std::uint64_t k = 0; k < keys; ++k) {
            const auto v = m.find(base + k);
            if (!v || *v != r.cycles + k) r.mismatch("find gave a wrong answer", k);
          }
          for (std::uint64_t k = 0; k < keys; ++k) {
            if (!m.erase(base + k)) r.mismatch("erase found it absent", k);
          }
          ++r.cycles;
        }
      } catch (const Error& e) {
        r.error = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  return out;
}

void expect_healthy(Map& m, const std::vector<ChurnResult>& rs) {
  std::uint64_t cycles = 0;
  for (const auto& r : rs) {
    EXPECT_EQ(r.error, "");
    EXPECT_EQ(r.wrong, 0u) << "first: " << r.first_wrong << " (cycle " << r.cycles << ")";
    cycles += r.cycles;
  }
  EXPECT_GT(cycles, 0u);
  // Still writable, and consistent.
  EXPECT_TRUE(m.insert(~0ULL, 1));
  EXPECT_EQ(m.find(~0ULL), 1u);
  EXPECT_TRUE(m.erase(~0ULL));
  m.compact();
  EXPECT_EQ(m.size(), 0u);
  const CheckReport rep = m.check();
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems[0]);
  std::size_t n = 0;
  m.for_each([&](std::uint64_t, std::uint64_t) { ++n; });
  EXPECT_EQ(n, 0u);
}

struct Shape {
  int threads;
  std::uint64_t keys;
};

class Churn : public ::testing::TestWithParam<Shape> {};

TEST_P(Churn, FromCapacityEightNeverStopsAcceptingWrites) {
  ScopedName name("churn");
  Map m = Map::create(name, {.initial_capacity = 8});
  const auto rs = churn(m, GetParam().threads, GetParam().keys, 1500 * kSlow);
  expect_healthy(m, rs);
  RecordProperty("resizes", std::to_string(m.stats().resizes));
}

// check() under write churn: it compares what it reads against a moving arena and a retired
// stack that reclaimers pop meanwhile, and must never call a healthy map damaged (it reported
// 48 false problems in 20 s before).
TEST(ChurnCheck, CheckReportsNoFalseProblemsUnderChurn) {
  ScopedName name("churn-check");
  Map m = Map::create(name, {.initial_capacity = 8});
  std::atomic<bool> done{false};
  std::vector<std::string> problems;
  std::size_t checks = 0;
  std::size_t scanned = 0;  // checks whose leak sweep decided (a grace period completed)
  std::thread checker([&] {
    Map view = Map::open(name);  // its own handle, as `shmap check` from another process
    while (!done.load(std::memory_order_acquire)) {
      const CheckReport rep = view.check();
      ++checks;
      for (const auto& n : rep.notes) scanned += n.find("nothing leaked") != std::string::npos;
      problems.insert(problems.end(), rep.problems.begin(), rep.problems.end());
    }
  });
  const auto rs = churn(m, 3, 200, 1500 * kSlow);
  done.store(true, std::memory_order_release);
  checker.join();
  EXPECT_GT(checks, 0u);
  EXPECT_GT(scanned, 0u) << "the leak sweep never decided under churn (" << checks << " checks)";
  RecordProperty("checks", std::to_string(checks));
  RecordProperty("leak_sweeps", std::to_string(scanned));
  EXPECT_TRUE(problems.empty()) << problems.size() << " false problems, first: " << problems[0];
  expect_healthy(m, rs);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Churn,
                         ::testing::Values(Shape{2, 16}, Shape{3, 16}, Shape{4, 64}, Shape{8, 8}),
                         [](const auto& info) {
                           return std::to_string(info.param.threads) + "x" +
                                  std::to_string(info.param.keys);
                         });

}  // namespace
}  // namespace shmap
