// shmap — a process-wide progress hook for snapshot dumps and loads (the CLI's progress bar,
// tests). Not a stable API.
#pragma once

#include <cstdint>

namespace shmap::detail {

/// Called as a dump or load advances. phase: "dump" (entries copied), "sync" (the file is
/// being flushed to disk and renamed into place), "read" (bytes of standard input spooled;
/// total 0: unknown), "verify" and "load" (bytes of the file: the checking pass, then the
/// filling pass), "allocate" (the new table is being made), "build" (entries filled, for JSON
/// and merges), "publish" (the new content is being made visible). "sync", "allocate" and
/// "publish" have no amount (done = total = 0).
using SnapshotProgressFn = void (*)(void* ctx, const char* phase, std::uint64_t done,
                                    std::uint64_t total);
/// Installs fn (nullptr: none). Defined in src/snapshot.cpp.
void set_snapshot_progress(SnapshotProgressFn fn, void* ctx) noexcept;

}  // namespace shmap::detail
