// DynamicMap: a typed map opened without knowing its types, read-only attachments of record
// maps (validated copies), and damaged type records in the header.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "shmap/detail/layout.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"
#include "shmap/string_map.hpp"
#include "shmap/typed_map.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

struct Block {
  std::array<std::uint64_t, 7> words;
  std::uint64_t sum;  // of the words: a torn copy would not add up
};
Block block(std::uint64_t key, std::uint64_t gen) {
  Block b{};
  b.sum = 0;
  for (std::size_t i = 0; i < b.words.size(); ++i) {
    b.words[i] = key * 1000003 + gen * 7919 + i;
    b.sum += b.words[i];
  }
  return b;
}
/// b is block(key, g) for some generation g: whole, and of this key.
bool intact(const Block& b, std::uint64_t key) {
  const std::uint64_t g = (b.words[0] - key * 1000003) / 7919;
  const Block x = block(key, g);
  return std::memcmp(&x, &b, sizeof b) == 0;
}
bool whole(const Block& b) {
  std::uint64_t s = 0;
  for (const auto w : b.words) s += w;
  return s == b.sum;
}

TEST(DynamicMap, OpensAnyTypesAndSaysWhichTheyAre) {
  ScopedName n("any");
  auto m = TypedMap<std::int32_t, Block>::create(n);
  m.insert_or_assign(-3, block(3, 1));
  DynamicMap d = DynamicMap::open(n);
  EXPECT_EQ(d.key_type(), type_info<std::int32_t>());
  EXPECT_EQ(d.value_type(), type_info<Block>());
  EXPECT_EQ(d.key_type().name, "int32");
  EXPECT_NE(d.describe().find("int32 -> "), std::string::npos) << d.describe();
  EXPECT_NE(d.describe().find("(64 bytes)"), std::string::npos) << d.describe();
  Block b{};
  const std::int32_t k = -3;
  std::uint64_t w = 0;
  std::memcpy(&w, &k, sizeof k);
  ASSERT_TRUE(d.find(w, &b));
  const Block expect = *m.find(-3);
  EXPECT_EQ(std::memcmp(&b, &expect, sizeof b), 0);
  // A uint64 map opened the same way.
  ScopedName u("u64");
  { Map::create(u).insert(1, 2); }
  DynamicMap du = DynamicMap::open(u);
  EXPECT_EQ(du.value_type().name, "uint64");
  std::uint64_t v = 0;
  ASSERT_TRUE(du.find(1, &v));
  EXPECT_EQ(v, 2u);
}

TEST(DynamicMap, AReadOnlyAttachmentCopiesWholeValuesWhileWritersReplaceThem) {
  ScopedName n("ro");
  auto m = TypedMap<std::uint64_t, Block>::create(n, {.initial_capacity = 8});
  constexpr std::uint64_t kKeys = 64;
  for (std::uint64_t k = 0; k < kKeys; ++k) m.insert_or_assign(k, block(k, 0));
  DynamicMap ro = DynamicMap::open(n, OpenOptions{.read_only = true});
  ASSERT_TRUE(ro.read_only());
  std::atomic<bool> stop{false};
  // A writer replaces every value again and again (records are retired and reused), and
  // grows and shrinks the map with keys of its own.
  std::thread writer([&] {
    for (std::uint64_t g = 1; !stop.load(std::memory_order_relaxed); ++g) {
      for (std::uint64_t k = 0; k < kKeys; ++k) m.insert_or_assign(k, block(k, g));
      for (std::uint64_t k = 1000; k < 1000 + (g % 7) * 200; ++k)
        m.insert_or_assign(k, block(k, g));
      for (std::uint64_t k = 1000; k < 2400; ++k) m.erase(k);
    }
  });
  std::size_t torn = 0, missing = 0, reads = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < until) {
    for (std::uint64_t k = 0; k < kKeys; ++k) {
      Block b{};
      if (!ro.find(k, &b)) {
        ++missing;
      } else if (!intact(b, k)) {
        ++torn;
      }
      ++reads;
    }
  }
  stop = true;
  writer.join();
  EXPECT_GT(reads, 1000u);
  EXPECT_EQ(torn, 0u) << "a read-only copy mixed two values";
  EXPECT_EQ(missing, 0u) << "a key present throughout was not found";
  // for_each on the read-only attachment: every key, whole values.
  std::size_t seen = 0;
  ro.for_each(
      [](void* c, std::uint64_t, const void* v) {
        Block b;
        std::memcpy(&b, v, sizeof b);
        if (whole(b)) ++*static_cast<std::size_t*>(c);
      },
      &seen);
  EXPECT_EQ(seen, kKeys);
  RecordStats rs;
  const CheckReport rep = ro.check(&rs);
  EXPECT_TRUE(rep.ok);
}

