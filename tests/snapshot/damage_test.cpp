// Every kind of damaged or foreign file: load throws shmap::Error with corrupt /
// version_mismatch / not_found, says what and where, and leaves every map exactly as it was.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <random>
#include <set>

#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

class Damage : public ::testing::Test {
 protected:
  void SetUp() override {
    Map src = Map::create(src_name_);
    for (std::uint64_t k = 0; k < 10'000; ++k) src.insert_or_assign(k * 7919, k);  // 3 chunks
    good_ = dir_.path("good.shmap");
    src.dump(good_);
    bytes_ = read_file(good_);
    layout_ = layout_of(bytes_);
    ASSERT_EQ(layout_.chunks.size(), 3u);
    victim_.emplace(Map::create(victim_name_));
    for (std::uint64_t k = 0; k < 100; ++k) victim_->insert_or_assign(k, 1000 + k);
    before_ = contents(*victim_);
  }

  /// Loads `bytes` in every mode; each must fail with `code` and leave everything unchanged.
  /// Returns the message of the create-mode failure.
  std::string expect_rejected(const std::string& bytes, Errc code, const std::string& what) {
    const std::string file = dir_.path("bad.shmap");
    write_file(file, bytes);
    return expect_rejected_file(file, code, what);
  }

  std::string expect_rejected_file(const std::string& file, Errc code, const std::string& what) {
    std::string message;
    for (const auto mode :
         {LoadOptions::Mode::create, LoadOptions::Mode::replace, LoadOptions::Mode::merge}) {
      const std::string& target =
          mode == LoadOptions::Mode::create ? fresh_name_.str() : victim_name_.str();
      try {
        Map::load(file, target, load_mode(mode));
        ADD_FAILURE() << what << ": load succeeded (mode " << static_cast<int>(mode) << ")";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), code) << what << ": " << e.what();
        EXPECT_NE(std::string(e.what()).find(file), std::string::npos)
            << what << ": the message names the file: " << e.what();
        if (mode == LoadOptions::Mode::create) message = e.what();
      }
      EXPECT_TRUE(contents(*victim_) == before_) << what << ": the target changed";
      EXPECT_EQ(victim_->size(), before_.size());
      struct stat st {};
      EXPECT_NE(::stat(("/dev/shm/" + fresh_name_.str()).c_str(), &st), 0)
          << what << ": a map was left behind";
      EXPECT_TRUE(staging_segments().empty()) << what;
    }
    return message;
  }

  TempDir dir_;
  ScopedName src_name_{"src"}, victim_name_{"victim"}, fresh_name_{"fresh"};
  std::string good_, bytes_;
  Layout layout_;
  std::optional<Map> victim_;
  Content before_;
};

TEST_F(Damage, TheGoodFileLoads) {
  Map m = Map::load(good_, fresh_name_);
  EXPECT_EQ(m.size(), 10'000u);
}

TEST_F(Damage, TruncatedAtManyOffsets) {
  std::set<std::size_t> cuts;
  for (std::size_t i = 0; i < layout_.first_chunk + 40; ++i) cuts.insert(i);
  for (const std::size_t c : layout_.chunks) {
    for (std::size_t d = 0; d < 40; ++d) cuts.insert(c + d), cuts.insert(c - d);
  }
  for (std::size_t i = 0; i < bytes_.size(); i += 1009) cuts.insert(i);
  for (std::size_t d = 1; d <= 48; ++d) cuts.insert(bytes_.size() - d);
  for (const std::size_t cut : cuts) {
    if (cut == 0 || cut >= bytes_.size()) continue;
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_rejected(bytes_.substr(0, cut), Errc::corrupt, "truncated at " + std::to_string(cut));
  }
}

TEST_F(Damage, TruncatedInsideAChunkSaysWhichChunk) {
  const std::size_t cut = layout_.chunks[1] + 1000;
  const std::string msg = expect_rejected(bytes_.substr(0, cut), Errc::corrupt, "chunk 1");
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("chunk 1"), std::string::npos) << msg;
}

TEST_F(Damage, FlippedBitsInTheHeader) {
  for (std::size_t i = 0; i < layout_.first_chunk; ++i) {
    std::string b = bytes_;
    b[i] ^= static_cast<char>(1 << (i % 8));
    // The version word is the one place where a flip is reported as another version.
    const Errc code = i >= 8 && i < 12 ? Errc::version_mismatch : Errc::corrupt;
    expect_rejected(b, code, "header bit flip at " + std::to_string(i));
  }
}

TEST_F(Damage, FlippedBitsInTheBody) {
  std::mt19937_64 rng(3);
  for (int n = 0; n < 150; ++n) {
    const std::size_t i = layout_.first_chunk + rng() % (layout_.footer - layout_.first_chunk);
    std::string b = bytes_;
    b[i] ^= static_cast<char>(1 << (rng() % 8));
    expect_rejected(b, Errc::corrupt, "body bit flip at " + std::to_string(i));
  }
}

