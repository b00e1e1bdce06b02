// Helpers for the multi-process suite: shared anonymous memory created before fork, a pipe
// gate that releases many children at once, bounded waits on children (a hang fails the test,
// it never hangs ctest), a seeded RNG that prints its seed, and a per-test watchdog.
//
// Synchronisation rule of this suite: a parent learns that a child reached a point only through
// memory it shares with it (atomics in a MAP_SHARED|MAP_ANONYMOUS region made before fork),
// a pipe, or waitpid. Sleeping is used only to pick a random moment *after* such a point, or as
// the back-off of a loop that polls one of them against a deadline.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmap/shmap.hpp"
#include "test_util.hpp"

namespace shmap::test::mp {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

/// Workloads are divided by this under sanitizers (which run them 5-10x slower).
inline constexpr std::size_t kScale = kSanitized ? 4 : 1;
/// Deadlines are multiplied by this under sanitizers.
inline constexpr int kSlow = kSanitized ? 4 : 1;

/// SHMAP_SOAK=N runs the kill, churn, stress and adversary suites N times longer (more kill
/// rounds, longer churn); CI sets it (scripts/test.sh), and a long run by hand uses more.
inline int soak() {
  static const int n = [] {
    const char* e = std::getenv("SHMAP_SOAK");
    const int v = e != nullptr ? std::atoi(e) : 1;
    return v < 1 ? 1 : v;
  }();
  return n;
}

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

/// A T in memory shared with every child forked after construction.
template <class T>
class Shared {
 public:
  template <class... Args>
  explicit Shared(Args&&... args) {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ptr_ = new (p) T(std::forward<Args>(args)...);
  }
  ~Shared() {
    ptr_->~T();
    ::munmap(ptr_, sizeof(T));
  }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T* operator->() const { return ptr_; }
  T& operator*() const { return *ptr_; }
  T* get() const { return ptr_; }

 private:
  T* ptr_;
};

/// n value-initialised Ts in memory shared with every child forked after construction.
template <class T>
class SharedArray {
 public:
  explicit SharedArray(std::size_t n) : n_(n) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ptr_ = static_cast<T*>(p);
    for (std::size_t i = 0; i < n_; ++i) new (ptr_ + i) T();
  }
  ~SharedArray() {
    for (std::size_t i = 0; i < n_; ++i) ptr_[i].~T();
    ::munmap(ptr_, bytes());
  }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;
  T& operator[](std::size_t i) const { return ptr_[i]; }
  std::size_t size() const { return n_; }

 private:
  std::size_t bytes() const { return n_ * sizeof(T) > 0 ? n_ * sizeof(T) : 1; }
  std::size_t n_;
  T* ptr_;
};

/// splitmix64: tiny, fast, and the same sequence in parent and child for one seed.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n).
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : next() % n; }
  bool chance(unsigned percent) { return below(100) < percent; }

 private:
  std::uint64_t s_;
};

/// The seed of this test: $SHMAP_TEST_SEED if set, else random. Printed and recorded so a
/// failure can be replayed.
inline std::uint64_t test_seed() {
  std::uint64_t seed = 0;
  if (const char* env = std::getenv("SHMAP_TEST_SEED"); env != nullptr && *env != '\0') {
    seed = std::strtoull(env, nullptr, 0);
  } else {
    std::random_device rd;
    seed = (std::uint64_t{rd()} << 32) ^ rd() ^ static_cast<std::uint64_t>(::getpid());
  }
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::fprintf(stderr, "[ seed     ] %s.%s: SHMAP_TEST_SEED=%" PRIu64 "\n",
               info ? info->test_suite_name() : "?", info ? info->name() : "?", seed);
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

/// How a child ended.
struct ChildResult {
  bool exited = false;  // normal exit; code is valid
  int code = -1;
  int signal = 0;          // killed by this signal
  bool timed_out = false;  // still running at the deadline (then killed and reaped)
  bool ok() const { return exited && code == 0; }
  std::string describe() const {
    if (timed_out) return "timed out (hung) and was killed";
    if (exited) return "exited with code " + std::to_string(code);
    if (signal != 0) return std::string("killed by signal ") + ::strsignal(signal);
    return "unknown status";
  }
};

inline ChildResult decode(int status) {
  ChildResult r;
  if (WIFEXITED(status)) {
    r.exited = true;
    r.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  return r;
}

/// Waits for pid to end, at most `timeout`. On timeout the child is SIGKILLed, reaped and
/// reported as timed_out: a hung child fails the test instead of hanging it.
inline ChildResult wait_for(pid_t pid, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto backoff = std::chrono::microseconds(50);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return decode(status);
    if (r < 0 && errno != EINTR) {
      ChildResult cr;
      cr.code = -errno;
      return cr;
    }
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ChildResult cr;
      cr.timed_out = true;
      return cr;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::microseconds(20000));
  }
}

/// Waits until pid is stopped by a signal (waitpid WUNTRACED), at most `timeout`. Returns
/// false (and fills *ended if it ended instead) when it did not stop in time.
inline bool wait_stopped(pid_t pid, milliseconds timeout, ChildResult* ended = nullptr) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG | WUNTRACED);
    if (r == pid) {
      if (WIFSTOPPED(status)) return true;
      if (ended != nullptr) *ended = decode(status);
      return false;
    }
    if (r < 0 && errno != EINTR) return false;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

