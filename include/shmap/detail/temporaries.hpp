// shmap — what dumps and loads leave behind while they run: a dump's `PATH.tmp.PID.N` file and
// a create-mode load's staging segment `/dev/shm/.shmap-load-PID-N-HASH`. Both names carry the
// pid of their writer, so a later run can tell a leftover of a dead process from work in
// progress. For the CLI (its signal handlers) and `shmap ls`; not a stable API.
// Defined in src/snapshot.cpp.
#pragma once

#include <optional>
#include <string_view>

namespace shmap::detail {

/// Removes the temporary files and staging segments of the dumps and loads this process has
/// in progress. Async-signal-safe (atomics and unlink): for a SIGINT/SIGTERM handler that then
/// ends the process. A process killed by SIGKILL leaves them; the next dump to the same path
/// (its temporaries) or the next create-mode load (staging segments) removes those whose pid
/// is gone.
void remove_snapshot_temporaries() noexcept;

/// If `name` is a load's staging segment (".shmap-load-PID-..."), the loader's pid.
std::optional<int> staging_segment_owner(std::string_view name) noexcept;

/// False only if no process has this pid (kill(pid, 0) fails with ESRCH). A reused pid looks
/// alive: a leftover is then kept, never a live one removed.
bool process_exists(int pid) noexcept;

}  // namespace shmap::detail