// check() and compact() audit the record heap under a hold on writers, and a hold does not
// stop migration: another process's compact() (its fit) or a copy that finds its target full
// links a table and moves records into it while the audit walks the chain it loaded. The hook
// does that at the worst moment: once the audit has loaded the chain, a second handle (on
// another thread, as another process would) links a larger table and moves every record into
// it. The audit must then count nothing (check: "not audited", never "leaked") and retire
// nothing (compact: a live record retired would be handed out again and overwritten).
detail::MapImpl* g_linker = nullptr;
int g_links = 0;
void link_a_table_mid_audit() {
  std::thread([] {
    detail::MapImpl& im = *g_linker;
    {
      detail::PinGuard pin(im);
      im.maybe_resize(im.top_header(true), false, /*force=*/true);
    }
    im.finish_migration();
    ++g_links;
  }).join();
}

TEST(DynamicMap, AnAuditOverlappedByATableLinkRetiresNoLiveRecord) {
  ScopedName n("audit-link");
  auto m = TypedMap<std::uint64_t, Block>::create(n, Options{.initial_capacity = 8});
  constexpr std::uint64_t kKeys = 3000;
  for (std::uint64_t k = 0; k < kKeys; ++k) ASSERT_TRUE(m.insert(k, block(k, 0)));
  DynamicMap other = DynamicMap::open(n);
  g_linker = &other.untyped().impl();
  g_links = 0;
  detail::RecordHeap::audit_walk_for_test = &link_a_table_mid_audit;
  RecordStats rs;
  const CheckReport rep = m.check(&rs);
  m.compact();
  detail::RecordHeap::audit_walk_for_test = nullptr;
  ASSERT_EQ(g_links, 2) << "the hook did not run in both audits";
  for (const std::string& p : rep.problems) ADD_FAILURE() << "check() mid-link: " << p;
  // New records now come from whatever compact() gave back: a live one retired would be
  // overwritten here.
  for (std::uint64_t k = kKeys; k < 3 * kKeys; ++k) ASSERT_TRUE(m.insert(k, block(k, 1)));
  std::size_t wrong = 0;
  for (std::uint64_t k = 0; k < 3 * kKeys; ++k) {
    const auto v = m.find(k);
    const Block want = block(k, k < kKeys ? 0 : 1);
    if (!v || !whole(*v) || std::memcmp(&*v, &want, sizeof(Block)) != 0) {
      ++wrong;
    }
  }
  EXPECT_EQ(wrong, 0u) << "values overwritten: compact() retired live records";
  const CheckReport after = m.check(&rs);
  EXPECT_TRUE(after.ok) << (after.problems.empty() ? "" : after.problems.front());
  EXPECT_EQ(rs.leaked, 0u);
  EXPECT_EQ(rs.live, 3 * kKeys);
}

TEST(DynamicMap, WritesThroughAReadOnlyAttachmentAreRefusedNotACrash) {
  // Every write of the untyped core, inline values and record values: permission_denied, the
  // map unchanged (the mapping is read-only: a write that reached it would be a SIGSEGV).
  ScopedName a("ro-inline"), b("ro-record");
  auto mi = TypedMap<std::uint64_t, std::int32_t>::create(a);
  auto mr = TypedMap<std::uint64_t, Block>::create(b);
  ASSERT_TRUE(mi.insert(1, 7));
  ASSERT_TRUE(mr.insert(1, block(1, 0)));
  for (const std::string* n : {&a.str(), &b.str()}) {
    DynamicMap ro = DynamicMap::open(*n, OpenOptions{.read_only = true});
    std::vector<unsigned char> v(ro.value_type().size);
    ASSERT_TRUE(ro.find(1, v.data()));
    EXPECT_EQ(code_of([&] { ro.insert(2, v.data()); }), Errc::permission_denied) << *n;
    EXPECT_EQ(code_of([&] { ro.insert_or_assign(1, v.data()); }), Errc::permission_denied);
    EXPECT_EQ(code_of([&] { ro.erase(1); }), Errc::permission_denied);
    EXPECT_EQ(code_of([&] { ro.compare_exchange(1, v.data(), v.data()); }),
              Errc::permission_denied);
    EXPECT_EQ(code_of([&] {
                ro.update(
                    1, [](void*, void*) { return true; }, nullptr);
              }),
              Errc::permission_denied);
    EXPECT_EQ(ro.size(), 1u);
  }
  EXPECT_EQ(mi.find(1), 7);
  EXPECT_FALSE(mr.contains(2));
}

