// StringMap: round trips of keys and values of every length up to the entry limit (empty and
// binary ones too), the limit refused cleanly, the return values of every write, update and
// upsert, keys that share a 64-bit hash (a test hash makes them collide: one record holds
// several entries, size() stays exact), growth and shrink from capacity 8 with records given
// back, the type records (layout_mismatch both ways), read-only attachments, and threads:
// exact counters from many threads through update(), on colliding keys too, while another
// thread churns the table through resizes; visit_value's zero-copy reads (whole values under
// writers, nothing for absent keys, no pin left behind by an f that throws).
//
// SHMAP_SOAK=N multiplies the iteration counts; SHMAP_SANITIZED divides them.
#include "shmap/string_map.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shmap/detail/records.hpp"
#include "shmap/string_multimap.hpp"
#include "test_util.hpp"

namespace shmap {
namespace {

using test::code_of;
using test::ScopedName;

bool sanitized() { return std::getenv("SHMAP_SANITIZED") != nullptr; }
std::uint64_t scaled(std::uint64_t n) {
  const char* e = std::getenv("SHMAP_SOAK");
  const std::uint64_t soak = e != nullptr ? std::max(1, std::atoi(e)) : 1;
  return std::max<std::uint64_t>(1, n * soak / (sanitized() ? 4 : 1));
}

std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Bytes of every value 0..255, from a seed.
std::string bytes_of(std::uint64_t seed, std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) seed = mix(seed);
    s[i] = static_cast<char>(seed >> (8 * (i % 8)));
  }
  return s;
}

/// Makes keys collide while alive: every key hashes to one of `buckets` values.
class CollidingHash {
 public:
  explicit CollidingHash(std::uint64_t buckets) {
    buckets_ = buckets;
    StringMap::hash_for_test = [](std::string_view k) {
      std::uint64_t h = 0xcbf29ce484222325ULL;
      for (const char c : k) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
      return h % buckets_;
    };
  }
  ~CollidingHash() { StringMap::hash_for_test = nullptr; }
  CollidingHash(const CollidingHash&) = delete;
  CollidingHash& operator=(const CollidingHash&) = delete;

 private:
  static inline std::uint64_t buckets_ = 1;
};

std::map<std::string, std::string> contents(const StringMap& m) {
  std::map<std::string, std::string> out;
  m.for_each([&](std::string_view k, std::string_view v) {
    EXPECT_TRUE(out.emplace(std::string(k), std::string(v)).second) << "visited twice: " << k;
  });
  return out;
}

TEST(StringMap, BasicOperationsAndReturnValues) {
  ScopedName n("basic");
  auto m = StringMap::create(n);
  EXPECT_TRUE(m.empty());
  EXPECT_TRUE(m.insert("apple", "red"));
  EXPECT_FALSE(m.insert("apple", "green")) << "insert must not overwrite";
  EXPECT_EQ(m.find("apple"), "red");
  EXPECT_FALSE(m.insert_or_assign("apple", "green")) << "an existing key is replaced: false";
  EXPECT_EQ(m.find("apple"), "green");
  EXPECT_TRUE(m.insert_or_assign("pear", "yellow"));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_TRUE(m.contains("pear"));
  EXPECT_FALSE(m.contains("plum"));
  EXPECT_FALSE(m.find("plum").has_value());
  EXPECT_FALSE(m.compare_exchange("apple", "red", "blue"));
  EXPECT_EQ(m.find("apple"), "green");
  EXPECT_TRUE(m.compare_exchange("apple", "green", "blue"));
  EXPECT_EQ(m.find("apple"), "blue");
  EXPECT_FALSE(m.compare_exchange("plum", "", "x")) << "compare_exchange never inserts";
  EXPECT_TRUE(m.erase("apple"));
  EXPECT_FALSE(m.erase("apple"));
  EXPECT_EQ(m.size(), 1u);
  // Empty key and empty value are ordinary entries.
  EXPECT_TRUE(m.insert("", ""));
  EXPECT_EQ(m.find(""), "");
  EXPECT_TRUE(m.insert("empty", ""));
  EXPECT_EQ(m.find("empty"), "");
  EXPECT_EQ(m.size(), 3u);
  // Binary bytes, NULs included; a key that is a prefix of another is another key.
  const std::string bin("a\0b\xff", 4);
  EXPECT_TRUE(m.insert(bin, std::string("\0\0", 2)));
  EXPECT_TRUE(m.insert(std::string("a\0b", 3), "prefix"));
  EXPECT_EQ(m.find(bin), std::string("\0\0", 2));
  EXPECT_EQ(m.find(std::string("a\0b", 3)), "prefix");
  EXPECT_EQ(m.find(std::string("a", 1)), std::nullopt);
  const auto all = contents(m);
  EXPECT_EQ(all.size(), m.size());
  EXPECT_EQ(all.at("pear"), "yellow");
}

TEST(StringMap, EveryLengthUpToTheLimitRoundTripsAndPastItNothingIsWritten) {
  ScopedName n("lengths");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::map<std::string, std::string> model;
  // Keys of 0..300 bytes with values of lengths that cover the small and large record
  // classes, up to the limit.
  for (std::size_t kl = 0; kl <= 300; kl += 7) {
    for (std::size_t vl :
         {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{9},
          std::size_t{100}, std::size_t{1000}, std::size_t{4070}, std::size_t{4100},
          std::size_t{70000}, std::size_t{1} << 20, kMaxStringEntryBytes - kl}) {
      std::string k = bytes_of(kl * 1000 + vl, kl);
      k += std::to_string(vl);  // distinct per value length
      if (k.size() + vl > kMaxStringEntryBytes) vl = kMaxStringEntryBytes - k.size();
      const std::string v = bytes_of(kl ^ (vl << 20), vl);
      ASSERT_TRUE(m.insert(k, v)) << kl << "/" << vl;
      model[k] = v;
    }
  }
  for (const auto& [k, v] : model) {
    const auto got = m.find(k);
    ASSERT_TRUE(got.has_value()) << k.size();
    ASSERT_EQ(*got, v) << "key of " << k.size() << " bytes, value of " << v.size();
  }
  EXPECT_EQ(contents(m), model);
  EXPECT_EQ(m.size(), model.size());
  // One byte past the limit: refused, nothing written, the old value kept.
  const std::string k = "limit";
  const std::string at_limit(kMaxStringEntryBytes - k.size(), 'x');
  ASSERT_TRUE(m.insert_or_assign(k, at_limit));
  EXPECT_EQ(code_of([&] { m.insert_or_assign(k, at_limit + "y"); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { m.insert("other", std::string(kMaxStringEntryBytes, 'z')); }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { m.update(k, [](std::string& v) { v += "more"; }); }),
            Errc::invalid_argument);
  EXPECT_EQ(m.find(k), at_limit);
  EXPECT_FALSE(m.contains("other"));
  EXPECT_EQ(m.size(), model.size() + 1);
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u) << "a refused write kept its record";
  // A record for each entry but those of a key and a value of up to 7 bytes each, which live
  // in their bucket (entry_list.hpp), and one for "limit".
  std::size_t records = 1;
  for (const auto& [k, v] : model) records += k.size() > 7 || v.size() > 7;
  EXPECT_LT(records, model.size()) << "some entries are short";
  EXPECT_EQ(rs.live, records);
}

/// Records the map holds: live ones, after compact() (nothing retired or leaked); and every
/// other entry in its bucket.
std::size_t live_records(StringMap& m) {
  RecordStats before;  // no writer was killed: nothing leaked (compact() would hide a leak)
  (void)m.check(&before);
  EXPECT_EQ(before.leaked, 0u) << "a write left a record nothing holds";
  m.compact();
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.retired, 0u);
  EXPECT_EQ(rs.live + rs.inline_entries, m.size()) << "every entry in a record or its bucket";
  return rs.live;
}

TEST(StringMap, ShortEntriesLiveInTheirBucketAndLongOnesInRecords) {
  // Keys and values of 0..9 bytes (zero bytes included: "" and "\0" are different keys): an
  // entry whose key has up to 7 bytes (or 8, the last one 0) and whose value has up to 7
  // takes no record (entry_list.hpp).
  ScopedName n("short");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::map<std::string, std::string> model;
  auto value_of = [](std::size_t kl, std::size_t vl, int round) {
    std::string v(vl, '\0');
    for (std::size_t i = 0; i < vl; ++i) v[i] = static_cast<char>(kl * 16 + i + round);
    return v;
  };
  auto key_of = [](std::size_t kl, std::size_t vl) {
    std::string k(kl, '\0');  // all zero but the last byte: vl, so each (kl, vl) has its key
    if (kl != 0) k.back() = static_cast<char>(vl);
    return k;
  };
  auto records_in = [](const std::map<std::string, std::string>& mm) {
    std::size_t r = 0;
    for (const auto& [k, v] : mm) {
      const bool short_key = k.size() <= 7 || (k.size() == 8 && k[7] == 0);
      r += !short_key || v.size() > 7;
    }
    return r;
  };
  for (std::size_t kl = 0; kl <= 9; ++kl) {
    for (std::size_t vl = 0; vl <= 9; ++vl) {
      const std::string k = key_of(kl, vl);
      if (model.count(k) != 0) continue;  // kl 0: one key
      ASSERT_TRUE(m.insert(k, value_of(kl, vl, 0)));
      model[k] = value_of(kl, vl, 0);
    }
  }
  EXPECT_EQ(contents(m), model);
  EXPECT_EQ(m.size(), model.size());
  const std::size_t short_ones = model.size() - records_in(model);
  EXPECT_GT(short_ones, 50u);
  EXPECT_EQ(live_records(m), records_in(model));
  // Every value to another length, across the 7-byte line and back: inline -> record ->
  // inline and the other way, each replaced value given back.
  for (int round = 1; round <= 3; ++round) {
    for (auto& [k, v] : model) {
      const std::size_t vl = round == 2 ? v.size() : (v.size() + 5) % 10;
      std::string next = value_of(k.size(), vl, round);
      EXPECT_FALSE(m.insert_or_assign(k, next)) << "present";
      v = next;
    }
    for (const auto& [k, v] : model) ASSERT_EQ(m.find(k), v) << k.size() << "/" << v.size();
    EXPECT_EQ(m.size(), model.size());
    EXPECT_EQ(live_records(m), records_in(model)) << "round " << round;
  }
  // Seven bytes, the same and a 0, the same and a 1: three keys (inline, inline, hashed).
  const std::string k7 = "abcdefg", k8z = k7 + std::string(1, '\0'), k8 = k7 + "\x01";
  ASSERT_TRUE(m.insert(k7, "7"));
  ASSERT_TRUE(m.insert(k8z, "8z"));
  ASSERT_TRUE(m.insert(k8, "8"));
  EXPECT_EQ(m.find(k7), "7");
  EXPECT_EQ(m.find(k8z), "8z");
  EXPECT_EQ(m.find(k8), "8");
  model[k7] = "7";
  model[k8z] = "8z";
  model[k8] = "8";
  EXPECT_EQ(contents(m), model);
  EXPECT_EQ(live_records(m), records_in(model));
  // update, compare_exchange and erase on short entries.
  const std::string k1 = key_of(3, 1);
  ASSERT_TRUE(m.update(k1, [](std::string& v) { v = "1234567"; }));
  EXPECT_EQ(m.find(k1), "1234567");
  EXPECT_TRUE(m.compare_exchange(k1, "1234567", "12345678"));  // into a record
  EXPECT_FALSE(m.compare_exchange(k1, "1234567", "x"));
  EXPECT_TRUE(m.compare_exchange(k1, "12345678", ""));  // and back
  EXPECT_EQ(m.find(k1), "");
  model[k1] = "";
  for (const auto& [k, v] : model) ASSERT_TRUE(m.erase(k)) << k.size();
  EXPECT_EQ(m.size(), 0u);
  EXPECT_TRUE(contents(m).empty());
  EXPECT_EQ(live_records(m), 0u);
}