/// Polls pred() until it holds or the timeout passes. For waiting on shared atomics.
template <class Pred>
bool wait_until(Pred&& pred, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  unsigned spins = 0;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    if (++spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  return true;
}

/// Children forked by this test; MpTest::TearDown kills the ones still running (a test that
/// fails half-way must not leave its children hammering the next test).
inline std::vector<pid_t>& forked_children() {
  static std::vector<pid_t> pids;
  return pids;
}

/// Kills and reaps every child of this test that is still running (or a zombie).
inline void reap_forked_children() {
  for (const pid_t pid : forked_children()) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == 0) {  // still ours and running (or stopped): end it
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
  }
  forked_children().clear();
}

/// Forks a child running body (see spawn()). The child dies with its parent (PDEATHSIG), so
/// a crashed or timed-out test binary leaves no orphan hammering /dev/shm.
inline pid_t fork_child(const std::function<bool()>& body) {
  const pid_t parent = ::getpid();
  const pid_t pid = spawn([&]() -> bool {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(3);  // the parent died before prctl
    forked_children().clear();              // the parent's children are not ours
    return body();
  });
  if (pid < 0) {
    ADD_FAILURE() << "fork failed: " << std::strerror(errno);
  } else {
    static std::mutex mu;  // tests may fork from several threads
    std::lock_guard<std::mutex> lock(mu);
    forked_children().push_back(pid);
  }
  return pid;
}

/// Runs body in a child and waits for it at most `timeout`.
inline ChildResult run_child(const std::function<bool()>& body, milliseconds timeout) {
  const pid_t pid = fork_child(body);
  if (pid < 0) return {};
  return wait_for(pid, timeout);
}

/// A one-shot gate made of a pipe: children block in wait() until the parent calls release()
/// (which closes the write end, so every reader sees EOF at the same moment). Every child that
/// shares the gate must call wait() (it closes the child's copy of the write end).
class Gate {
 public:
  Gate() {
    if (::pipe(fds_) != 0) throw std::runtime_error("pipe failed");
  }
  ~Gate() {
    if (fds_[0] >= 0) ::close(fds_[0]);
    if (fds_[1] >= 0) ::close(fds_[1]);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  /// Child side: blocks until released. False on an unexpected read error.
  bool wait() {
    if (fds_[1] >= 0) {
      ::close(fds_[1]);
      fds_[1] = -1;
    }
    char c;
    for (;;) {
      const ssize_t n = ::read(fds_[0], &c, 1);
      if (n == 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  }
  /// Parent side: lets every waiting child go.
  void release() {
    if (fds_[1] >= 0) {
      ::close(fds_[1]);
      fds_[1] = -1;
    }
  }

 private:
  int fds_[2] = {-1, -1};
};

/// Per-test watchdog: if a test (the parent side) hangs, the binary ends with a message naming
/// the test, instead of waiting for ctest's timeout. Children die with it (PDEATHSIG).
class Watchdog {
 public:
  explicit Watchdog(unsigned secs) {
    struct sigaction sa {};
    sa.sa_handler = &on_alarm;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGALRM, &sa, nullptr);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::snprintf(name_buf(), 256, "%s.%s", info ? info->test_suite_name() : "?",
                  info ? info->name() : "?");
    ::alarm(secs * static_cast<unsigned>(kSlow));
  }
  ~Watchdog() { ::alarm(0); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  static char* name_buf() {
    static char buf[256];
    return buf;
  }
  static void on_alarm(int) {
    const char head[] = "\n[ WATCHDOG ] test hung: ";
    (void)!::write(2, head, sizeof(head) - 1);
    (void)!::write(2, name_buf(), std::strlen(name_buf()));
    (void)!::write(2, "\n", 1);
    ::_exit(124);
  }
};

/// Fixture for the suite: a watchdog per test.
class MpTest : public ::testing::Test {
 protected:
  virtual unsigned watchdog_seconds() const { return 120; }
  void SetUp() override {
    watchdog_ = std::make_unique<Watchdog>(watchdog_seconds() * static_cast<unsigned>(soak()));
  }
  void TearDown() override {
    reap_forked_children();
    watchdog_.reset();
  }

 private:
  std::unique_ptr<Watchdog> watchdog_;
};

/// Child-side check: prints what failed (with the child's pid) and makes the body return false.
#define CHILD_CHECK(cond, ...)                                                                  \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      std::fprintf(stderr, "child %d: %s:%d: check failed: %s: ", static_cast<int>(::getpid()), \
                   __FILE__, __LINE__, #cond);                                                  \
      std::fprintf(stderr, __VA_ARGS__);                                                        \
      std::fprintf(stderr, "\n");                                                               \
      return false;                                                                             \
    }                                                                                           \
  } while (0)

/// Runs f, expecting a shmap::Error with `code`; returns its message ("" if none was thrown).
template <class F>
std::string expect_error(F&& f, Errc code, const char* what) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.code()), static_cast<int>(code))
        << what << ": got " << errc_name(e.code()) << " (" << e.what() << "), want "
        << errc_name(code);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-shmap exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << what << ": did not throw (want " << errc_name(code) << ")";
  return {};
}

inline std::string shm_path(const std::string& name) { return "/dev/shm/" + name; }

}  // namespace shmap::test::mp
