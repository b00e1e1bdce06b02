// Files written by earlier builds (tests/golden/, made by tests/golden/make_golden.cpp) load
// with exactly their recorded content.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "snapshot/snapshot_util.hpp"
#include "test_util.hpp"

namespace shmap::test {
namespace {

Content expected(const std::string& stem) {
  std::ifstream in(std::string(SHMAP_GOLDEN_DIR) + "/" + stem + ".expected");
  EXPECT_TRUE(in.good()) << stem;
  Content c;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::uint64_t k = 0, v = 0;
    ls >> k >> v;
    c[k] = v;
  }
  return c;
}

void check_golden(const std::string& file, const std::string& stem, std::size_t count) {
  const std::string path = std::string(SHMAP_GOLDEN_DIR) + "/" + file;
  const Content want = expected(stem);
  ASSERT_EQ(want.size(), count);
  ScopedName name("golden");
  Map m = Map::load(path, name);
  EXPECT_EQ(m.size(), count);
  EXPECT_TRUE(contents(m) == want) << file;
  if (file.ends_with(".shmap")) {
    const Entries raw = read_raw(path);
    EXPECT_EQ(raw.size(), count);
    EXPECT_TRUE(Content(raw.begin(), raw.end()) == want);
  }
  // And replace/merge read them too.
  ScopedName other("golden-other");
  Map o = Map::create(other);
  o.insert_or_assign(12345, 1);
  Map::load(path, other, load_mode(LoadOptions::Mode::replace));
  EXPECT_TRUE(contents(o) == want);
}

TEST(Golden, V1Empty) { check_golden("v1-empty.shmap", "v1-empty", 0); }
TEST(Golden, V1Small) { check_golden("v1-small.shmap", "v1-small", 5000); }
TEST(Golden, V1SmallJson) { check_golden("v1-small-json.json", "v1-small-json", 40); }

TEST(Golden, V1SmallLayoutIsPinned) {
  const std::string b = read_file(std::string(SHMAP_GOLDEN_DIR) + "/v1-small.shmap");
  ASSERT_GE(b.size(), 16u);
  EXPECT_EQ(b.substr(0, 8), "SHMAPSNP");
  EXPECT_EQ(b.substr(8, 4), std::string("\x01\x00\x00\x00", 4));
  const Layout l = layout_of(b);
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_EQ(l.chunks[1] - l.chunks[0], 16 + 4096 * 16 + 8u);
  EXPECT_EQ(b.size() - l.footer, 40u);
  EXPECT_EQ(b.substr(b.size() - 8), "SHMAPEND");
}

}  // namespace
}  // namespace shmap::test
