// shmap — point-in-time holds of one attached map (the WriterGate type): a holder (a dump, an
// audit, a merge) holds writers back while readers go on, and the writers wait at the gate. The
// gate is one 16-byte word pair in the segment's header, {holder's owner word, deadline};
// which thread of the holder's Map holds it is process-local. Implemented in
// src/writer_gate.cpp, whose top comment has the race essay (the gate's lease, and the
// Dekker-style pairing of a writer's pin with the holder's scan of the lanes). MapImpl composes
// one (MapImpl::writer_gate()) and keeps shorthands (hold_writers(), wait_for_gate(), ...) so
// that its callers did not change.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "shmap/detail/segment.hpp"

namespace shmap::detail {

class MapImpl;

/// The writer gate of one map, as this Map holds it or waits at it. Holds a reference back to
/// its map (its handles and tables) and to its segment (the gate words in the header).
class WriterGate {
 public:
  /// `seg` may be built after this (it is not used before the segment is attached).
  WriterGate(const MapImpl& m, const Segment& seg) : m_(m), seg_(seg) {}
  WriterGate(const WriterGate&) = delete;
  WriterGate& operator=(const WriterGate&) = delete;

  // ---- holders --------------------------------------------------------------------------------
  /// Holds writers back (they wait before writing; readers never wait) until release_writers().
  /// Returns once every write already under way has finished. A holder that dies is noticed by
  /// the waiting writers, which then proceed.
  /// `extra_bytes`: memory the holder will build under the hold (a merge's new table); the
  /// lease grows with it as with the tables.
  void hold_writers(std::uint64_t extra_bytes = 0) const;
  /// How long a hold taken now may last: kWriterHoldLeaseNs plus 1 s per 256 MiB of tables
  /// (and of extra_bytes).
  std::uint64_t writer_hold_lease_ns(std::uint64_t extra_bytes) const;
  /// A hold gives up waiting for writes in flight after this long (a stopped writer).
  static constexpr std::chrono::milliseconds kInFlightWait{1000};
  /// False if the hold was broken meanwhile (its lease ran out: the copy is not point-in-time).
  bool release_writers() const;
  bool still_holding_writers() const;

  // ---- writers --------------------------------------------------------------------------------
  /// Returns once no point-in-time hold of another writer is in force (the common case, no
  /// gate set, is one load here; the Dekker argument is at wait_for_gate_slow in
  /// writer_gate.cpp). Call pinned, after mark_writer().
  void wait_for_gate() const {
    if (seg_.header().writer_gate.load(std::memory_order_seq_cst) != 0) wait_for_gate_slow();
  }
  void wait_for_gate_slow() const;
  /// The gate is held by this Map *and* this thread (its other threads wait like any writer).
  bool gate_is_mine(std::uint64_t gate) const;

 private:
  const MapImpl& m_;
  const Segment& seg_;
  // Which thread of this Map holds the writer gate: its thread_number() + 1, 0 = none.
  mutable std::atomic<std::uint64_t> gate_thread_{0};
};

}  // namespace shmap::detail
