// Layout arithmetic, the pinned hash, names and error codes.
#include "shmap/detail/layout.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <optional>

#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"

namespace shmap::detail {
namespace {

TEST(Layout, TableBytesCoverHeaderBucketsAndBitmap) {
  EXPECT_EQ(table_bytes(8), kPage);
  // 1024 buckets * 24 B = 24 KiB, + 1 KiB of fingerprints + 2 KiB header + bitmap words,
  // rounded to pages.
  EXPECT_EQ(table_bytes(1024), 7 * kPage);
  const std::size_t big = table_bytes(std::size_t{1} << 21);
  EXPECT_GE(big, kTableHeaderBytes + (std::size_t{1} << 21) * kBucketBytes +
                     ((std::size_t{1} << 21) / kChunk) / 8);
  EXPECT_EQ(big % kPage, 0u);
}

TEST(Layout, MetaWordPacksStateAndVersion) {
  std::uint64_t m = 0;
  EXPECT_EQ(state_of(m), kEmpty);
  m = next_meta(m, kClaimed);
  EXPECT_EQ(state_of(m), kClaimed);
  EXPECT_EQ(version_of(m), 1u);
  m = next_meta(m, kLive, 0x1234);
  EXPECT_EQ(tag_of(m), 0x1234u);
  m = next_meta(m, kLive);
  EXPECT_EQ(state_of(m), kLive);
  EXPECT_EQ(tag_of(m), 0u);      // the tag belongs to one transition only
  EXPECT_EQ(version_of(m), 3u);  // every transition bumps the version, even LIVE -> LIVE
  EXPECT_EQ(next_meta(0xffffffULL, kEmpty) >> 24, 1u);
}

TEST(Layout, SlotAndLaneSizes) {
  EXPECT_EQ(sizeof(HandleSlot), (1 + kLanes) * 64);
  EXPECT_EQ(sizeof(SegmentHeader), kPage);
  EXPECT_EQ(offsetof(SegmentHeader, current_table) % 64, 0u);
  EXPECT_EQ(offsetof(TableHeader, used) % 64, 0u);
}

TEST(Layout, MagicRevealsByteOrder) {
  const char* bytes = reinterpret_cast<const char*>(&kMagic);
  EXPECT_EQ(std::string(bytes, 5), "shmap");
  EXPECT_NE(__builtin_bswap64(kMagic), kMagic);
}

// Golden values: changing the hash changes where every key lives in existing segments.
TEST(Layout, HashIsPinned) {
  EXPECT_EQ(hash_key(0, 0), 0u);
  EXPECT_EQ(hash_key(1, 0), 0x9e3779b97f4a7c15ULL);
  EXPECT_EQ(hash_key(42, 0x9e3779b97f4a7c15ULL), 0xb596a3d730353129ULL);
  EXPECT_EQ(hash_key(~0ULL, 7), 0x90734b8d7ae66348ULL);
}

TEST(Layout, SignatureIsStableWithinABuild) {
  EXPECT_EQ(layout_signature(), layout_signature());
  EXPECT_NE(layout_signature(), 0u);
}

// Map::find returns std::optional built by bit_cast from {value, engaged} (see map.cpp).
TEST(Layout, OptionalReturnLayout) {
  struct Words {
    std::uint64_t value, engaged;
  };
  const auto yes = std::bit_cast<std::optional<std::uint64_t>>(Words{42, 1});
  const auto no = std::bit_cast<std::optional<std::uint64_t>>(Words{0, 0});
  ASSERT_TRUE(yes.has_value());
  EXPECT_EQ(*yes, 42u);
  EXPECT_FALSE(no.has_value());
}

TEST(Names, ValidAndInvalid) {
  EXPECT_NO_THROW(validate_name("a"));
  EXPECT_NO_THROW(validate_name("Prices-2026.v1_x"));
  EXPECT_NO_THROW(validate_name(std::string(200, 'n')));
  for (const std::string bad : {"", ".", "..", "a/b", "/a", "x y", "é", "a\n"}) {
    try {
      validate_name(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("[A-Za-z0-9._-]"), std::string::npos);
    }
  }
  EXPECT_THROW(validate_name(std::string(201, 'n')), Error);
}

TEST(Errors, CodesHaveNames) {
  EXPECT_EQ(errc_name(Errc::not_found), "not_found");
  EXPECT_EQ(errc_name(Errc::handles_exhausted), "handles_exhausted");
  EXPECT_EQ(errc_name(Errc::out_of_space), "out_of_space");
  const Error e(Errc::corrupt, "x");
  EXPECT_EQ(e.code(), Errc::corrupt);
  EXPECT_STREQ(e.what(), "x");
}

}  // namespace
}  // namespace shmap::detail
