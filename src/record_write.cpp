// shmap — one write that holds a value record (record_write.hpp).
#include "record_write.hpp"

namespace shmap::detail {

namespace {
/// Retires so far by this thread; every kReclaimEvery a reclaim pass runs after the write.
thread_local unsigned t_retired = 0;
constexpr unsigned kReclaimEvery = 64;
}  // namespace

void RecordWrite::commit(std::optional<std::uint64_t> replaced) {
  committed_ = true;
  block_ = 0;  // published (or, for an erase, there was none)
  if (!inline_ && replaced) {
    if (RecordHeap::before_retire_for_test != nullptr) RecordHeap::before_retire_for_test();
    if (heap_.retire(*replaced)) t_retired = kReclaimEvery;  // the stack's 64th: reclaim
    ++t_retired;
  }
}

void RecordWrite::after() {
  if (!inline_ && t_retired >= kReclaimEvery) {
    t_retired = 0;
    heap_.reclaim(false);
  }
}

}  // namespace shmap::detail