TEST(DynamicMap, ImpossibleTypeSizesInTheHeaderAreDamageNotACrash) {
  ScopedName n("bad");
  { TypedMap<std::uint64_t, Block>::create(n); }
  poke_header(n, [](detail::SegmentHeader& h) { h.value_type.size = 1 << 20; });
  EXPECT_EQ(code_of([&] { DynamicMap::open(n); }), Errc::corrupt);
  // Opened with its real types, the recorded ones differ: layout_mismatch, naming both.
  EXPECT_EQ(code_of([&] { TypedMap<std::uint64_t, Block>::open(n); }), Errc::layout_mismatch);
  poke_header(n, [](detail::SegmentHeader& h) { h.value_type.size = 0; });
  EXPECT_EQ(code_of([&] { DynamicMap::open(n); }), Errc::corrupt);
  poke_header(n, [](detail::SegmentHeader& h) {
    h.value_type.size = sizeof(Block);
    h.kind = 7;
  });
  EXPECT_EQ(code_of([&] { DynamicMap::open(n); }), Errc::corrupt);
  poke_header(n, [](detail::SegmentHeader& h) {
    h.kind = detail::kKindMap;
    std::memset(h.value_type.name, 'x', sizeof h.value_type.name);  // no NUL
  });
  EXPECT_EQ(code_of([&] { TypedMap<std::uint64_t, Block>::open(n); }), Errc::layout_mismatch);
  DynamicMap d = DynamicMap::open(n);
  EXPECT_EQ(d.value_type().name, std::string(47, 'x')) << "the name is cut at its last byte";
}

TEST(DynamicMap, BadArgumentsAreInvalidArgument) {
  ScopedName n("args");
  const TypeInfo u64 = type_info<std::uint64_t>();
  TypeInfo huge = u64;
  huge.size = kMaxValueBytes + 1;
  EXPECT_EQ(code_of([&] { DynamicMap::create(n, {}, {u64, huge}); }), Errc::invalid_argument);
  // A key of more than 8 bytes is held by its bytes, with a value that fits in one entry.
  TypeInfo big = u64;
  big.size = 9;
  TypeInfo rest = u64;
  rest.size = static_cast<std::uint32_t>(kMaxStringEntryBytes) - 8;
  EXPECT_EQ(code_of([&] { DynamicMap::create(n, {}, {big, rest}); }), Errc::invalid_argument);
  TypeInfo wraps = u64;  // with a 1-byte value, 2^32 bytes together (not 0: no 32-bit wrap)
  wraps.size = UINT32_MAX;
  TypeInfo one = u64;
  one.size = 1;
  EXPECT_EQ(code_of([&] { DynamicMap::create(n, {}, {wraps, one}); }), Errc::invalid_argument);
  TypeInfo empty = u64;
  empty.size = 0;
  EXPECT_EQ(code_of([&] { DynamicMap::create(n, {}, {empty, u64}); }), Errc::invalid_argument);
  EXPECT_EQ(code_of([&] { DynamicMap::open(n); }), Errc::not_found);
  EXPECT_TRUE(DynamicMap::create(n, {}, {big, u64}).holds_strings());
}

// A binding records what its strings hold under another name ("utf8", "pickle"): such a map is
// created, reopened with exactly those types, read by StringMap as strings, and refused by a
// layout that names them otherwise. Sizes stay checked: a "string" with a size is refused.
TEST(DynamicMap, StringTypesMayCarryAnotherName) {
  ScopedName n("named-strings");
  const TypeInfo utf8{0, 1, TypeInfo::Kind::byte_string, "utf8"};
  const TypeInfo pickle{0, 1, TypeInfo::Kind::byte_string, "pickle"};
  {
    auto d = DynamicMap::create(n, {}, {utf8, pickle});
    EXPECT_TRUE(d.holds_strings());
    EXPECT_EQ(d.describe(), "utf8 -> pickle");
  }
  {
    auto s = StringMap::open_any(n);
    EXPECT_EQ(s.value_type(), pickle);
    EXPECT_EQ(s.value_bytes(), 0u);
    ASSERT_TRUE(s.insert("k", std::string("\x80\x04", 2)));
  }
  EXPECT_EQ(StringMap::open(n).find("k"), std::string("\x80\x04", 2));
  EXPECT_EQ(DynamicMap::open(n, {utf8, pickle}).key_type(), utf8);
  EXPECT_EQ(code_of([&] { DynamicMap::open(n, {utf8, string_type()}); }), Errc::layout_mismatch);
  EXPECT_EQ(code_of([&] { DynamicMap::open(n, StringMap::layout()); }), Errc::layout_mismatch);
  // A number value beside a named string key (what TypedMap<std::string, V> holds).
  ScopedName f("named-strings-f64");
  { auto d = DynamicMap::create(f, {}, {utf8, type_info<double>()}); }
  EXPECT_EQ(StringMap::open_any(f).value_bytes(), sizeof(double));
  EXPECT_EQ(code_of([&] { (void)TypedMap<std::string, double>::open(f); }), Errc::layout_mismatch);
  // Still refused: a string type with a size, as a key or as a value beside a number key.
  const TypeInfo sized{8, 1, TypeInfo::Kind::byte_string, "utf8"};
  EXPECT_EQ(code_of([&] {
              DynamicMap::create(n.str() + "-x", {}, {sized, pickle});
            }),
            Errc::invalid_argument);
  EXPECT_EQ(code_of([&] {
              DynamicMap::create(n.str() + "-x", {}, {type_info<int>(), sized});
            }),
            Errc::invalid_argument);
}

}  // namespace
}  // namespace shmap::test
