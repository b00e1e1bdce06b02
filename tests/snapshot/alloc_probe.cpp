#include "snapshot/alloc_probe.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace shmap::test {
namespace {
std::atomic<std::size_t> g_largest{0};
}
std::size_t largest_allocation() { return g_largest.load(std::memory_order_relaxed); }
void reset_largest_allocation() { g_largest.store(0, std::memory_order_relaxed); }
}  // namespace shmap::test

// Relaxed: a statistic read after the allocating call returned, on the same thread.
void* operator new(std::size_t n) {
  std::size_t cur = shmap::test::g_largest.load(std::memory_order_relaxed);
  while (n > cur &&
         !shmap::test::g_largest.compare_exchange_weak(cur, n, std::memory_order_relaxed)) {
  }
  if (n > shmap::test::kRefusedAllocation) throw std::bad_alloc();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
