// shmap — chaos points: a build with -DSHMAP_CHAOS=ON (CMake option) yields the CPU, or sleeps
// a little, at random at the points of the lock-free protocols where another thread's step
// could matter (between a claim and its fingerprint, a freeze and its copy, a link and its
// publication, an unlink and its retirement ...). Races that the normal build hits once in
// hundreds of runs then happen every few seconds. Every other build compiles them to nothing.
#pragma once

#if defined(SHMAP_CHAOS)
namespace shmap::detail {
void chaos_point() noexcept;
}  // namespace shmap::detail
#define SHMAP_CHAOS_POINT() ::shmap::detail::chaos_point()
#else
#define SHMAP_CHAOS_POINT() ((void)0)
#endif