TEST_F(Damage, FlippedBitInAChunkSaysWhichChunkAndBothChecksums) {
  std::string b = bytes_;
  b[layout_.chunks[2] + 16 + 33] ^= 4;
  const std::string msg = expect_rejected(b, Errc::corrupt, "chunk 2 flip");
  EXPECT_NE(msg.find("chunk 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stored 0x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("computed 0x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte " + std::to_string(layout_.chunks[2])), std::string::npos) << msg;
}

TEST_F(Damage, FlippedBitsInTheFooter) {
  for (std::size_t i = layout_.footer; i < bytes_.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 3) {
      std::string b = bytes_;
      b[i] ^= static_cast<char>(1 << bit);
      expect_rejected(b, Errc::corrupt, "footer flip at " + std::to_string(i));
    }
  }
}

TEST_F(Damage, MissingOrReorderedChunks) {
  // Chunk 1 removed: chunk 2 arrives numbered 2 where 1 was expected.
  std::string b = bytes_.substr(0, layout_.chunks[1]) + bytes_.substr(layout_.chunks[2]);
  const std::string msg = expect_rejected(b, Errc::corrupt, "missing chunk");
  EXPECT_NE(msg.find("expected 1"), std::string::npos) << msg;
  // A chunk repeated.
  b = bytes_.substr(0, layout_.chunks[2]) +
      bytes_.substr(layout_.chunks[1], layout_.chunks[2] - layout_.chunks[1]) +
      bytes_.substr(layout_.chunks[2]);
  expect_rejected(b, Errc::corrupt, "repeated chunk");
}

TEST_F(Damage, TrailingGarbage) { expect_rejected(bytes_ + "x", Errc::corrupt, "trailing byte"); }

TEST_F(Damage, WrongMagic) {
  std::string b = bytes_;
  b.replace(0, 8, "NOTASNAP");
  const std::string msg = expect_rejected(b, Errc::corrupt, "magic");
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  expect_rejected(std::string(4096, '\0'), Errc::corrupt, "zeros");
  expect_rejected("hello world, this is a text file\n", Errc::corrupt, "text");
}

TEST_F(Damage, WrongVersion) {
  std::string b = bytes_;
  b[8] = 4;  // a version no build has written
  reseal(b);
  const std::string msg = expect_rejected(b, Errc::version_mismatch, "version 4");
  EXPECT_NE(msg.find("version 4"), std::string::npos) << msg;
  // Version 2 (a typed map's) or 3 (a string map's) over a version-1 header: its type fields
  // are missing.
  for (const char v : {2, 3}) {
    b[8] = v;
    reseal(b);
    expect_rejected(b, Errc::corrupt, "a typed version over a header without types");
  }
}

TEST_F(Damage, WrongTypes) {
  std::string b = bytes_;
  const auto at = b.find("u64", 16);
  ASSERT_LT(at, layout_.first_chunk);
  b.replace(at, 3, "u32");
  reseal(b);
  const std::string msg = expect_rejected(b, Errc::version_mismatch, "u32 keys");
  EXPECT_NE(msg.find("u32"), std::string::npos) << msg;
}

TEST_F(Damage, EmptyFileDirectoryAndMissingFile) {
  std::string msg = expect_rejected("", Errc::corrupt, "empty");
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  msg = expect_rejected_file(dir_.str(), Errc::corrupt, "directory");
  EXPECT_NE(msg.find("directory"), std::string::npos) << msg;
  expect_rejected_file(dir_.path("no-such-file"), Errc::not_found, "missing");
}

TEST_F(Damage, BadJson) {
  Map src = Map::open(src_name_);
  const std::string json_file = dir_.path("good.json");
  src.dump(json_file, {.json = true});
  const std::string j = read_file(json_file);
  for (const std::size_t cut : {std::size_t{1}, std::size_t{20}, j.size() / 2, j.size() - 3}) {
    expect_rejected(j.substr(0, cut), Errc::corrupt, "json cut at " + std::to_string(cut));
  }
  auto edit = [&](const std::string& from, const std::string& to) {
    std::string e = j;
    const auto at = e.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    e.replace(at, from.size(), to);
    return e;
  };
  expect_rejected(edit("shmap-snapshot", "other-snapshot"), Errc::corrupt, "json magic");
  expect_rejected(edit("\"format_version\": 1", "\"format_version\": 9"), Errc::version_mismatch,
                  "json version");
  expect_rejected(edit("\"key_type\": \"u64\"", "\"key_type\": \"str\""), Errc::version_mismatch,
                  "json types");
  expect_rejected(edit("\"entry_count\": 10000", "\"entry_count\": 10001"), Errc::corrupt,
                  "json count");
  expect_rejected(edit("\"value\": 5", "\"value\": -5"), Errc::corrupt, "negative value");
  expect_rejected(edit("\"value\": 5", "\"value\": 18446744073709551616"), Errc::corrupt,
                  "value over 2^64");
  expect_rejected(edit("\"value\": 5", "\"value\": \"5\""), Errc::corrupt, "value as string");
  expect_rejected("{}", Errc::corrupt, "empty object");
}

}  // namespace
}  // namespace shmap::test
