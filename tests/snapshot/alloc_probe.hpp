// The snapshot tests replace the global operator new (alloc_probe.cpp) to see the largest single
// allocation, and refuse any above 1 GiB with std::bad_alloc (as a small machine would), so that
// a test can prove that a damaged length is never allocated from.
#pragma once

#include <cstddef>

namespace shmap::test {

/// The largest size passed to operator new since the last reset (refused ones included).
std::size_t largest_allocation();
void reset_largest_allocation();
inline constexpr std::size_t kRefusedAllocation = std::size_t{1} << 30;

}  // namespace shmap::test