/// A live segment mapped raw, read-write (damage, on purpose), as 64-bit words.
class RawWords {
 public:
  explicit RawWords(const std::string& name) {
    fd_ = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    struct stat st {};
    if (fd_ < 0 || ::fstat(fd_, &st) != 0) return;
    bytes_ = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p != MAP_FAILED) p_ = static_cast<std::uint64_t*>(p);
  }
  ~RawWords() {
    if (p_ != nullptr) ::munmap(p_, bytes_);
    if (fd_ >= 0) ::close(fd_);
  }
  RawWords(const RawWords&) = delete;
  RawWords& operator=(const RawWords&) = delete;
  bool ok() const { return p_ != nullptr; }
  /// Indices of the words equal to w, every `step`-th word (2: 16-byte aligned ones).
  std::vector<std::size_t> find(std::uint64_t w, std::size_t step = 1) const {
    std::vector<std::size_t> at;
    for (std::size_t i = 0; i < bytes_ / 8; i += step) {
      if (p_[i] == w) at.push_back(i);
    }
    return at;
  }
  std::uint64_t& operator[](std::size_t i) { return p_[i]; }

 private:
  int fd_ = -1;
  std::size_t bytes_ = 0;
  std::uint64_t* p_ = nullptr;
};

TEST(StringMap, ADamagedShortEntryIsReportedNotTrusted) {
  // The inline entry's value word in the segment, found by its bit pattern and damaged in
  // place: a reader reports corrupt, naming the map; a short entry beside it still reads.
  ScopedName n("short-damage");
  {
    auto m = StringMap::create(n, {.initial_capacity = 8});
    m.insert("k", "abc");
    m.insert("j", "def");
  }
  const std::uint64_t word = std::uint64_t{0x636261} << 8 | 3 << 1 | 1;  // "abc", 3 bytes
  RawWords p(n);
  ASSERT_TRUE(p.ok());
  const std::vector<std::size_t> at = p.find(word, 2);  // a slot's value word: 16-byte aligned
  ASSERT_EQ(at.size(), 1u) << "the inline entry's word, once";
  auto m = StringMap::open(n);
  for (const std::uint64_t bad : {word | 0x10,                            // a reserved bit
                                  (word & ~std::uint64_t{0xe}) | 2 << 1,  // bytes past length
                                  word | 0xe}) {                          // length 7, bytes 0
    p[at[0]] = bad;
    if (bad == (word | 0xe)) {
      // Length 7 with the high bytes zero is a valid value: "abc\0\0\0\0".
      EXPECT_EQ(m.find("k"), std::string("abc\0\0\0\0", 7));
      continue;
    }
    try {
      (void)m.find("k");
      ADD_FAILURE() << "a damaged inline entry was read";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::corrupt);
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("shmap check"), std::string::npos) << e.what();
    }
    EXPECT_EQ(m.find("j"), "def");
  }
  p[at[0]] = word;
  EXPECT_EQ(m.find("k"), "abc");
}

/// A short key's value at version g (the review of format 8's short entries): 1..11 bytes, so
/// versions alternate between inline entries (up to 7) and records; byte 0 is g % 253, every
/// other byte a function of the key's number and byte 0, so a value torn or taken from another
/// key or version does not verify. Versions g with g % 13 == 0 are erased.
std::string short_value(int key, std::uint64_t g) {
  const auto x = static_cast<unsigned char>(g % 253);
  std::string v(1 + x % 11, '\0');
  v[0] = static_cast<char>(x);
  for (std::size_t j = 1; j < v.size(); ++j) v[j] = static_cast<char>(key * 7 + x + j);
  return v;
}
/// Whether `v` (nullopt: absent) is key's value at some version in [lo, hi].
bool short_value_in(int key, const std::optional<std::string>& v, std::uint64_t lo,
                    std::uint64_t hi) {
  for (std::uint64_t g = lo; g <= hi; ++g) {
    if (g % 13 == 0 ? !v.has_value() : v == short_value(key, g)) return true;
  }
  return false;
}

TEST(StringMapThreads, ShortKeysSwitchingBetweenInlineAndRecordsReadLinearizablyUnderResizes) {
  // One writer per short key steps it through versions whose values go 1..11 bytes (inline
  // entries and records, each replacing the other) or absent, and publishes each version it
  // completed; a churn thread grows and shrinks the table from capacity 8. Readers -- the
  // unpinned fast path of a read-write handle (with_list), its walks, and a read-only
  // attachment's validated copies -- must see, for each read, a version written between the
  // read's start and end: never a torn entry, a stale one, or another key's.
  ScopedName n("short-race");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  constexpr int kKeys = 8;
  auto key = [](int i) { return "s" + std::to_string(i); };  // 2 bytes: short
  std::array<std::atomic<std::uint64_t>, kKeys> done{};      // versions completed
  for (int i = 0; i < kKeys; ++i) {
    m.insert_or_assign(key(i), short_value(i, 1));
    done[i] = 1;
  }
  auto ro = StringMap::open(n, {.read_only = true});
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      auto mine = StringMap::open(n);
      for (std::uint64_t g = 2; !stop.load(std::memory_order_relaxed); ++g) {
        for (int i = w; i < kKeys; i += 2) {
          if (g % 13 == 0) {
            mine.erase(key(i));
          } else {
            mine.insert_or_assign(key(i), short_value(i, g));
          }
          done[i].store(g, std::memory_order_release);
        }
      }
    });
  }
  threads.emplace_back([&] {
    auto mine = StringMap::open(n);
    for (std::uint64_t r = 0; !stop.load(std::memory_order_relaxed); ++r) {
      const std::uint64_t k = 200 + (r % 4) * 400;  // short keys and long ones, inline and not
      for (std::uint64_t j = 0; j < k; ++j)
        mine.insert(std::to_string(j), j % 2 ? "x" : "a record");
      for (std::uint64_t j = 0; j < k; ++j)
        mine.insert("a long churn key " + std::to_string(j), "y");
      for (std::uint64_t j = 0; j < k; ++j) mine.erase(std::to_string(j));
      for (std::uint64_t j = 0; j < k; ++j) mine.erase("a long churn key " + std::to_string(j));
    }
  });
  std::atomic<std::uint64_t> bad{0}, reads{0};
  auto check = [&](const StringMap& r, int i) {
    const std::uint64_t lo = done[i].load(std::memory_order_acquire);
    const std::optional<std::string> v = r.find(key(i));
    const std::uint64_t hi = done[i].load(std::memory_order_acquire) + 1;  // one in flight
    reads.fetch_add(1, std::memory_order_relaxed);
    if (!short_value_in(i, v, lo, hi)) {
      if (bad.fetch_add(1) < 5) {
        ADD_FAILURE() << "key " << i << " read " << (v ? std::to_string(v->size()) : "absent")
                      << " bytes, not a version in [" << lo << ", " << hi << "]";
      }
    }
  };
  const std::uint64_t rounds = scaled(20000);
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      auto mine = StringMap::open(n);
      // Until the writers have stepped every key through `rounds` versions, at least.
      for (std::uint64_t r = 0; r < rounds || done[kKeys - 1].load() < rounds; ++r) {
        for (int i = 0; i < kKeys; ++i) check(mine, i);
        if (r % 500 == 0) {
          mine.for_each([&](std::string_view k, std::string_view v) {
            if (k.size() == 2 && k[0] == 's') {
              const int i = k[1] - '0';
              if (!short_value_in(i, std::string(v), 1, done[i].load() + 1)) bad.fetch_add(1);
            }
          });
        }
      }
    });
  }
  readers.emplace_back([&] {
    for (std::uint64_t r = 0; r < rounds / 4 || done[kKeys - 1].load() < rounds; ++r) {
      for (int i = 0; i < kKeys; ++i) check(ro, i);
      if (r % 200 == 0) {
        // A read-only walk (hashes, then validated copies) may time out against a map that
        // never stops resizing (Errc::timeout); whatever it visits must verify.
        try {
          ro.for_each([&](std::string_view k, std::string_view v) {
            if (k.size() == 2 && k[0] == 's') {
              const int i = k[1] - '0';
              if (!short_value_in(i, std::string(v), 1, done[i].load() + 1)) bad.fetch_add(1);
            }
          });
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), Errc::timeout) << e.what();
        }
      }
    }
  });
  for (auto& t : readers) t.join();
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u) << "of " << reads.load() << " reads";
  EXPECT_GT(m.stats().resizes, 2u) << "the churn did not resize the map";
  // Exact afterwards: size, records and short entries.
  std::size_t present = 0;
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_TRUE(short_value_in(i, m.find(key(i)), done[i], done[i])) << i;
    present += m.contains(key(i));
  }
  EXPECT_EQ(m.size(), present);
  // Every record an inline entry replaced was retired (compact() would hide a leak: it retires
  // what nothing holds).
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  live_records(m);
}

