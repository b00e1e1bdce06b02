// Segment fuzzer: the bytes of a real segment (a map with tables, a migration under way, a
// retired stack, free extents) are changed at random places -- header, handle slots, table
// headers, buckets, or the object cut short -- and a child process opens the result and calls
// every operation. It must end normally (each call succeeds or throws shmap::Error) within a
// few seconds: a signal or a hang is a failure, reported with the case's seed for replay.
//
// SHMAP_FUZZ_CASES=<n> sets the number of cases (default 2000, 300 under sanitizers: well under
// a minute); SHMAP_TEST_SEED=<n> replays a run. Long runs by hand:
//   SHMAP_FUZZ_CASES=20000 build/tests/mp/mp_fuzz
// Bucket words are damaged too (SHMAP_FUZZ_BUCKETS=0 leaves them alone). This fuzzer found
// that a bucket of the current table damaged into a migration state (SEALED, MOVED) while no
// successor exists made every write to its probe run retry forever (~1 case in 500); such a
// state is now reported as corrupt (MapImpl::check_forward).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <vector>

#include "mp_util.hpp"
#include "shmap/detail/layout.hpp"

namespace shmap::test::mp {
namespace {

using detail::HandleSlot;
using detail::kPage;
using detail::SegmentHeader;
using detail::TableHeader;

class FuzzTest : public MpTest {
 protected:
  unsigned watchdog_seconds() const override { return 3000; }
};

std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

bool write_all(const std::string& path, const std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return done == bytes.size();
}

template <class T>
T get(const std::vector<char>& b, std::size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

/// The template: a real segment with two tables (a migration under way), retired tables and
/// free extents, closed by its creator. Returns its bytes and where its tables are.
struct Template {
  std::vector<char> bytes;
  std::vector<std::uint64_t> tables;                                   // current, older (if any)
  std::vector<std::pair<std::uint64_t, std::uint64_t>> bucket_ranges;  // [begin, end)
};

Template make_template() {
  ScopedName n("fuzz-template");
  {
    Map m = Map::create(n, {.initial_capacity = 8, .max_handles = 4});
    std::uint64_t k = 0;
    for (; k < 3000; ++k) m.insert(k, k * 3);
    for (std::uint64_t e = 0; e < 1500; ++e) m.erase(e);
    // Keep inserting until a resize has just started: the older table is still attached.
    for (; k < 1'000'000 && m.stats().tables < 2; ++k) m.insert(k, k * 3);
  }
  Template t;
  t.bytes = read_all(shm_path(n));
  const auto cur = get<std::uint64_t>(t.bytes, offsetof(SegmentHeader, current_table));
  t.tables.push_back(cur);
  if (cur + sizeof(TableHeader) <= t.bytes.size()) {
    const auto older = get<std::uint64_t>(t.bytes, cur + offsetof(TableHeader, older));
    if (older != 0) t.tables.push_back(older);
  }
  for (const std::uint64_t off : t.tables) {
    const auto cap = get<std::uint64_t>(t.bytes, off + offsetof(TableHeader, capacity));
    t.bucket_ranges.emplace_back(off + detail::kTableHeaderBytes,
                                 off + detail::kTableHeaderBytes + cap * detail::kBucketBytes);
  }
  return t;
}

bool fuzz_buckets() {
  const char* env = std::getenv("SHMAP_FUZZ_BUCKETS");
  return env == nullptr || *env != '0';
}

/// Changes 1-8 places of b. Returns a description of what was changed (for replay).
std::string mutate(std::vector<char>& b, const Template& t, Rng& rng) {
  std::string what;
  const int n = 1 + static_cast<int>(rng.below(8));
  if (rng.chance(4)) {  // the object cut short at a page (or anywhere)
    const std::size_t cut =
        rng.chance(50) ? rng.below(b.size() / kPage) * kPage : rng.below(b.size());
    b.resize(cut);
    return "truncated to " + std::to_string(cut);
  }
  for (int i = 0; i < n; ++i) {
    // Where: the header, the handle slots, a table header, a table's buckets, anywhere.
    std::size_t off = 0;
    const auto where = rng.below(100);
    const std::uint64_t table = t.tables[rng.below(t.tables.size())];
    if (where < 30) {
      off = rng.below(kPage);
    } else if (where < 45) {
      off = kPage + rng.below(4 * sizeof(HandleSlot));
    } else if (where < 75) {
      off = table + rng.below(256);  // the fields before the striped counters
    } else if (where < 90) {
      off = table + detail::kTableHeaderBytes + rng.below(4096);
    } else {
      off = rng.below(b.size());
    }
    off &= ~std::size_t{7};
    if (off + 8 > b.size()) continue;
    if (!fuzz_buckets() &&
        std::any_of(t.bucket_ranges.begin(), t.bucket_ranges.end(),
                    [&](const auto& r) { return off >= r.first && off < r.second; })) {
      continue;
    }
    // What: a random word, a bit flip, a byte, or an interesting value.
    std::uint64_t v = get<std::uint64_t>(b, off);
    const std::uint64_t interesting[] = {0,
                                         1,
                                         7,
                                         8,
                                         ~std::uint64_t{0},
                                         std::uint64_t{1} << 62,
                                         std::uint64_t{1} << 63,
                                         kPage,
                                         kPage + 8,
                                         b.size(),
                                         b.size() - kPage,
                                         std::uint64_t{1} << 40,
                                         v + 1,
                                         v - 1,
                                         v * 2,
                                         v + kPage,
                                         v ^ (std::uint64_t{1} << 32)};
    switch (rng.below(4)) {
      case 0:
        v = rng.next();
        break;
      case 1:
        v ^= std::uint64_t{1} << rng.below(64);
        break;
      case 2:
        v ^= (rng.next() & 0xff) << (8 * rng.below(8));
        break;
      default:
        v = interesting[rng.below(std::size(interesting))];
        break;
    }
    std::memcpy(b.data() + off, &v, 8);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s[%zu]=%#llx", what.empty() ? "" : " ", off,
                  static_cast<unsigned long long>(v));
    what += buf;
  }
  return what;
}

/// In the child: every operation once; Errors are fine, anything else is not.
bool exercise(const std::string& name) {
  Map m = Map::open(name);
  auto run = [&](auto&& f) {
    try {
      f();
    } catch (const Error&) {
    }
  };
  run([&] { (void)m.find(1); });
  run([&] {
    for (std::uint64_t k = 1000; k < 1200; ++k) (void)m.find(k);
  });
  run([&] {
    std::vector<std::uint64_t> keys(200);
    for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = i * 13;
    std::vector<std::optional<std::uint64_t>> out(keys.size());
    (void)m.find_many(keys, out);
  });
  run([&] { (void)m.size(); });
  run([&] { (void)m.stats(); });
  run([&] { (void)m.readers(); });
  run([&] { (void)m.check(); });
  run([&] {
    std::size_t n = 0;
    m.for_each([&](std::uint64_t, std::uint64_t) { ++n; });
  });
  run([&] {
    for (std::uint64_t k = 2000; k < 4000; ++k) m.insert_or_assign(k, k);
  });
  run([&] {
    for (std::uint64_t k = 0; k < 3000; k += 2) m.erase(k);
  });
  run([&] { (void)m.fetch_add(7, 1); });
  run([&] { m.compact(); });
  run([&] { (void)m.size(); });
  return true;
}

TEST_F(FuzzTest, DamagedSegmentsNeverCrashOrHang) {
  const std::uint64_t seed = test_seed();
  std::size_t cases = kSanitized ? 300 : 2000;
  if (const char* env = std::getenv("SHMAP_FUZZ_CASES"); env != nullptr && *env != '\0') {
    cases = std::strtoull(env, nullptr, 10);
  }
  const Template t = make_template();
  ASSERT_GT(t.bytes.size(), 4 * kPage);
  std::fprintf(stderr, "[ info     ] template: %zu bytes, %zu tables attached\n", t.bytes.size(),
               t.tables.size());
  ScopedName name("fuzz");
  std::size_t opened = 0, refused = 0, failures = 0;
  Shared<std::atomic<int>> did_open;
  for (std::size_t c = 0; c < cases; ++c) {
    Rng rng(seed + c * 0x9e3779b97f4a7c15ULL);
    std::vector<char> b = t.bytes;
    const std::string what = mutate(b, t, rng);
    ASSERT_TRUE(write_all(shm_path(name), b));
    did_open->store(0);
    const auto r = run_child(
        [&]() -> bool {
          try {
            exercise(name);
            did_open->store(1);
          } catch (const Error&) {
          }
          return true;
        },
        seconds(5 * kSlow));
    if (!r.ok()) {
      ++failures;
      ADD_FAILURE() << "case " << c << " (SHMAP_TEST_SEED=" << seed << "): the child "
                    << r.describe() << "; damage: " << what;
      if (failures >= 10) break;
    }
    (did_open->load() != 0 ? opened : refused) += 1;
    Map::remove(name);
  }
  std::fprintf(stderr,
               "[ info     ] %zu cases: %zu opened and used, %zu refused or failed with an "
               "Error, %zu crashed or hung\n",
               cases, opened, refused, failures);
}

}  // namespace
}  // namespace shmap::test::mp
