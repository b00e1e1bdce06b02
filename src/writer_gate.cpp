// shmap — point-in-time holds: the writer gate (the WriterGate type, detail/writer_gate.hpp).
// A holder (a point-in-time dump, an audit, a merge) holds writers back; readers never wait.
//
// The gate is one 16-byte CAS unit: {writer_gate, writer_gate_deadline} = {holder's owner
// word, CLOCK_MONOTONIC ns after which the hold is void}. Set, released and broken together,
// so there is no moment at which a gate is set without a deadline: a holder stopped or killed
// at any instruction blocks writers at most until its deadline (or until it is seen dead).
// Which thread of the holder's Map holds it is process-local (gate_thread_): its other
// threads are writers like any other and wait too.
//
// Writers and a holder meet Dekker-style: a writer's pin (marked as a writer's) precedes its
// load of the gate, and the holder's gate store precedes its scan of the lanes, so either the
// writer sees the gate and waits, or the holder sees the writer's pin and waits for its write
// to end (wait_for_gate_slow, hold_writers).
#include "shmap/detail/writer_gate.hpp"

#include <chrono>
#include <string>
#include <thread>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {
namespace {

std::uint64_t monotonic_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

std::uint64_t* gate_words(SegmentHeader& h) {
  return reinterpret_cast<std::uint64_t*>(&h.writer_gate);
}
}  // namespace

bool WriterGate::gate_is_mine(std::uint64_t gate) const {
  return gate == m_.handles().owner_word() &&
         gate_thread_.load(std::memory_order_relaxed) == thread_number() + 1;
}

void WriterGate::wait_for_gate_slow() const {
  SegmentHeader& h = seg_.header();
  // Dekker-style with hold_writers(): our pin precedes this load (seq_cst store, or a plain
  // store made visible by the holder's membarrier), and the holder's gate store precedes its
  // scan of the lanes. Either we see the gate, or the holder sees our pin and waits for us.
  for (;;) {
    const std::uint64_t g = h.writer_gate.load(std::memory_order_seq_cst);
    if (g == 0 || gate_is_mine(g)) return;
    // A dead holder, or one past its lease (stopped, or just too slow), no longer holds. A
    // deadline of 0 with a gate set is what a build before the 16-byte gate left when it was
    // stopped between its two stores: void too.
    const std::uint64_t deadline = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (!m_.gate_owner_alive(g) || deadline == 0 || monotonic_ns() > deadline) {
      cas128(gate_words(h), g, deadline, 0, 0);
      continue;
    }
    m_.unpin();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    m_.pin();
    m_.mark_writer();
  }
}

std::uint64_t WriterGate::writer_hold_lease_ns(std::uint64_t extra_bytes) const {
  // Long enough to copy the tables in memory (a walk at well over 256 MiB/s here), short
  // enough that a holder stopped at any instruction delays writers only briefly.
  std::uint64_t bytes = extra_bytes;
  {
    PinGuard pin(m_);
    TableHeader* chain[kMaxChain];
    const std::size_t n = m_.load_chain(m_.top_header(false), chain);
    for (std::size_t i = 0; i < n; ++i) bytes += chain[i]->extent_bytes;
  }
  return kWriterHoldLeaseNs + bytes / (std::uint64_t{256} << 20) * 1'000'000'000;
}