TEST(StringMultimapThreads, AKeyGoingFromOneValueToTwoAndBackIsReadWhole) {
  // A multimap key whose one value is an inline entry and whose two values take a record: the
  // writer adds version g+1, then erases version g, so a reader sees {g} or {g, g+1}, in order,
  // never nothing, never a value twice, and never a torn one.
  ScopedName n("mm-short-race");
  auto mm = StringMultimap::create(n, {.initial_capacity = 8});
  auto val = [](std::uint64_t g) { return "v" + std::to_string(g % 100000); };  // <= 6 bytes
  mm.insert("k", val(0));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> steps{0};
  std::thread writer([&] {
    for (std::uint64_t g = 0; !stop.load(std::memory_order_relaxed); ++g) {
      mm.insert("k", val(g + 1));
      for (int j = 0; j < 20; ++j) (void)mm.count("k");  // the record state, a while
      EXPECT_TRUE(mm.erase("k", val(g)));
      steps.store(g + 1, std::memory_order_relaxed);
      if (g % 64 == 0) {  // and resizes under it
        for (int j = 0; j < 300; ++j) mm.insert("c" + std::to_string(j), "c");
        for (int j = 0; j < 300; ++j) mm.erase("c" + std::to_string(j));
      }
    }
  });
  auto ro = StringMultimap::open(n, {.read_only = true});
  std::uint64_t bad = 0, twos = 0;
  const std::uint64_t rounds = scaled(20000);
  for (std::uint64_t r = 0; r < rounds || steps.load() < rounds; ++r) {
    const std::vector<std::string> vs = (r % 8 == 7 ? ro : mm).find("k");
    bool ok = vs.size() == 1 || vs.size() == 2;
    for (const auto& v : vs) ok = ok && v.size() >= 2 && v[0] == 'v';
    if (ok && vs.size() == 2) {
      ++twos;
      ok = (std::stoull(vs[0].substr(1)) + 1) % 100000 == std::stoull(vs[1].substr(1));
    }
    if (!ok && bad++ < 5) ADD_FAILURE() << "read " << vs.size() << " values";
  }
  stop = true;
  writer.join();
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(twos, 0u) << "never saw the record state";
  EXPECT_EQ(mm.size(), mm.count("k"));
  EXPECT_EQ(mm.count("k"), 1u);
  RecordStats rs;
  mm.compact();
  EXPECT_TRUE(mm.check(&rs).ok);
  EXPECT_EQ(rs.inline_entries, 1u);
  EXPECT_EQ(rs.live, 0u);
}

TEST(StringMap, SnapshotsOfShortEntriesAndRecordsRoundTrip) {
  // Binary and JSON snapshots of maps mixing inline entries and records: a StringMap, a
  // multimap whose keys went from one value (inline) to several (a record) and back, and the
  // typed maps whose keys or values are short (TypedMap<std::string, std::uint32_t>: every
  // entry inline; TypedMap<std::uint64_t, std::string>: keys below 2^56 inline).
  ScopedName n("snap-short"), mn("snap-short-mm"), tn("snap-short-t"), un("snap-short-u");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::map<std::string, std::string> model;
  for (int i = 0; i < 200; ++i) {
    const std::string k = bytes_of(i, i % 11);  // 0..10 bytes, binary
    model[k] = bytes_of(i + 1000, (i * 3) % 12);
    m.insert_or_assign(k, model[k]);
  }
  model[std::string("abcdefg\0", 8)] = "8z";
  m.insert_or_assign(std::string("abcdefg\0", 8), "8z");
  auto mm = StringMultimap::create(mn, {.initial_capacity = 8});
  std::map<std::string, std::vector<std::string>> mmodel;
  for (int i = 0; i < 50; ++i) {
    const std::string k = "m" + std::to_string(i);
    for (int j = 0; j < 1 + i % 4; ++j) mm.insert(k, "v" + std::to_string(j));
    for (int j = 1; j < 1 + i % 4 && i % 3 == 0; ++j) {
      ASSERT_TRUE(mm.erase(k, "v" + std::to_string(j)));  // back to one
    }
    mmodel[k] = mm.find(k);
  }
  auto t = TypedMap<std::string, std::uint32_t>::create(tn, {.initial_capacity = 8});
  for (std::uint32_t i = 0; i < 100; ++i) t.insert_or_assign("t" + std::to_string(i), i * 7);
  auto u = TypedMap<std::uint64_t, std::string>::create(un, {.initial_capacity = 8});
  const std::vector<std::uint64_t> ukeys = {
      0, 1, (std::uint64_t{1} << 56) - 1, std::uint64_t{1} << 56, UINT64_MAX, 12345};
  for (const std::uint64_t k : ukeys) u.insert_or_assign(k, std::to_string(k).substr(0, 4 + k % 8));
  for (const bool json : {false, true}) {
    const std::string file = "/tmp/" + n.str() + (json ? ".json" : ".shmap");
    {
      m.dump(file, {.json = json});
      ScopedName back("snap-short-back");
      auto b = StringMap::load(file, back);
      EXPECT_EQ(contents(b), model) << json;
      EXPECT_EQ(b.size(), model.size());
      EXPECT_EQ(live_records(b), live_records(m)) << "the same entries inline after a load";
    }
    {
      mm.dump(file, {.json = json});
      ScopedName back("snap-short-mm-back");
      auto b = StringMultimap::load(file, back);
      EXPECT_EQ(b.size(), mm.size());
      for (const auto& [k, vs] : mmodel) EXPECT_EQ(b.find(k), vs) << k;
      RecordStats rs, rs0;
      b.compact();
      mm.compact();
      ASSERT_TRUE(b.check(&rs).ok);
      ASSERT_TRUE(mm.check(&rs0).ok);
      EXPECT_EQ(rs.inline_entries, rs0.inline_entries);
      EXPECT_GT(rs.inline_entries, 10u);
      EXPECT_EQ(rs.live, rs0.live);
    }
    {
      t.dump(file, {.json = json});
      ScopedName back("snap-short-t-back");
      auto b = TypedMap<std::string, std::uint32_t>::load(file, back);
      EXPECT_EQ(b.size(), 100u);
      for (std::uint32_t i = 0; i < 100; ++i) EXPECT_EQ(b.find("t" + std::to_string(i)), i * 7);
      RecordStats rs;
      b.compact();
      ASSERT_TRUE(b.check(&rs).ok);
      EXPECT_EQ(rs.inline_entries, 100u);
      EXPECT_EQ(rs.live, 0u);
    }
    {
      u.dump(file, {.json = json});
      ScopedName back("snap-short-u-back");
      auto b = TypedMap<std::uint64_t, std::string>::load(file, back);
      EXPECT_EQ(b.size(), ukeys.size());
      for (const std::uint64_t k : ukeys) {
        EXPECT_EQ(b.find(k), std::to_string(k).substr(0, 4 + k % 8)) << k;
      }
      RecordStats rs, rs0;
      b.compact();
      u.compact();
      ASSERT_TRUE(b.check(&rs).ok);
      ASSERT_TRUE(u.check(&rs0).ok);
      EXPECT_EQ(rs.inline_entries, rs0.inline_entries);
      EXPECT_EQ(rs.live, rs0.live);
    }
    std::remove(file.c_str());
  }
}

TEST(StringMap, TheCollisionHookSetOverShortEntriesKeepsThemReadableAndExact) {
  // Short entries written inline, then the test hook on: every key hashes to one of a few
  // words, some of them short keys' own words (an inline entry shares its list with hooked
  // keys). Writes fold the inline entry into a record with the others; nothing is lost, and
  // once the hook is off the short entries written before it read again.
  ScopedName n("hook-short");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::string k0;  // the short key whose own word is 0: ""
  ASSERT_TRUE(m.insert(k0, "empty"));
  ASSERT_TRUE(m.insert("a", "1"));
  {
    CollidingHash collide(1);  // every key to word 0: ""'s
    EXPECT_EQ(m.find(""), "empty") << "the inline entry under word 0";
    EXPECT_FALSE(m.contains("a")) << "\"a\" is under its own word, not the hook's";
    ASSERT_TRUE(m.insert("x", "2"));
    ASSERT_TRUE(m.insert("yy", "3"));
    EXPECT_EQ(m.find("x"), "2");
    EXPECT_EQ(m.find(""), "empty");
    EXPECT_EQ(m.size(), 4u);
    EXPECT_EQ(contents(m).size(), 4u);
    ASSERT_TRUE(m.erase("x"));
    ASSERT_TRUE(m.erase("yy"));
    EXPECT_EQ(m.find(""), "empty") << "one entry left under the hook: a record";
    // A hooked key alone under a short key's word (0, the empty key's): its entry is no
    // inline entry of that word (it would read back as the empty key's).
    ASSERT_TRUE(m.erase(""));
    ASSERT_TRUE(m.insert("x", "2"));
    EXPECT_EQ(m.find("x"), "2");
    EXPECT_FALSE(m.contains(""));
    ASSERT_TRUE(m.erase("x"));
    ASSERT_TRUE(m.insert("", "empty"));
  }
  EXPECT_EQ(m.find(""), "empty");
  EXPECT_EQ(m.find("a"), "1");
  EXPECT_EQ(m.size(), 2u);
  ASSERT_TRUE(m.insert_or_assign("", "e2") == false);
  EXPECT_EQ(m.find(""), "e2");
  EXPECT_EQ(live_records(m), 0u) << "rewritten without the hook: inline again";
}

