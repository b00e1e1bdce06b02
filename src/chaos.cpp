// shmap — chaos points (detail/chaos.hpp): compiled only into a -DSHMAP_CHAOS=ON build.
#include "shmap/detail/chaos.hpp"

#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>

namespace shmap::detail {

void chaos_point() noexcept {
  // Per thread, seeded from its pid and address: children of one fork() diverge at once.
  thread_local std::uint64_t s = 0;
  if (s == 0) {
    s = (static_cast<std::uint64_t>(::getpid()) << 32) ^ reinterpret_cast<std::uintptr_t>(&s) ^
        0x9E3779B97F4A7C15ull;
  }
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  const std::uint64_t r = s % 4096;
  if (r < 48) {
    ::sched_yield();
  } else if (r < 50) {
    const timespec ts{0, static_cast<long>((s >> 20) % 300'000)};  // up to 0.3 ms
    ::nanosleep(&ts, nullptr);
  }
}

}  // namespace shmap::detail
