// shmap — a process-wide progress hook for snapshot dumps and loads (the CLI's progress bar,
// tests). Not a stable API.
#pragma once

#include <cstdint>

namespace shmap::detail {

/// Called as a dump or load advances. phase: "dump" (entries), "verify" and "load" (bytes of
/// the file), "build" (entries).
using SnapshotProgressFn = void (*)(void* ctx, const char* phase, std::uint64_t done,
                                    std::uint64_t total);
/// Installs fn (nullptr: none). Defined in src/snapshot.cpp.
void set_snapshot_progress(SnapshotProgressFn fn, void* ctx) noexcept;

}  // namespace shmap::detail