TEST(StringMap, AnInlineWordUnderALongKeyIsDamageThatCheckReports) {
  // A short entry's bucket whose key word is made a long (hashed) key's: the value word is
  // then no valid entry for it. Readers of it report corrupt; check() must report it (not
  // throw, not count it as a healthy short entry); a lookup of another key still works.
  ScopedName n("short-long-damage");
  {
    auto m = StringMap::create(n, {.initial_capacity = 8});
    m.insert("k", "abc");
    m.insert("a much longer key", "a value in a record");
  }
  const std::uint64_t key_word = std::uint64_t{'k'} | std::uint64_t{1} << 56;
  RawWords p(n);
  ASSERT_TRUE(p.ok());
  const std::vector<std::size_t> at = p.find(key_word);
  ASSERT_EQ(at.size(), 1u) << "the short key's word, once";
  p[at[0]] |= std::uint64_t{1} << 63;
  auto m = StringMap::open(n);
  EXPECT_EQ(m.find("a much longer key"), "a value in a record");
  EXPECT_FALSE(m.contains("k")) << "its word is gone";
  EXPECT_EQ(code_of([&] { (void)contents(m); }), Errc::corrupt) << "a walk meets it";
  CheckReport rep;
  EXPECT_EQ(code_of([&] { rep = m.check(); }), Errc{}) << "check() reports, never throws";
  EXPECT_FALSE(rep.ok) << "a damaged bucket called healthy";
  EXPECT_TRUE(std::any_of(rep.problems.begin(), rep.problems.end(), [](const std::string& s) {
    return s.rfind("value records:", 0) == 0;
  })) << "the record audit counted the damaged word as a short entry";
  {
    // A read-only attachment cannot audit the records (that holds writers back), but it walks
    // the entries: the damage is reported there too.
    auto ro = StringMap::open(n, {.read_only = true});
    CheckReport r;
    EXPECT_EQ(code_of([&] { r = ro.check(); }), Errc{}) << "check() reports, never throws";
    EXPECT_FALSE(r.ok) << "a read-only check called the damaged bucket healthy";
    EXPECT_TRUE(std::any_of(r.problems.begin(), r.problems.end(),
                            [](const std::string& s) { return s.rfind("entries:", 0) == 0; }));
  }
  p[at[0]] = key_word;
  EXPECT_EQ(m.find("k"), "abc");
  EXPECT_TRUE(m.check().ok);
  // Damaged again and compacted (its table rebuilt): compact() neither throws nor loses the
  // other entry, and check() still reports the damage it carried over.
  p[at[0]] |= std::uint64_t{1} << 63;
  EXPECT_EQ(code_of([&] { m.compact(); }), Errc{});
  EXPECT_EQ(m.find("a much longer key"), "a value in a record");
  EXPECT_FALSE(m.check().ok);
  EXPECT_EQ(m.size(), 2u);
}

TEST(StringMap, UpdateAndUpsert) {
  ScopedName n("update");
  auto m = StringMap::create(n);
  EXPECT_FALSE(m.update("n", [](std::string& v) { v += "1"; })) << "absent: update is false";
  EXPECT_FALSE(m.contains("n"));
  EXPECT_TRUE(m.upsert(
      "n", [] { return "a"; }, [](std::string& v) { v += "b"; }));
  EXPECT_FALSE(m.upsert(
      "n", [] { return "a"; }, [](std::string& v) { v += "b"; }));
  EXPECT_EQ(m.find("n"), "ab");
  EXPECT_TRUE(m.update("n", [](std::string& v) { v = "longer value " + v; }));
  EXPECT_EQ(m.find("n"), "longer value ab");
  // f returns false: nothing written, but the key was present.
  EXPECT_TRUE(m.update("n", [](std::string& v) {
    v = "discarded";
    return false;
  }));
  EXPECT_EQ(m.find("n"), "longer value ab");
  // f throws: the exception comes out, nothing changes, no record is left behind.
  EXPECT_THROW(m.update("n", [](std::string&) -> void { throw std::runtime_error("f"); }),
               std::runtime_error);
  EXPECT_EQ(m.find("n"), "longer value ab");
  RecordStats rs;
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 1u);
}

TEST(StringMap, KeysOfOneHashShareARecordAndStayApart) {
  CollidingHash collide(3);  // every key in one of 3 records
  ScopedName n("collide");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::map<std::string, std::string> model;
  for (int i = 0; i < 40; ++i) {
    const std::string k = "key" + std::to_string(i);
    ASSERT_TRUE(m.insert(k, "v" + std::to_string(i)));
    model[k] = "v" + std::to_string(i);
    ASSERT_EQ(m.size(), model.size());
  }
  EXPECT_EQ(DynamicMap::open(n).stats().used_buckets, 3u) << "the table holds one bucket per hash";
  EXPECT_EQ(DynamicMap::open(n).size(), 40u) << "and counts every entry";
  EXPECT_EQ(m.stats().size, model.size());
  EXPECT_EQ(contents(m), model);
  for (int i = 0; i < 40; i += 2) {
    const std::string k = "key" + std::to_string(i);
    EXPECT_FALSE(m.insert_or_assign(k, "w"));
    model[k] = "w";
  }
  for (int i = 0; i < 40; i += 3) {
    const std::string k = "key" + std::to_string(i);
    EXPECT_TRUE(m.erase(k));
    EXPECT_FALSE(m.erase(k));
    model.erase(k);
    EXPECT_EQ(m.size(), model.size());
  }
  EXPECT_FALSE(m.contains("key0"));
  EXPECT_EQ(m.find("key2"), "w");
  EXPECT_EQ(m.find("key1"), "v1");
  EXPECT_TRUE(m.compare_exchange("key1", "v1", "cas"));
  model["key1"] = "cas";
  EXPECT_EQ(contents(m), model);
  // Entries of one hash that do not fit one record together: out_of_space, nothing written.
  const std::string big(kMaxStringEntryBytes / 2 + 100, 'b');
  std::string a, b;
  for (int i = 0; a.empty() || b.empty(); ++i) {
    const std::string k = "big" + std::to_string(i);
    (a.empty() ? a : b) = k;
    if (!b.empty() && StringMap::hash_for_test(a) != StringMap::hash_for_test(b)) b.clear();
  }
  // a and b share a hash that also holds some of the keys above.
  EXPECT_TRUE(m.insert(a, big));
  model[a] = big;
  EXPECT_EQ(code_of([&] { m.insert(b, big); }), Errc::out_of_space);
  EXPECT_FALSE(m.contains(b));
  // Erase everything: every hash's record goes, the count comes back to 0.
  for (const auto& [k, v] : model) EXPECT_TRUE(m.erase(k)) << k;
  EXPECT_EQ(m.size(), 0u);
  EXPECT_EQ(DynamicMap::open(n).size(), 0u);
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 0u);
}

TEST(StringMap, GrowsAndShrinksFromCapacity8AndGivesRecordsBack) {
  ScopedName n("grow");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  const std::uint64_t keys = scaled(20000);
  std::size_t peak = 0;
  for (int pass = 0; pass < 3; ++pass) {
    for (std::uint64_t i = 0; i < keys; ++i) {
      ASSERT_TRUE(m.insert("k" + std::to_string(i), bytes_of(i + pass, i % 200)));
    }
    ASSERT_EQ(m.size(), keys);
    for (std::uint64_t i = 0; i < keys; i += 97) {
      ASSERT_EQ(m.find("k" + std::to_string(i)), bytes_of(i + pass, i % 200));
    }
    peak = std::max(peak, m.stats().allocated_bytes);
    for (std::uint64_t i = 0; i < keys; ++i) ASSERT_TRUE(m.erase("k" + std::to_string(i)));
    ASSERT_EQ(m.size(), 0u);
    m.compact();
    // The third pass needs no more memory than the first: records were reused.
    if (pass == 2) {
      EXPECT_LE(m.stats().allocated_bytes, peak);
    }
  }
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 0u);
  EXPECT_GT(rs.free, 0u);
}

TEST(StringMap, LargeValuesGiveTheirPagesBackWhenFreedAndAreReused) {
  ScopedName n("large");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  constexpr int kValues = 24;
  const std::size_t mib = std::size_t{1} << 20;
  auto value = [&](int i, int pass) { return bytes_of(std::uint64_t(i) * 7 + pass, mib + i); };
  const std::size_t before = m.stats().allocated_bytes;
  std::size_t first_arena = 0;
  for (int pass = 0; pass < 3; ++pass) {
    for (int i = 0; i < kValues; ++i) {
      ASSERT_TRUE(m.insert("big" + std::to_string(i), value(i, pass)));
    }
    for (int i = 0; i < kValues; ++i) {
      ASSERT_EQ(m.find("big" + std::to_string(i)), value(i, pass)) << i;
    }
    EXPECT_GE(m.stats().allocated_bytes - before, kValues * mib);
    // Passes 2 and 3 reuse the first pass's records: the segment does not grow.
    if (pass == 0) first_arena = m.stats().segment_bytes;
    EXPECT_LE(m.stats().segment_bytes, first_arena + mib) << "pass " << pass;
    for (int i = 0; i < kValues; ++i) ASSERT_TRUE(m.erase("big" + std::to_string(i)));
    m.compact();  // reclaims the retired records: their pages go back to the system
    RecordStats rs;
    ASSERT_TRUE(m.check(&rs).ok);
    EXPECT_EQ(rs.live, 0u);
    EXPECT_EQ(rs.leaked, 0u);
    EXPECT_EQ(rs.retired, 0u);
    EXPECT_GE(rs.free, static_cast<std::size_t>(kValues));
    // Freed large records keep one page each: at most 1/8 of their bytes stays occupied.
    EXPECT_LT(m.stats().allocated_bytes - before, kValues * mib / 8) << "pass " << pass;
  }
  // Overwriting a large value in place many times keeps one or two records' worth of memory.
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(m.insert_or_assign("again", value(i % 3, i)), i == 0);
  }
  m.compact();
  EXPECT_EQ(m.find("again"), value(199 % 3, 199));
  EXPECT_LT(m.stats().allocated_bytes - before, 8 * mib);
}

