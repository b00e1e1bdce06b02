// Helpers shared by the test suites: unique segment names that are removed even when a test
// fails, and a child-process runner that reports a child's failure to the parent.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "shmap/detail/layout.hpp"
#include "shmap/shmap.hpp"

namespace shmap::test {

/// A segment name unique to this process and test; the segment is removed on scope exit.
class ScopedName {
 public:
  explicit ScopedName(const std::string& tag) {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    name_ = "shmap-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter.fetch_add(1, std::memory_order_relaxed)) + "-" + tag;
    if (info != nullptr) name_ += std::string("-") + info->name();
    if (name_.size() > 180) name_.resize(180);
    for (auto& c : name_) {
      if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
    }
    Map::remove(name_);
  }
  ~ScopedName() { Map::remove(name_); }
  ScopedName(const ScopedName&) = delete;
  ScopedName& operator=(const ScopedName&) = delete;
  const std::string& str() const { return name_; }
  operator const std::string&() const { return name_; }

 private:
  std::string name_;
};

/// Forks a child that runs `body`; the child exits 0 if body returns true, 1 if false, 2 if it
/// throws. Returns the child's pid.
inline pid_t spawn(const std::function<bool()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 2;
    try {
      code = body() ? 0 : 1;
    } catch (const std::exception& e) {
      fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
      code = 2;
    } catch (...) {
      code = 2;
    }
    ::_exit(code);
  }
  return pid;
}

/// Waits for pid; returns its exit code, or 128 + signal number if it was killed.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/// The code of the shmap::Error that f throws; Errc{} (0) if it throws none.
inline Errc code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return Errc{};
}

/// Rewrites header fields of a live segment through a raw mapping (damage, on purpose).
template <class F>
void poke_header(const std::string& name, F&& f) {
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  f(*static_cast<detail::SegmentHeader*>(p));
  ::munmap(p, 4096);
  ::close(fd);
}

}  // namespace shmap::test