void WriterGate::hold_writers(std::uint64_t extra_bytes) const {
  SegmentHeader& h = seg_.header();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const std::uint64_t lease_ns = writer_hold_lease_ns(extra_bytes);
  for (;;) {
    const std::uint64_t g = h.writer_gate.load(std::memory_order_seq_cst);
    const std::uint64_t lease = h.writer_gate_deadline.load(std::memory_order_acquire);
    if (g == 0) {
      // Thread first: a writer of this Map that sees the gate must not take it for its own.
      // Claimed by CAS: two threads of this Map taking the gate at once must not both end up
      // believing it theirs (a plain store let the loser overwrite the winner's number and
      // then find the gate "mine").
      std::uint64_t none = 0;
      const std::uint64_t me = thread_number() + 1;
      if (!gate_thread_.compare_exchange_strong(none, me, std::memory_order_acq_rel) &&
          none != me) {
        if (std::chrono::steady_clock::now() > deadline) {
          fail(Errc::timeout, m_.name(), "another thread holds writers back (point-in-time dump)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;  // another thread of this Map is taking or holding the gate
      }
      // seq_cst (lock cmpxchg16b): the gate store precedes our scan of the lanes below.
      if (cas128(gate_words(h), 0, lease, m_.handles().owner_word(), monotonic_ns() + lease_ns)) {
        break;
      }
      gate_thread_.store(0, std::memory_order_release);
      continue;
    }
    if (gate_is_mine(g)) break;
    if (!m_.gate_owner_alive(g) || lease == 0 || monotonic_ns() > lease) {
      cas128(gate_words(h), g, lease, 0, 0);
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail(Errc::timeout, m_.name(), "another process holds writers back (point-in-time dump)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Wait for every *write* pinned before the gate was set to finish (readers are never waited
  // for: they change nothing). A write takes microseconds; one still in flight after
  // kInFlightWait belongs to a stopped process, and holding the others back longer would
  // make the dump a writer stall: the hold is given up instead.
  const auto in_flight_deadline = std::chrono::steady_clock::now() + kInFlightWait;
  const std::uint64_t e = h.global_epoch.fetch_add(1, std::memory_order_seq_cst);
  if (!m_.global_barrier()) {
    release_writers();
    fail(Errc::io_error, m_.name(), "membarrier is unavailable; point-in-time dump impossible");
  }
  // Our own lane is skipped (we may be called inside an operation) -- unless it is the shared
  // overflow lane: other threads of this Map pin it too, and their writes under way must be
  // waited for like anyone's. (So a thread past the 15th must not hold writers from inside an
  // operation of its own: it would wait for itself until the deadline.)
  const Lane& my = m_.my_lane();
  const Lane* mine =
      thread_number() >= MapImpl::kPrimaryLanes && &my == &m_.overflow_lane() ? nullptr : &my;
  for (std::size_t i = 0; i < m_.max_handles(); ++i) {
    for (const Lane& lane : m_.slot(i).lanes) {
      if (&lane == mine) continue;
      for (;;) {
        const std::uint64_t w = lane.pin.load(std::memory_order_seq_cst);
        if ((w & kPinCountMask) == 0 || (w & kPinWriter) == 0 || (w >> 16) > e ||
            !m_.slot_owner_alive(i)) {
          break;
        }
        if (std::chrono::steady_clock::now() > in_flight_deadline) {
          release_writers();
          fail(Errc::timeout, m_.name(),
               "a process (pid " +
                   std::to_string(m_.slot(i).owner.owner.load(std::memory_order_relaxed) &
                                  0xffffffffu) +
                   ") stays inside a write (stopped?); point-in-time dump abandoned");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }
}

bool WriterGate::release_writers() const {
  SegmentHeader& h = seg_.header();
  const std::uint64_t lease = h.writer_gate_deadline.load(std::memory_order_acquire);
  // One CAS: gate and deadline go together (seq_cst: writers that see 0 go on at once).
  if (gate_thread_.load(std::memory_order_acquire) != thread_number() + 1) return false;
  const bool held = cas128(gate_words(h), m_.handles().owner_word(), lease, 0, 0);
  // Cleared even if the hold was broken meanwhile, so that this Map's threads can hold again.
  gate_thread_.store(0, std::memory_order_release);
  return held;
}

bool WriterGate::still_holding_writers() const {
  return gate_is_mine(seg_.header().writer_gate.load(std::memory_order_seq_cst));
}

}  // namespace shmap::detail