// Writes return retired records by themselves, without compact(): a reclaim pass runs each time
// the bytes retired in the segment fill the reclaim budget (RecordHeap::retire), and a pass run
// by a write frees at most kReclaimMaxRecords blocks. Slabs are never returned, so their count
// at the end is the most blocks ever held at once. Without the trigger, retired records pile up
// until the segment is full (about 560 slabs of large records here, 340 of small ones); with
// only the byte budget and no cap on the count, a pass frees ~37,000 small records.
TEST(StringMap, RetiredRecordsStayBoundedUnderOverwritesWithoutCompact) {
  using detail::RecordHeap;
  ScopedName n("bounded");
  constexpr std::size_t kMaxBytes = std::size_t{64} << 20;
  auto m = StringMap::create(n, {.initial_capacity = 8, .max_bytes = kMaxBytes});
  const std::uint64_t budget = std::min<std::uint64_t>(RecordHeap::kReclaimBudgetBytes,
                                                       kMaxBytes / RecordHeap::kReclaimBudgetShare);
  // Large values: one block to a slab, ~100 KiB each; 2,000 overwrites of 4 keys write three
  // times the segment.
  constexpr int kBigKeys = 4;
  const std::size_t big = 100 << 10;
  const std::string value = bytes_of(1, big);
  for (int i = 0; i < 2000; ++i) {
    std::string v = value;
    std::memcpy(v.data(), &i, sizeof i);
    m.insert_or_assign("big" + std::to_string(i % kBigKeys), v);
  }
  RecordStats rs;
  ASSERT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.live, static_cast<std::size_t>(kBigKeys));
  EXPECT_EQ(rs.leaked, 0u);
  // The limbo stack and one batch: a budget each, plus the record that crossed the line.
  const std::size_t per_budget = budget / big + 1;
  EXPECT_LE(rs.retired, 2 * per_budget) << "retired records were not reclaimed by the writes";
  EXPECT_LE(rs.slabs, kBigKeys + 2 * per_budget + 4)
      << "the large records held at once: " << rs.slabs << " slabs";
  for (int i = 0; i < kBigKeys; ++i) ASSERT_TRUE(m.erase("big" + std::to_string(i)));

  // Small values: 200,000 overwrites of 1,000 keys, ~100-byte blocks.
  constexpr std::uint64_t kKeys = 1000;
  const std::size_t slabs_before = rs.slabs;
  for (std::uint64_t i = 0; i < 200000; ++i) {
    m.insert_or_assign("k" + std::to_string(i % kKeys), bytes_of(i, 64));
  }
  ASSERT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.live, kKeys);
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_LE(rs.retired, 2 * RecordHeap::kReclaimMaxRecords + 1);
  // Blocks held at once: the live ones and two passes' worth, in 64 KiB slabs of ~580 blocks.
  const std::size_t blocks = kKeys + 2 * RecordHeap::kReclaimMaxRecords + 1;
  EXPECT_LE(rs.slabs - slabs_before, blocks / (detail::kSlabBytes / 128) + 4)
      << "the small records held at once: " << rs.slabs - slabs_before << " slabs";
}

TEST(StringMap, TypesAreRecordedAndOtherTypesRefused) {
  ScopedName n("types");
  {
    auto m = StringMap::create(n);
    ASSERT_TRUE(m.insert("a", "b"));
  }
  EXPECT_EQ(code_of([&] { (void)Map::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)TypedMap<std::uint64_t, std::uint64_t>::open(n); }),
            Errc::layout_mismatch);
  auto d = DynamicMap::open(n);
  EXPECT_TRUE(d.holds_strings());
  EXPECT_EQ(d.describe(), "string -> string");
  EXPECT_EQ(d.size(), 1u);
  std::uint64_t out = 0;
  EXPECT_EQ(code_of([&] { (void)d.find(1, &out); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)d.insert(1, &out); }), Errc::layout_mismatch);
  // Its dump (snapshot version 3, through a StringMap view) loads as a string map.
  const std::string file = "/tmp/" + n.str() + ".shmap";
  d.dump(file);
  {
    ScopedName back("types-back");
    EXPECT_EQ(StringMap::load(file, back).find("a"), "b");
  }
  std::remove(file.c_str());
  try {
    (void)Map::open(n);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("string -> string"), std::string::npos) << e.what();
  }
  // A StringMap on a uint64 map and on a typed map: refused, naming both.
  ScopedName u("types-u64");
  { auto mu = Map::create(u); }
  try {
    (void)StringMap::open(u);
    ADD_FAILURE() << "opened a uint64 map as strings";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::layout_mismatch);
    EXPECT_NE(std::string(e.what()).find("uint64 -> uint64"), std::string::npos) << e.what();
  }
  EXPECT_EQ(code_of([&] { (void)StringMap::open(u, {.read_only = true}); }), Errc::layout_mismatch);
  // String values take keys of any size that leave room for a value.
  struct Wide {
    std::uint64_t a, b;
  };
  TypeInfo too_wide = type_info<Wide>();
  too_wide.size = static_cast<std::uint32_t>(kMaxStringEntryBytes) + 1;
  EXPECT_EQ(code_of([&] {
              (void)DynamicMap::create(n.str() + "-x", {}, {too_wide, string_type()});
            }),
            Errc::invalid_argument);
  // open_or_create: opens the existing one.
  bool created = true;
  auto again = StringMap::open_or_create(n, {}, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(again.find("a"), "b");
}

TEST(StringMap, ReadOnlyAttachmentReadsAndRefusesWrites) {
  ScopedName n("ro");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  for (int i = 0; i < 500; ++i) m.insert("k" + std::to_string(i), std::string(i % 50, 'v'));
  auto ro = StringMap::open(n, {.read_only = true});
  EXPECT_TRUE(ro.read_only());
  EXPECT_EQ(ro.size(), 500u);
  EXPECT_EQ(ro.find("k7"), std::string(7, 'v'));
  EXPECT_FALSE(ro.contains("nope"));
  EXPECT_EQ(contents(ro), contents(m));
  EXPECT_EQ(code_of([&] { ro.insert("x", "y"); }), Errc::permission_denied);
  EXPECT_FALSE(m.contains("x"));
}

/// A value that names its key and version and repeats them to a length of its own: a torn,
/// reused or misplaced value does not verify.
std::string checked_value(const std::string& k, std::uint64_t ver) {
  const std::string unit = k + "#" + std::to_string(ver) + ";";
  std::string v;
  for (std::uint64_t i = 0; i < 1 + (mix(ver) % 40); ++i) v += unit;
  return v;
}
bool verifies(const std::string& k, const std::string& v) {
  const std::size_t hash = v.find('#');
  if (hash == std::string::npos || v.compare(0, hash, k) != 0) return false;
  const std::uint64_t ver = std::strtoull(v.c_str() + hash + 1, nullptr, 10);
  return v == checked_value(k, ver);
}

TEST(StringMap, ReadOnlyAttachmentReadsWholeValuesWhileWritersReplaceThem) {
  // The read-only path copies a record under a validated read while a writer replaces every
  // value again and again (records retired and reused) and grows and shrinks the map.
  ScopedName n("ro-live");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  constexpr int kKeys = 64;
  auto key = [](int i) { return "key-" + std::to_string(i); };
  for (int i = 0; i < kKeys; ++i) m.insert_or_assign(key(i), checked_value(key(i), 0));
  auto ro = StringMap::open(n, {.read_only = true});
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t g = 1; !stop.load(std::memory_order_relaxed); ++g) {
      for (int i = 0; i < kKeys; ++i) m.insert_or_assign(key(i), checked_value(key(i), g));
      for (std::uint64_t j = 0; j < (g % 5) * 300; ++j) m.insert("tmp" + std::to_string(j), "t");
      for (std::uint64_t j = 0; j < 1500; ++j) m.erase("tmp" + std::to_string(j));
    }
  });
  std::size_t reads = 0, bad = 0, walks = 0;
  const std::uint64_t rounds = scaled(300);
  for (std::uint64_t r = 0; r < rounds; ++r) {
    for (int i = 0; i < kKeys; ++i) {
      const auto v = ro.find(key(i));
      ++reads;
      if (!v || !verifies(key(i), *v)) ++bad;
    }
    if (r % 30 == 0) {
      // A walk may time out against a map that never stops resizing (documented: Errc::timeout);
      // whatever it visits must verify.
      try {
        ro.for_each([&](std::string_view k, std::string_view v) {
          if (k.rfind("key-", 0) == 0 && !verifies(std::string(k), std::string(v))) ++bad;
        });
        ++walks;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), Errc::timeout) << e.what();
      }
    }
  }
  stop = true;
  writer.join();
  EXPECT_EQ(bad, 0u) << "of " << reads << " reads and " << walks << " walks";
  EXPECT_GT(m.stats().resizes, 2u) << "the writer did not resize the map";
}

TEST(StringMap, VisitValueSeesTheStoredBytesAndNothingForAnAbsentKey) {
  ScopedName n("visit");
  CollidingHash collide(16);  // absent keys that share a hash (and a record) with present ones
  auto m = StringMap::create(n, {.initial_capacity = 8});
  std::map<std::string, std::string> model;
  for (int i = 0; i < 300; ++i) {
    const std::string k = "k" + std::to_string(i);
    model[k] = bytes_of(i, static_cast<std::size_t>(i) * 7 % 1000);  // empty and binary too
    m.insert_or_assign(k, model[k]);
  }
  for (const auto& [k, v] : model) {
    int calls = 0;
    std::string seen;
    EXPECT_TRUE(m.visit_value(k, [&](std::string_view got) {
      ++calls;
      seen.assign(got);
    })) << k;
    EXPECT_EQ(calls, 1) << k;
    EXPECT_EQ(seen, v) << k;
  }
  for (int i = 300; i < 400; ++i) {
    int calls = 0;
    EXPECT_FALSE(m.visit_value("k" + std::to_string(i), [&](std::string_view) { ++calls; }));
    EXPECT_EQ(calls, 0) << "f was called for an absent key";
  }
  ASSERT_TRUE(m.erase("k7"));
  EXPECT_FALSE(m.visit_value("k7", [](std::string_view) { ADD_FAILURE() << "erased key seen"; }));
  // A read-only attachment: f sees a validated copy, the same bytes.
  auto ro = StringMap::open(n, {.read_only = true});
  std::string seen;
  EXPECT_TRUE(ro.visit_value("k42", [&](std::string_view v) { seen.assign(v); }));
  EXPECT_EQ(seen, model["k42"]);
  EXPECT_FALSE(ro.visit_value("k7", [](std::string_view) { ADD_FAILURE() << "erased key seen"; }));
}

