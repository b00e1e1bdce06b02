#include "snapshot/snapshot_util.hpp"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "test_util.hpp"

namespace shmap::test {

namespace {
std::uint64_t get64(const std::string& b, std::size_t at) {
  std::uint64_t v;
  std::memcpy(&v, b.data() + at, 8);
  return v;  // the tests run on little-endian hosts (x86-64: cmpxchg16b)
}
std::uint32_t get32(const std::string& b, std::size_t at) {
  std::uint32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}
void put64(std::string& b, std::size_t at, std::uint64_t v) { std::memcpy(b.data() + at, &v, 8); }
}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/shmap-snap-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::vector<std::string> TempDir::files() const {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    out.push_back(e.path().filename().string());
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

Content contents(const Map& m) {
  Content c;
  std::size_t dups = 0;
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    if (!c.emplace(k, v).second) ++dups;
  });
  EXPECT_EQ(dups, 0u) << "for_each visited keys twice";
  return c;
}

Layout layout_of(const std::string& b) {
  Layout l;
  if (b.size() < 16 || b.compare(0, 8, "SHMAPSNP") != 0) throw std::runtime_error("not binary");
  l.body_bytes = get32(b, 12);
  std::size_t at = 16 + l.body_bytes + 8;
  l.first_chunk = at;
  while (at + 4 <= b.size() && b.compare(at, 4, "CHNK") == 0) {
    l.chunks.push_back(at);
    at += 16 + std::size_t{get32(b, at + 4)} * 16 + 8;
  }
  l.footer = at;
  return l;
}

Entries read_raw(const std::string& path) {
  const std::string b = read_file(path);
  const Layout l = layout_of(b);
  Entries out;
  for (const std::size_t c : l.chunks) {
    const std::uint32_t n = get32(b, c + 4);
    for (std::uint32_t i = 0; i < n; ++i) {
      out.emplace_back(get64(b, c + 16 + i * 16), get64(b, c + 16 + i * 16 + 8));
    }
  }
  return out;
}

void reseal(std::string& b) {
  const Layout l = layout_of(b);
  put64(b, 16 + l.body_bytes, XXH3_64bits(b.data(), 16 + l.body_bytes));
  put64(b, l.footer + 24, XXH3_64bits(b.data(), l.footer + 24));
}

std::vector<std::string> staging_segments() {
  std::vector<std::string> out;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.rfind(".shmap-load-" + std::to_string(::getpid()) + "-", 0) == 0) out.push_back(n);
    }
    ::closedir(d);
  }
  return out;
}

void expect_damage_refused(const std::string& good, const std::string& path,
                           const std::string& made, const std::function<void()>& load) {
  auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  };
  auto exists = [&] { return ::access(("/dev/shm/" + made).c_str(), F_OK) == 0; };
  std::size_t refused = 0, tried = 0;
  for (std::size_t at = 0; at < good.size(); at += good.size() / 97 + 1) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    write(bad);
    ++tried;
    const Errc c = code_of(load);
    refused += c == Errc::corrupt || c == Errc::version_mismatch;
    EXPECT_FALSE(exists()) << "flipped byte " << at << " made a map";
    if (exists()) Map::remove(made);
  }
  EXPECT_EQ(refused, tried);
  for (const std::size_t len :
       {std::size_t{0}, std::size_t{10}, std::size_t{40}, good.size() / 2, good.size() - 1}) {
    write(good.substr(0, len));
    EXPECT_EQ(code_of(load), Errc::corrupt) << "truncated to " << len;
    EXPECT_FALSE(exists());
  }
  write(good);
}

}  // namespace shmap::test
