// shmap — one write that holds a value record (record_write.hpp).
#include "record_write.hpp"

namespace shmap::detail {

namespace {
/// The map whose reclaim pass this thread owes: set when one of its retirements filled the
/// reclaim budget (RecordHeap::retire), cleared once a pass ran. A pass that found the reclaim
/// lock busy is tried again after this thread's next write to that map, so a budget's trigger
/// is not lost to a reclaimer that had already detached the limbo stack. (Compared, never
/// dereferenced: a map closed meanwhile costs at most one pass on a map at its address.)
thread_local const MapImpl* t_reclaim_owed = nullptr;
}  // namespace

void RecordWrite::commit(std::optional<std::uint64_t> replaced) {
  committed_ = true;
  block_ = 0;  // published (or, for an erase, there was none)
  // An inline entry (a string map's, entry_list.hpp) replaced is no record: nothing to retire.
  if (!inline_ && replaced && !InlineEntry::is_inline(*replaced)) {
    if (RecordHeap::before_retire_for_test != nullptr) RecordHeap::before_retire_for_test();
    if (heap_.retire(*replaced)) t_reclaim_owed = &heap_.map();
  }
}

void RecordWrite::after() {
  if (inline_ || t_reclaim_owed != &heap_.map()) return;
  if (heap_.reclaim(false)) t_reclaim_owed = nullptr;
}

}  // namespace shmap::detail