TEST(StringMap, VisitValueThatThrowsLeavesNoPinHeld) {
  // A pin left held by this thread would keep every table and record retired after it from
  // being freed: after the throws, a growth and shrink must still give all of them back.
  ScopedName n("visit-throw");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  m.insert("a", "a value in a record");  // more than 7 bytes: not inline (entry_list.hpp)
  struct Thrown {};
  for (int i = 0; i < 3; ++i) {
    EXPECT_THROW(m.visit_value("a", [](std::string_view) { throw Thrown{}; }), Thrown);
  }
  for (int i = 0; i < 5000; ++i) m.insert_or_assign("g" + std::to_string(i), "a record value");
  for (int i = 0; i < 5000; ++i) m.erase("g" + std::to_string(i));
  m.compact();
  const Stats s = m.stats();
  EXPECT_GT(s.resizes, 2u) << "the map did not grow";
  EXPECT_EQ(s.retired_pending, 0u) << "tables retired after the throws were not freed";
  RecordStats records;
  const CheckReport r = m.check(&records);
  EXPECT_TRUE(r.ok) << (r.problems.empty() ? "" : r.problems.front());
  EXPECT_EQ(records.retired, 0u) << "records retired after the throws were not freed";
  EXPECT_EQ(records.live, 1u);
}

TEST(StringMap, VisitValueSeesWholeValuesWhileWritersReplaceThem) {
  // The view points at a record another thread is replacing and retiring: the pin keeps it
  // from reuse until f returns, so every value seen verifies whole.
  ScopedName n("visit-live");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  constexpr int kKeys = 64;
  auto key = [](int i) { return "key-" + std::to_string(i); };
  for (int i = 0; i < kKeys; ++i) m.insert_or_assign(key(i), checked_value(key(i), 0));
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t g = 1; !stop.load(std::memory_order_relaxed); ++g) {
      for (int i = 0; i < kKeys; ++i) m.insert_or_assign(key(i), checked_value(key(i), g));
      for (std::uint64_t j = 0; j < (g % 5) * 300; ++j) m.insert("tmp" + std::to_string(j), "t");
      for (std::uint64_t j = 0; j < 1500; ++j) m.erase("tmp" + std::to_string(j));
    }
  });
  std::size_t reads = 0, bad = 0;
  const std::uint64_t rounds = scaled(300);
  for (std::uint64_t r = 0; r < rounds; ++r) {
    for (int i = 0; i < kKeys; ++i) {
      const std::string k = key(i);
      const bool found = m.visit_value(k, [&](std::string_view v) {
        ++reads;
        if (!verifies(k, std::string(v))) ++bad;
      });
      if (!found) ++bad;
    }
  }
  stop = true;
  writer.join();
  EXPECT_EQ(bad, 0u) << "of " << reads << " reads";
  EXPECT_GT(m.stats().resizes, 2u) << "the writer did not resize the map";
}

}  // namespace
}  // namespace shmap

namespace string_test_types {
struct Quote {
  double bid, ask;
  std::uint64_t ts;
};
struct Tally {
  std::uint64_t n;
  std::uint64_t by[4];
};
}  // namespace string_test_types

namespace shmap {
namespace {

using string_test_types::Quote;
using string_test_types::Tally;

TEST(StringKeyedTypedMap, StructValuesRoundTripAndTheTypesAreRecorded) {
  ScopedName n("skey");
  auto q = TypedMap<std::string, Quote>::create(n, {.initial_capacity = 8});
  EXPECT_TRUE(q.insert("EURUSD", Quote{1.08, 1.09, 1}));
  EXPECT_FALSE(q.insert("EURUSD", Quote{0, 0, 0}));
  EXPECT_FALSE(q.insert_or_assign("EURUSD", Quote{1.1, 1.2, 2}));
  EXPECT_TRUE(q.insert_or_assign("", Quote{0, 0, 3})) << "an empty key is a key";
  EXPECT_EQ(q.find("EURUSD")->ts, 2u);
  EXPECT_EQ(q.find("EURUSD")->ask, 1.2);
  EXPECT_FALSE(q.find("GBPUSD").has_value());
  EXPECT_TRUE(q.update("EURUSD", [](Quote& v) { v.ts += 40; }));
  EXPECT_EQ(q.find("EURUSD")->ts, 42u);
  EXPECT_FALSE(q.update("GBPUSD", [](Quote& v) { v.ts = 1; }));
  EXPECT_TRUE(q.upsert(
      "GBPUSD",
      [] {
        return Quote{1.3, 1.4, 7};
      },
      [](Quote& v) { ++v.ts; }));
  EXPECT_FALSE(q.upsert(
      "GBPUSD", [] { return Quote{}; }, [](Quote& v) { ++v.ts; }));
  EXPECT_EQ(q.find("GBPUSD")->ts, 8u);
  const Quote now = *q.find("GBPUSD");
  EXPECT_FALSE(q.compare_exchange("GBPUSD", Quote{0, 0, 0}, Quote{9, 9, 9}));
  EXPECT_TRUE(q.compare_exchange("GBPUSD", now, Quote{9, 9, 9}));
  EXPECT_EQ(q.find("GBPUSD")->bid, 9.0);
  // Many keys of many lengths, through growth; then every one back.
  for (int i = 0; i < 3000; ++i) {
    const std::string k = std::string(i % 300, 'k') + std::to_string(i);
    ASSERT_TRUE(q.insert(k, Quote{double(i), double(-i), std::uint64_t(i)}));
  }
  for (int i = 0; i < 3000; i += 7) {
    const auto v = q.find(std::string(i % 300, 'k') + std::to_string(i));
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(v->ts, std::uint64_t(i));
  }
  std::size_t walked = 0;
  q.for_each([&](std::string_view, const Quote&) { ++walked; });
  EXPECT_EQ(walked, q.size());
  EXPECT_EQ(q.size(), 3003u);
  EXPECT_TRUE(q.erase("EURUSD"));
  EXPECT_FALSE(q.erase("EURUSD"));
  // A key too long for one entry beside the value: refused, nothing written.
  EXPECT_EQ(code_of([&] { q.insert(std::string(kMaxStringEntryBytes, 'x'), Quote{}); }),
            Errc::invalid_argument);
  RecordStats rs;
  const auto rep = q.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, q.size());

  // The types are recorded: every other view of the segment is refused, naming both.
  EXPECT_EQ(code_of([&] { (void)StringMap::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)TypedMap<std::string, Tally>::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)TypedMap<std::uint64_t, Quote>::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)Map::open(n); }), Errc::layout_mismatch);
  auto d = DynamicMap::open(n);
  EXPECT_TRUE(d.holds_strings());
  EXPECT_NE(d.describe().find("string -> "), std::string::npos) << d.describe();
  EXPECT_NE(d.describe().find("Quote (24 bytes)"), std::string::npos) << d.describe();
  auto again = TypedMap<std::string, Quote>::open(n);
  EXPECT_EQ(again.find("GBPUSD")->bid, 9.0);
  // And a string -> string map is not a string -> Quote map.
  ScopedName ss("skey-ss");
  { auto m = StringMap::create(ss); }
  EXPECT_EQ(code_of([&] { (void)TypedMap<std::string, Quote>::open(ss); }), Errc::layout_mismatch);
}

TEST(StringKeyedTypedMap, StructCountersFromManyThreadsAreExact) {
  ScopedName n("skey-thr");
  auto m = TypedMap<std::string, Tally>::create(n, {.initial_capacity = 8});
  constexpr int kThreads = 4, kKeys = 5;
  const std::uint64_t per = scaled(3000);
  for (int i = 0; i < kKeys; ++i) ASSERT_TRUE(m.insert("tally/" + std::to_string(i), Tally{}));
  std::vector<std::thread> ts;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < per; ++i) {
        const std::string k = "tally/" + std::to_string((i + t) % kKeys);
        if (!m.update(k, [t](Tally& v) {
              ++v.n;
              ++v.by[t];
            })) {
          errors++;
        }
        if (i % 97 == 0) {  // churn: the table grows and shrinks under the tallies
          for (int j = 0; j < 50; ++j)
            m.insert_or_assign("tmp/" + std::to_string(t * 100 + j), Tally{});
          for (int j = 0; j < 50; ++j) m.erase("tmp/" + std::to_string(t * 100 + j));
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0);
  std::uint64_t total = 0;
  std::uint64_t by[kThreads] = {};
  m.for_each([&](std::string_view k, const Tally& v) {
    EXPECT_EQ(k.rfind("tally/", 0), 0u) << k;
    total += v.n;
    for (int t = 0; t < kThreads; ++t) by[t] += v.by[t];
  });
  EXPECT_EQ(total, kThreads * per) << "lost or doubled updates";
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(by[t], per) << t;
  EXPECT_EQ(m.size(), std::size_t{kKeys});
}

// Threads: counters kept as decimal strings, incremented through update() by many threads
// (more than a handle slot's 15 lanes) on a map that another thread grows and shrinks from
// capacity 8; with `collide`, all the counters and the churn keys share a few records.
void counters_under_churn(bool collide) {
  std::optional<CollidingHash> c;
  if (collide) c.emplace(64);  // ~5 keys a record; the table still resizes
  ScopedName n(collide ? "thr-collide" : "thr");
  auto m = StringMap::create(n, {.initial_capacity = 8});
  constexpr int kThreads = 20, kCounters = 7;
  const std::uint64_t per = scaled(1500);
  for (int i = 0; i < kCounters; ++i) ASSERT_TRUE(m.insert("counter" + std::to_string(i), "0"));
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::thread churn([&] {
    for (std::uint64_t round = 0; !stop.load(std::memory_order_relaxed); ++round) {
      for (int i = 0; i < 300; ++i) {
        if (!m.insert("churn" + std::to_string(i), std::string(i % 40, 'c'))) errors++;
      }
      for (int i = 0; i < 300; ++i) {
        if (!m.erase("churn" + std::to_string(i))) errors++;
      }
    }
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < per; ++i) {
        const std::string k = "counter" + std::to_string((t + i) % kCounters);
        const bool ok = m.update(k, [](std::string& v) { v = std::to_string(std::stoull(v) + 1); });
        if (!ok) errors++;
        if (i % 16 == 0) {
          const auto v = m.find(k);
          if (!v || v->empty() || v->find_first_not_of("0123456789") != std::string::npos) {
            errors++;
          }
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  stop = true;
  churn.join();
  EXPECT_EQ(errors.load(), 0);
  std::uint64_t total = 0;
  for (int i = 0; i < kCounters; ++i) total += std::stoull(*m.find("counter" + std::to_string(i)));
  EXPECT_EQ(total, kThreads * per) << "lost or doubled increments";
  EXPECT_EQ(m.size(), std::size_t{kCounters});
  EXPECT_EQ(contents(m).size(), std::size_t{kCounters});
  EXPECT_GT(m.stats().resizes, 2u) << "the churn did not resize the map";
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
}

TEST(StringThreads, CountersAreExactUnderChurnWithManyThreads) { counters_under_churn(false); }
TEST(StringThreads, CountersOnCollidingKeysAreExactUnderChurn) { counters_under_churn(true); }

// ---- TypedMap<K, std::string> --------------------------------------------------------------

TEST(NumberKeyedStringMap, ValuesOfEveryLengthUnderNumberKeysAndTheTypesRecorded) {
  ScopedName n("u64-str");
  using M = TypedMap<std::uint64_t, std::string>;
  auto m = M::create(n, {.initial_capacity = 8});
  std::map<std::uint64_t, std::string> model;
  const std::uint64_t keys[] = {0, 1, 42, std::uint64_t{1} << 63, UINT64_MAX};
  std::size_t i = 0;
  for (const std::uint64_t k : keys) {
    for (const std::size_t len :
         {std::size_t{0}, std::size_t{5}, std::size_t{5000}, std::size_t{1} << 20}) {
      const std::uint64_t key = k ^ (len * 0x9e37);
      model[key] = bytes_of(++i, len);
      EXPECT_TRUE(m.insert(key, model[key]));
    }
  }
  for (const auto& [k, v] : model) ASSERT_EQ(m.find(k), v) << k;
  EXPECT_EQ(m.size(), model.size());
  std::map<std::uint64_t, std::string> seen;
  m.for_each([&](const std::uint64_t& k, std::string_view v) { seen[k] = std::string(v); });
  EXPECT_EQ(seen, model);
  const std::uint64_t k0 = model.begin()->first;
  EXPECT_FALSE(m.insert_or_assign(k0, "replaced"));
  EXPECT_TRUE(m.update(k0, [](std::string& v) { v += "!"; }));
  EXPECT_EQ(m.find(k0), "replaced!");
  EXPECT_TRUE(m.compare_exchange(k0, "replaced!", "cas"));
  EXPECT_TRUE(m.erase(k0));
  EXPECT_FALSE(m.contains(k0));
  EXPECT_FALSE(m.find(12345).has_value());
  // The types: u64 -> string. Other views refuse it, naming both.
  auto d = DynamicMap::open(n);
  EXPECT_EQ(d.describe(), "uint64 -> string");
  EXPECT_TRUE(d.holds_strings());
  EXPECT_EQ(code_of([&] { (void)StringMap::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)Map::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)(TypedMap<std::int64_t, std::string>::open(n)); }),
            Errc::layout_mismatch);
  // open_any sees keys as 8 bytes: other sizes are refused (writes) or absent (reads).
  auto any = StringMap::open_any(n);
  EXPECT_EQ(any.key_bytes(), 8u);
  EXPECT_EQ(code_of([&] { any.insert("short", "x"); }), Errc::invalid_argument);
  EXPECT_FALSE(any.contains("short"));
  RecordStats rs;
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
}

TEST(NumberKeyedStringMap, SmallKeyTypesAndConcurrentWriters) {
  ScopedName n("i32-str");
  using M = TypedMap<std::int32_t, std::string>;
  auto m = M::create(n, {.initial_capacity = 8});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      auto h = M::open(n);
      for (int i = 0; i < 2000; ++i) {
        const std::int32_t k = -(t * 10000 + i);
        ASSERT_TRUE(h.insert(k, std::to_string(k)));
        if (i % 3 == 0) {
          ASSERT_TRUE(h.erase(k));
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  std::size_t n_left = 0;
  m.for_each([&](const std::int32_t& k, std::string_view v) {
    EXPECT_EQ(v, std::to_string(k));
    ++n_left;
  });
  EXPECT_EQ(n_left, 4u * (2000 - 667));
  EXPECT_EQ(m.size(), n_left);
}

// ---- keys of more than 8 bytes ---------------------------------------------------------------

namespace big_key_types {
struct Pair {
  std::uint64_t account, instrument;
  bool operator==(const Pair&) const = default;
};
struct Position {
  std::int64_t qty;
  double price;
  std::uint64_t updates;
  bool operator==(const Position&) const = default;
};
}  // namespace big_key_types
using big_key_types::Pair;
using big_key_types::Position;

TEST(BigKeyTypedMap, SixteenByteKeysWithStructValuesGrowShrinkAndKeepEveryEntry) {
  ScopedName n("pair-key");
  using M = TypedMap<Pair, Position>;
  auto m = M::create(n, {.initial_capacity = 8});
  EXPECT_TRUE(m.insert({1, 2}, Position{10, 1.5, 0}));
  EXPECT_FALSE(m.insert({1, 2}, Position{11, 1.5, 0})) << "present: not replaced";
  EXPECT_EQ(m.find({1, 2}), (Position{10, 1.5, 0}));
  EXPECT_FALSE(m.find({2, 1}).has_value()) << "the bytes are the key: {2, 1} is another";
  EXPECT_TRUE(m.update({1, 2}, [](Position& p) { p.qty += 5; }));
  EXPECT_FALSE(m.update({9, 9}, [](Position& p) { p.qty += 5; }));
  EXPECT_TRUE(m.upsert(
      {9, 9},
      [] {
        return Position{1, 0, 0};
      },
      [](Position& p) { ++p.qty; }));
  EXPECT_FALSE(m.upsert(
      {9, 9},
      [] {
        return Position{1, 0, 0};
      },
      [](Position& p) { ++p.qty; }));
  EXPECT_EQ(m.find({9, 9})->qty, 2);
  EXPECT_TRUE(m.compare_exchange({1, 2}, Position{15, 1.5, 0}, Position{0, 2.5, 1}));
  EXPECT_FALSE(m.compare_exchange({1, 2}, Position{15, 1.5, 0}, Position{0, 2.5, 2}));
  EXPECT_TRUE(m.erase({9, 9}));
  EXPECT_FALSE(m.erase({9, 9}));
  // Growth from 8 buckets, then shrink; every entry exact throughout.
  std::map<std::pair<std::uint64_t, std::uint64_t>, Position> model{{{1, 2}, {0, 2.5, 1}}};
  for (std::uint64_t i = 0; i < 5000; ++i) {
    const Pair k{i * 0x9E3779B97F4A7C15ULL, ~i};
    const Position v{static_cast<std::int64_t>(i), i * 0.25, i};
    ASSERT_TRUE(m.insert_or_assign(k, v));
    model[{k.account, k.instrument}] = v;
  }
  for (std::uint64_t i = 0; i < 5000; i += 2) {
    ASSERT_TRUE(m.erase({i * 0x9E3779B97F4A7C15ULL, ~i}));
    model.erase({i * 0x9E3779B97F4A7C15ULL, ~i});
  }
  EXPECT_EQ(m.size(), model.size());
  std::size_t seen = 0;
  m.for_each([&](const Pair& k, const Position& v) {
    const auto it = model.find({k.account, k.instrument});
    ASSERT_NE(it, model.end());
    EXPECT_EQ(v, it->second);
    ++seen;
  });
  EXPECT_EQ(seen, model.size());
  RecordStats rs;
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
  m.compact();
  EXPECT_EQ(M::open(n).size(), model.size());
}

TEST(BigKeyTypedMap, TheTypesAreRecordedAndEveryOtherViewRefused) {
  ScopedName n("pair-types");
  auto m = TypedMap<Pair, Position>::create(n);
  m.insert_or_assign({3, 4}, Position{1, 2, 3});
  EXPECT_EQ(code_of([&] { (TypedMap<Pair, Tally>::open(n)); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (TypedMap<std::string, Position>::open(n)); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { StringMap::open(n); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { Map::open(n); }), Errc::layout_mismatch);
  const DynamicMap d = DynamicMap::open(n);
  EXPECT_TRUE(d.holds_strings()) << "held by its bytes, as a string key is";
  EXPECT_EQ(d.key_type().size, 16u);
  EXPECT_EQ(d.size(), 1u);
  // The tools' view: a string-keyed map whose keys have 16 bytes.
  const StringMap any = StringMap::open_any(n);
  EXPECT_EQ(any.key_bytes(), 16u);
  EXPECT_EQ(any.value_bytes(), sizeof(Position));
  const Pair k{3, 4};
  std::string key(reinterpret_cast<const char*>(&k), sizeof k);
  EXPECT_EQ(any.find(key)->size(), sizeof(Position));
  EXPECT_EQ(code_of([&] { StringMap::open_any(n).insert("short", std::string(24, 'x')); }),
            Errc::invalid_argument)
      << "a key of another size";
}

TEST(BigKeyTypedMap, ArrayKeysWithStringValuesAndConcurrentWriters) {
  ScopedName n("arr-str");
  using K = std::array<unsigned char, 100>;
  using M = TypedMap<K, std::string>;
  auto m = M::create(n, {.initial_capacity = 8});
  auto key = [](int t, int i) {
    K k{};
    for (std::size_t j = 0; j < k.size(); ++j) k[j] = static_cast<unsigned char>(t * 31 + i + j);
    k[0] = static_cast<unsigned char>(t);
    k[1] = static_cast<unsigned char>(i & 0xff);
    k[2] = static_cast<unsigned char>(i >> 8);
    return k;
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      auto h = M::open(n);
      for (int i = 0; i < 1500; ++i) {
        ASSERT_TRUE(h.insert(key(t, i), "v" + std::to_string(t * 10000 + i)));
        if (i % 3 == 0) {
          ASSERT_TRUE(h.erase(key(t, i)));
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  std::size_t left = 0;
  m.for_each([&](const K& k, std::string_view v) {
    const int t = k[0], i = k[1] | k[2] << 8;
    EXPECT_EQ(k, key(t, i));
    EXPECT_EQ(v, "v" + std::to_string(t * 10000 + i));
    ++left;
  });
  EXPECT_EQ(left, 4u * 1000);
  EXPECT_EQ(m.size(), left);
}

// ---- StringMultimap ------------------------------------------------------------------------

std::multimap<std::string, std::string> contents(const StringMultimap& m) {
  std::multimap<std::string, std::string> out;
  m.for_each([&](std::string_view k, std::string_view v) { out.emplace(k, v); });
  return out;
}

TEST(StringMultimap, ValuesOfAKeyInOrderCountedFoundAndErased) {
  ScopedName n("multi");
  auto m = StringMultimap::create(n, {.initial_capacity = 8});
  EXPECT_EQ(m.count("k"), 0u);
  EXPECT_TRUE(m.find("k").empty());
  m.insert("k", "b");
  m.insert("k", "a");
  m.insert("k", "b");  // a value may occur twice
  m.insert("k", "");   // empty values too
  m.insert("", "empty key");
  m.insert("other", std::string("\0\xff", 2));
  EXPECT_EQ(m.count("k"), 4u);
  EXPECT_EQ(m.find("k"), (std::vector<std::string>{"b", "a", "b", ""})) << "insertion order";
  EXPECT_TRUE(m.contains("k", "a"));
  EXPECT_FALSE(m.contains("k", "c"));
  EXPECT_EQ(m.find(""), (std::vector<std::string>{"empty key"}));
  EXPECT_EQ(m.size(), 6u);
  EXPECT_FALSE(m.insert_unique("k", "a"));
  EXPECT_TRUE(m.insert_unique("k", "c"));
  EXPECT_EQ(m.count("k"), 5u);
  // erase(k, v) takes the first occurrence only.
  EXPECT_TRUE(m.erase("k", "b"));
  EXPECT_EQ(m.find("k"), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_FALSE(m.erase("k", "zzz"));
  EXPECT_FALSE(m.erase("absent", "b"));
  std::vector<std::string> seen;
  EXPECT_EQ(m.for_each_value("k", [&](std::string_view v) { seen.emplace_back(v); }), 4u);
  EXPECT_EQ(seen, m.find("k"));
  EXPECT_EQ(m.size(), 6u);
  EXPECT_EQ(contents(m).count("k"), 4u);
  // erase(k): all of them.
  EXPECT_EQ(m.erase("k"), 4u);
  EXPECT_EQ(m.erase("k"), 0u);
  EXPECT_FALSE(m.contains("k"));
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(StringMultimap::open(n).size(), 2u) << "another handle counts the same";
  RecordStats rs;
  const auto rep = m.check(&rs);
  EXPECT_TRUE(rep.ok) << (rep.problems.empty() ? "" : rep.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 1u) << "\"\"'s value takes a record; \"other\"'s short entry is inline";
}

TEST(StringMultimap, TheKindIsRecordedAndEveryOtherViewRefused) {
  ScopedName multi("kind-multi"), single("kind-single");
  StringMultimap::create(multi).insert("a", "b");
  StringMap::create(single).insert("a", "b");
  try {
    (void)StringMap::open(multi);
    ADD_FAILURE() << "a StringMap opened a multimap";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::layout_mismatch);
    EXPECT_NE(std::string(e.what()).find("multimap"), std::string::npos) << e.what();
  }
  EXPECT_EQ(code_of([&] { (void)StringMap::open_any(multi); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)StringMultimap::open(single); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)Map::open(multi); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)(TypedMap<std::string, std::int64_t>::open(multi)); }),
            Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { (void)StringMultimap::open_or_create(single); }), Errc::layout_mismatch);
  auto d = DynamicMap::open(multi);
  EXPECT_TRUE(d.is_multimap());
  EXPECT_TRUE(d.holds_strings());
  EXPECT_NE(d.describe().find("multimap"), std::string::npos) << d.describe();
  EXPECT_FALSE(DynamicMap::open(single).is_multimap());
  // A multimap of fixed-size values does not exist.
  EXPECT_EQ(code_of([&] {
              DynamicMap::create("x", {}, {string_type(), type_info<std::int64_t>(), true});
            }),
            Errc::invalid_argument);
}

TEST(StringMultimap, CollidingKeysKeepTheirValuesApart) {
  CollidingHash collide(1);  // every key one hash: one record holds them all
  ScopedName n("multi-coll");
  auto m = StringMultimap::create(n, {.initial_capacity = 8});
  for (int i = 0; i < 30; ++i) m.insert("key" + std::to_string(i % 3), std::to_string(i));
  for (int k = 0; k < 3; ++k) {
    const auto v = m.find("key" + std::to_string(k));
    ASSERT_EQ(v.size(), 10u);
    for (int j = 0; j < 10; ++j) EXPECT_EQ(v[j], std::to_string(k + 3 * j));
  }
  EXPECT_EQ(m.erase("key1"), 10u);
  EXPECT_EQ(m.count("key0"), 10u);
  EXPECT_EQ(m.count("key2"), 10u);
  EXPECT_EQ(m.size(), 20u);
}

TEST(StringMultimap, AKeyWhoseValuesOutgrowOneRecordIsOutOfSpaceAndNothingIsWritten) {
  ScopedName n("multi-full");
  auto m = StringMultimap::create(n, {.initial_capacity = 8});
  const std::string big(kMaxStringEntryBytes / 3, 'x');
  m.insert("k", big);
  m.insert("k", big);
  EXPECT_EQ(code_of([&] { m.insert("k", big); }), Errc::out_of_space);
  EXPECT_EQ(m.count("k"), 2u);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(code_of([&] { m.insert("k", std::string(kMaxStringEntryBytes, 'y')); }),
            Errc::invalid_argument);
  m.insert("other", big);  // other keys are not limited by k's
  RecordStats rs;
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
}

TEST(StringMultimap, ReadOnlyAttachmentReadsValuesAndRefusesWrites) {
  ScopedName n("multi-ro");
  auto m = StringMultimap::create(n);
  for (int i = 0; i < 100; ++i) m.insert("k" + std::to_string(i % 10), std::to_string(i));
  auto r = StringMultimap::open(n, {.read_only = true});
  EXPECT_EQ(r.count("k3"), 10u);
  EXPECT_EQ(r.find("k3").front(), "3");
  EXPECT_EQ(contents(r), contents(m));
  EXPECT_EQ(code_of([&] { r.insert("k", "v"); }), Errc::permission_denied);
  EXPECT_EQ(code_of([&] { r.erase("k3"); }), Errc::permission_denied);
  EXPECT_EQ(m.count("k3"), 10u);
}

// 8 threads (past the 16 lanes of a handle with the main one, over 2 handles) add values to
// one shared key and to keys of their own, from capacity 8 (the table grows under them), then
// erase half of their own: every count exact, no value lost or doubled.
TEST(StringMultimapThreads, ValuesAddedByManyThreadsToOneKeyAndToManyAreExact) {
  ScopedName n("multi-threads");
  auto m = StringMultimap::create(n, {.initial_capacity = 8});
  auto other = StringMultimap::open(n);
  constexpr int kThreads = 8;
  const int per = static_cast<int>(scaled(300));
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      StringMultimap& h = t % 2 == 0 ? m : other;
      for (int i = 0; i < per; ++i) {
        h.insert("shared", std::to_string(t) + ":" + std::to_string(i));
        h.insert("own" + std::to_string(t) + ":" + std::to_string(i % 50), std::to_string(i));
      }
      for (int i = 0; i < per; i += 2) {
        EXPECT_TRUE(
            h.erase("own" + std::to_string(t) + ":" + std::to_string(i % 50), std::to_string(i)));
      }
    });
  }
  for (auto& t : ts) t.join();
  const auto shared = m.find("shared");
  ASSERT_EQ(shared.size(), static_cast<std::size_t>(kThreads * per));
  std::set<std::string> distinct(shared.begin(), shared.end());
  EXPECT_EQ(distinct.size(), shared.size()) << "a value doubled";
  // Each thread's values appear in its own order.
  for (int t = 0; t < kThreads; ++t) {
    int last = -1;
    for (const auto& v : shared) {
      if (v.rfind(std::to_string(t) + ":", 0) != 0) continue;
      const int i = std::stoi(v.substr(v.find(':') + 1));
      EXPECT_EQ(i, last + 1) << "thread " << t;
      last = i;
    }
  }
  std::size_t own = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int j = 0; j < 50; ++j)
      own += m.count("own" + std::to_string(t) + ":" + std::to_string(j));
  }
  EXPECT_EQ(own, static_cast<std::size_t>(kThreads * (per - (per + 1) / 2)));
  EXPECT_EQ(m.size(), shared.size() + own);
  m.compact();
  EXPECT_EQ(m.size(), shared.size() + own) << "the recount agrees";
  RecordStats rs;
  EXPECT_TRUE(m.check(&rs).ok);
  EXPECT_EQ(rs.leaked, 0u);
}

}  // namespace
}  // namespace shmap
