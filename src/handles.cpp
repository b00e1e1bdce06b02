// shmap — handle slots, epoch lanes and reclamation of retired tables.
//
// Ownership. A slot's {owner word, start time} pair is claimed, freed and read as one 16-byte
// unit. The owner word is 0 when free, else pid | nonce << 32; the start time (from
// /proc/PID/stat) makes a pid that the kernel reused for another process, or a zombie, count
// as dead. A clearer takes a dead slot over (bit 63 set) before it recovers the dead owner's
// pending size records and frees it, so no new owner writes those lanes meanwhile.
//
// Epochs (RCU's read side, in shared memory). Every operation pins: its lane's pin word gets
// the global epoch before it reads the current table, and 0 when it is done. A table unlinked
// from the chain is retired with epoch e (the value a fetch_add on global_epoch returned) and
// freed once every lane of a live owner is quiescent or pinned at an epoch > e.
//
// Why a lock-free scan of the lanes is safe (what can race). The reclaimer reads the global
// epoch G0 *before* scanning and frees only tables retired at e < G0, so a table retired
// during the scan is never judged by lanes read before its retirement. Between that read and
// the scan it issues membarrier(GLOBAL_EXPEDITED) (or pins are seq_cst stores where that is
// unavailable): every pin stored before the barrier is visible to the scan, and every pin
// stored after it belongs to a thread whose following loads of the chain see the unlink that
// preceded G0 -- it cannot reach the table. A pin at an epoch <= e keeps the table; a stale
// or conservative reading only delays reclamation. A lane shared by several threads keeps the
// oldest epoch while any of them is pinned: conservative again. A dead owner's pins keep its
// tables until its slot is freed (after recovery); a stopped owner keeps its tables alive and
// they are never freed under it.
#include <dirent.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {
namespace {

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// Process-wide thread numbers, reused after a thread exits (so lanes stay few).
std::mutex g_numbers_mutex;
std::vector<std::size_t> g_free_numbers;
std::size_t g_next_number = 0;

struct ThreadNumberReturn {
  ~ThreadNumberReturn() {
    std::lock_guard lock(g_numbers_mutex);
    g_free_numbers.push_back(t_thread_number);
    t_thread_number = SIZE_MAX;
  }
};

std::once_flag g_membarrier_once;
bool g_light_pins = false;

long membarrier(int cmd) { return ::syscall(__NR_membarrier, cmd, 0, 0); }

// No /proc entry: gone -- or /proc hides other users' processes (hidepid). kill(0) tells.
std::uint64_t probe_by_signal(int pid) {
  return ::kill(pid, 0) == 0 || errno == EPERM ? kStartUnknown : 0;
}

}  // namespace

std::size_t assign_thread_number() noexcept {
  thread_local ThreadNumberReturn give_back;  // returns the number when the thread exits
  std::lock_guard lock(g_numbers_mutex);
  if (!g_free_numbers.empty()) {
    t_thread_number = g_free_numbers.back();
    g_free_numbers.pop_back();
  } else {
    t_thread_number = g_next_number++;
  }
  return t_thread_number;
}

bool light_pins_enabled() noexcept {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer cannot see membarrier's asymmetric fence: with plain-store pins it would
  // report the reclaimer's frees as races with readers it in fact waited for. TSan builds
  // check the protocol with seq_cst pins (the path taken where membarrier is missing); the
  // light path runs in every other build and test.
  return false;
#endif
  std::call_once(g_membarrier_once, [] {
    const long supported = membarrier(MEMBARRIER_CMD_QUERY);
    g_light_pins = supported > 0 && (supported & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 &&
                   membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
  });
  return g_light_pins;
}

bool global_barrier() noexcept {
  if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return true;
  if (membarrier(MEMBARRIER_CMD_GLOBAL) == 0) return true;  // slow (an RCU grace period)
  // No membarrier at all: no process could register, so every pin is a seq_cst store.
  return !light_pins_enabled();
}

std::uint64_t process_start_time(int pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ESRCH ? probe_by_signal(pid) : kStartUnknown;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return errno == ESRCH ? 0 : kStartUnknown;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command name may contain spaces and ')'
  if (p == nullptr) return 0;
  ++p;
  // Fields after the name: 3 state, ..., 22 starttime.
  char state = 0;
  unsigned long long start = 0;
  int field = 2;
  const char* tok = p;
  while (*tok != '\0') {
    while (*tok == ' ') ++tok;
    if (*tok == '\0') break;
    ++field;
    if (field == 3) state = *tok;
    if (field == 22) {
      start = std::strtoull(tok, nullptr, 10);
      break;
    }
    while (*tok != ' ' && *tok != '\0') ++tok;
  }
  if (state == 'X' || state == 'x') return 0;
  if (state == 'Z') {
    // A zombie: dead and not yet reaped -- unless only its main thread exited and other
    // threads still run (then /proc/PID/task lists more than that one thread).
    std::snprintf(path, sizeof(path), "/proc/%d/task", pid);
    int tasks = 0;
    if (DIR* d = ::opendir(path)) {
      while (const dirent* e = ::readdir(d)) tasks += e->d_name[0] != '.';
      ::closedir(d);
    }
    if (tasks <= 1) return 0;
  }
  return start == 0 ? 1 : start;
}

bool process_alive(int pid, std::uint64_t start_time) noexcept {
  if (pid <= 0) return false;
  const std::uint64_t st = process_start_time(pid);
  if (st == kStartUnknown) {
    // /proc could not tell (hidepid, out of file descriptors...): kill(0) can, although it
    // cannot see zombies or pid reuse. Only a definite "no such process" means dead.
    return ::kill(pid, 0) == 0 || errno == EPERM;
  }
  if (st == 0) return false;
  return start_time == 0 || start_time == kStartUnknown || st == start_time;
}

std::uint64_t own_start_time() noexcept {
  // Cached per pid: a forked child computes its own.
  static std::atomic<std::uint64_t> cached_pid{0}, cached_start{0};
  const auto pid = static_cast<std::uint64_t>(::getpid());
  if (cached_pid.load(std::memory_order_acquire) != pid) {
    cached_start.store(process_start_time(static_cast<int>(pid)), std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
  }
  return cached_start.load(std::memory_order_relaxed);
}

void MapImpl::claim_slot() {
  const std::uint64_t pid = static_cast<std::uint64_t>(::getpid());
  const std::uint64_t start = own_start_time();
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (std::size_t i = 0; i < max_handles_; ++i) {
      HandleSlot& s = slot(i);
      const SlotOwnerWords seen = read_owner(s);
      if (seen.owner != 0) continue;
      const std::uint64_t nonce = (reinterpret_cast<std::uintptr_t>(this) >> 4) ^ now_ns();
      const std::uint64_t word = pid | (((nonce & 0xffffffffu) | 1) << 32);
      // Owner and start time change together: nobody can see this pid with the start time of
      // the slot's previous owner and judge us dead.
      if (!cas128(owner_words(s), seen.owner, seen.start, word, start)) continue;
      s.owner.opened_at_ns.store(now_ns(), std::memory_order_relaxed);
      // Lanes of a previous (dead) owner may still hold pins; they were ignored while the slot
      // was dead or free, and are cleared here before this owner uses them. size_delta stays:
      // it is part of the map's size.
      for (Lane& lane : s.lanes) {
        lane.pending.store(0, std::memory_order_relaxed);
        lane.pin.store(0, std::memory_order_release);
      }
      slot_index_ = i;
      my_slot_ = &s;
      light_ = light_pins_enabled();
      owner_word_ = word;
      owner_pid_ = static_cast<int>(pid);
      return;
    }
    if (attempt == 0 && clear_stale_slots() == 0) break;
  }
  fail(Errc::handles_exhausted, name_,
       "all " + std::to_string(max_handles_) +
           " handle slots are owned by live processes; close some Map objects, or recreate the "
           "map with a larger max_handles");
}

void MapImpl::release_slot() {
  HandleSlot& s = slot(slot_index_);
  const SlotOwnerWords seen = read_owner(s);
  if (seen.owner == owner_word_) cas128(owner_words(s), seen.owner, seen.start, 0, 0);
  slot_index_ = SIZE_MAX;
}

SlotOwnerWords MapImpl::read_owner(const HandleSlot& s) {
  // The owner word carries a per-claim nonce, so the same owner word before and after the
  // start-time load means the pair was read from one claim.
  for (;;) {
    const std::uint64_t w = s.owner.owner.load(std::memory_order_acquire);
    const std::uint64_t st = s.owner.start_time.load(std::memory_order_acquire);
    if (s.owner.owner.load(std::memory_order_relaxed) == w) return {w, st};
  }
}

bool MapImpl::owner_alive(SlotOwnerWords o) {
  if (o.owner == 0) return false;
  const int pid = static_cast<int>(o.owner & 0xffffffffu);
  // Our own pid is alive, but it may be a reused pid: the start time still has to match.
  if (pid == ::getpid()) {
    return o.start == 0 || o.start == kStartUnknown || o.start == own_start_time();
  }
  return process_alive(pid, o.start);
}

bool MapImpl::slot_owner_alive(std::size_t i) const { return owner_alive(read_owner(slot(i))); }

namespace {
// The size change a recorded transition makes: an insert +1, an erase or a discarded entry
// (tagged MOVED) -1, a bulk-loaded table's count (BULK) +count.
std::int64_t delta_of(std::uint64_t meta, std::uint64_t value) {
  const std::uint64_t s = state_of(meta);
  return s == kLive ? 1 : s == kBulk ? static_cast<std::int64_t>(value) : -1;
}
}  // namespace

MapImpl::SizeWords MapImpl::read_size(const Lane& lane) {
  // size_seq changes with every change of size_delta: equal before and after, one pair.
  for (;;) {
    const std::uint64_t s1 =
        std::atomic_ref<const std::uint64_t>(lane.size_seq).load(std::memory_order_acquire);
    const std::uint64_t n =
        std::atomic_ref<const std::uint64_t>(lane.size_delta).load(std::memory_order_acquire);
    const std::uint64_t s2 =
        std::atomic_ref<const std::uint64_t>(lane.size_seq).load(std::memory_order_relaxed);
    if (s1 == s2) return {n, s1};
  }
}

std::uint64_t MapImpl::write_record(Lane& lane, std::uint64_t off, std::uint64_t meta,
                                    std::uint64_t value) {
  const std::uint64_t seq = read_size(lane).seq;
  // Seqlock write: generation odd, fields, generation even. A reader that saw any new field
  // sees the odd or a later generation and drops what it read. The parity is computed, not
  // inherited: a previous owner of the slot killed mid-record left the generation odd, and
  // +1/+2 from there would mark every later whole record as "being written" -- helpers would
  // skip it, and a count left pending by a writer killed after its CAS would be lost.
  const std::uint64_t base =
      (lane.record_gen.load(std::memory_order_relaxed) + 1) & ~std::uint64_t{1};
  lane.record_gen.store(base + 1, std::memory_order_relaxed);
  // Release on each field (plain stores on x86): a reader whose acquire load sees a new field
  // also sees the odd generation, or a later one, on its second generation load.
  lane.pending.store(off, std::memory_order_release);
  lane.pending_meta.store(meta, std::memory_order_release);
  lane.pending_value.store(value, std::memory_order_release);
  lane.pending_seq.store(seq, std::memory_order_release);
  lane.record_gen.store(base + 2, std::memory_order_release);
  return seq;
}

void MapImpl::apply_pending(Lane& lane, std::uint64_t seq, std::int64_t delta) {
  const SizeWords now = read_size(lane);
  if (now.seq != seq) return;  // applied already (by the owner or another helper)
  // One winner: the owner after its CAS, a writer about to change the bucket, a recoverer.
  cas128(&lane.size_delta, now.size, now.seq, now.size + static_cast<std::uint64_t>(delta),
         now.seq + 1);
}

void MapImpl::help_pending(const Bucket& b, const Cell& c) const {
  const std::uint64_t tag = tag_of(c.meta);
  if (tag == 0) return;
  const std::size_t owner = (tag - 1) / kLanes;
  if (owner >= max_handles_) return;
  Lane& lane = slot(owner).lanes[(tag - 1) % kLanes];
  // Seqlock read of the record: an even generation, unchanged after the fields, means they
  // all belong to one record (the generation is never reset, so records cannot be confused
  // across owners of the slot). Clearing `pending` after a write needs no new generation.
  const std::uint64_t g1 = lane.record_gen.load(std::memory_order_acquire);
  if ((g1 & 1) != 0) return;  // being rewritten: the owner's previous write was applied
  const std::uint64_t off = lane.pending.load(std::memory_order_acquire);
  const std::uint64_t meta = lane.pending_meta.load(std::memory_order_acquire);
  const std::uint64_t value = lane.pending_value.load(std::memory_order_acquire);
  const std::uint64_t seq = lane.pending_seq.load(std::memory_order_acquire);
  if (lane.record_gen.load(std::memory_order_acquire) != g1) return;
  if (off != offset_of(&b)) return;
  // The record is for exactly the transition that produced the bucket's current content.
  if (meta != c.meta || value != c.value) return;
  apply_pending(lane, seq, delta_of(meta, value));
}

void MapImpl::recover_lane(Lane& lane) const {
  // The owner is dead: nobody rewrites the record under us (a clearer took the slot over).
  const std::uint64_t off = lane.pending.load(std::memory_order_acquire);
  if (off == 0) return;
  // A record is shared memory: an offset that cannot be a bucket is dropped, not followed.
  if (!valid_bucket_offset(off)) {
    lane.pending.store(0, std::memory_order_release);
    return;
  }
  if ((lane.record_gen.load(std::memory_order_acquire) & 1) != 0) {
    // Killed while writing a record: its CAS never ran, and its previous write was applied
    // before the record was begun. Fields may mix two records; nothing to apply.
    lane.pending.store(0, std::memory_order_release);
    return;
  }
  const std::uint64_t meta = lane.pending_meta.load(std::memory_order_acquire);
  const std::uint64_t value = lane.pending_value.load(std::memory_order_acquire);
  const std::uint64_t seq = lane.pending_seq.load(std::memory_order_acquire);
  ensure_mapped(off + sizeof(Bucket));
  const Cell c = read_cell(*at<Bucket>(off));
  // The owner is dead. If the bucket still holds what its CAS installs, the CAS landed and
  // nobody changed the bucket since (a change would have applied the record first): apply it
  // unless the owner did. Otherwise the CAS never landed, or the change was applied.
  if (c.meta == meta && c.value == value) apply_pending(lane, seq, delta_of(meta, value));
  lane.pending.store(0, std::memory_order_release);
}

bool MapImpl::free_dead_slot(std::size_t i, SlotOwnerWords seen) const {
  HandleSlot& s = slot(i);
  // Take the slot over first (owner = this process, with bit 63 set: "recovering"), so that
  // no new owner can claim it and start writing its lanes while we recover them, and only
  // one clearer recovers. A clearer that dies here leaves a dead owner: the next one redoes
  // the (idempotent) recovery.
  const std::uint64_t my_start = own_start_time();
  const std::uint64_t marker = static_cast<std::uint64_t>(::getpid()) |
                               ((((now_ns() >> 3) & 0x7fffffffu) | 0x80000001u) << 32);
  if (!cas128(owner_words(s), seen.owner, seen.start, marker, my_start)) return false;
  for (Lane& lane : s.lanes) recover_lane(lane);
  return cas128(owner_words(s), marker, my_start, 0, 0);
}

std::size_t MapImpl::clear_stale_slots() {
  std::size_t cleared = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    const SlotOwnerWords seen = read_owner(slot(i));
    if (seen.owner == 0 || owner_alive(seen)) continue;
    if (free_dead_slot(i, seen)) ++cleared;
  }
  if (cleared != 0) reclaim();
  return cleared;
}

void MapImpl::pin_shared() const {
  // Shared lane: a count of pinned threads, keeping the oldest epoch while it is non-zero.
  // Always seq_cst: the count is a read-modify-write anyway.
  Lane& lane = lane_of(kLanes - 1);
  std::uint64_t w = lane.pin.load(std::memory_order_relaxed);
  for (;;) {
    const std::uint64_t e = header().global_epoch.load(std::memory_order_seq_cst);
    const std::uint64_t next = (w & kPinCountMask) == 0 ? (e << 16 | 1) : w + 1;
    if (lane.pin.compare_exchange_weak(w, next, std::memory_order_seq_cst)) return;
  }
}

void MapImpl::unpin_shared() const {
  Lane& lane = lane_of(kLanes - 1);
  const std::uint64_t before = lane.pin.fetch_sub(1, std::memory_order_release);
  if (t_reclaim_wanted && (before & kPinCountMask) == 1) {
    t_reclaim_wanted = false;
    reclaim();
  }
}

void MapImpl::retire(std::uint64_t table_offset) const {
  SegmentHeader& h = header();
  TableHeader* t = table(table_offset);
  t->retire_epoch = h.global_epoch.fetch_add(1, std::memory_order_seq_cst);
  // Treiber push onto the retired stack (no fixed limit: a long-pinned reader holds back
  // memory, never correctness). Popping is only ever by exchange of the whole stack, so a
  // push cannot suffer ABA.
  std::uint64_t head = h.retired_head.load(std::memory_order_relaxed);
  do {
    t->retired_next = head;
  } while (!h.retired_head.compare_exchange_weak(head, table_offset, std::memory_order_acq_rel));
  // The retiring thread is pinned itself; it reclaims once it unpins.
  t_reclaim_wanted = true;
}

void MapImpl::reclaim() const {
  SegmentHeader& h = header();
  if (h.retired_head.load(std::memory_order_acquire) == 0) return;
  // Read the epoch before scanning: a table retired during the scan gets an epoch >= this one
  // and is kept, whatever the lanes scanned before its retirement said.
  std::uint64_t oldest = h.global_epoch.load(std::memory_order_seq_cst);
  // Light pins are plain stores: make every one of them visible before scanning.
  if (!global_barrier()) return;
  // Oldest epoch any live owner's lane is pinned at. A dead owner's pins protect the tables
  // of its last writes until its slot is freed, and freeing recovers those writes first.
  for (std::size_t i = 0; i < max_handles_; ++i) {
    const HandleSlot& s = slot(i);
    if (s.owner.owner.load(std::memory_order_seq_cst) == 0) continue;
    std::uint64_t slot_oldest = UINT64_MAX;
    for (const Lane& lane : s.lanes) {
      const std::uint64_t w = lane.pin.load(std::memory_order_seq_cst);
      if ((w & kPinCountMask) != 0 && (w >> 16) < slot_oldest) slot_oldest = w >> 16;
    }
    if (slot_oldest >= oldest) continue;
    const SlotOwnerWords seen = read_owner(s);
    if (owner_alive(seen)) {
      oldest = slot_oldest;
    } else if (!free_dead_slot(i, seen) && read_owner(s).owner != 0) {
      oldest = slot_oldest;  // changed hands meanwhile: be conservative
    }
  }
  // Take the whole stack; free what no pinned lane can see, push the rest back.
  std::uint64_t off = h.retired_head.exchange(0, std::memory_order_acq_rel);
  // Each link is checked (a bad one ends the walk: the rest of the stack leaks, nothing is
  // freed that is not a table), and the walk is bounded (a damaged stack may be a cycle).
  for (std::size_t n = 0; off != 0 && n < kMaxRetiredWalk; ++n) {
    TableHeader* t = table_or_null(off);
    if (t == nullptr) break;
    const std::uint64_t next = t->retired_next;
    // Pinned at an epoch > e: pinned after the unlink, cannot see the table.
    if (t->retire_epoch < oldest) {
      free_extent(off, t->extent_bytes);
      h.tables_freed.fetch_add(1, std::memory_order_relaxed);
    } else {
      std::uint64_t head = h.retired_head.load(std::memory_order_relaxed);
      do {
        t->retired_next = head;
      } while (!h.retired_head.compare_exchange_weak(head, off, std::memory_order_acq_rel));
    }
    off = next;
  }
}

std::size_t MapImpl::retired_count() const {
  // Racy walk (a reclaimer may pop meanwhile): bounded, and it reads only mapped memory.
  std::size_t n = 0;
  for (std::uint64_t off = header().retired_head.load(std::memory_order_acquire);
       off != 0 && n < kMaxRetiredWalk; ++n) {
    const TableHeader* t = table_or_null(off);
    if (t == nullptr) break;
    off = t->retired_next;
  }
  return n;
}

std::int64_t MapImpl::size_estimate() const {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    for (const Lane& lane : slot(i).lanes) {
      sum += std::atomic_ref<const std::uint64_t>(lane.size_delta).load(std::memory_order_relaxed);
    }
  }
  return static_cast<std::int64_t>(sum);
}

void MapImpl::add_size(std::int64_t d) const {
  Lane& lane = lane_of(thread_number());
  // The shared lane has several writers and no pending records: a plain atomic add. An
  // exclusive lane can also be updated by helpers applying a record: a 16-byte CAS with seq.
  if (thread_number() >= kLanes - 1) {
    std::atomic_ref<std::uint64_t>(lane.size_delta)
        .fetch_add(static_cast<std::uint64_t>(d), std::memory_order_relaxed);
    return;
  }
  for (;;) {
    const SizeWords now = read_size(lane);
    if (cas128(&lane.size_delta, now.size, now.seq, now.size + static_cast<std::uint64_t>(d),
               now.seq + 1)) {
      return;
    }
  }
}

}  // namespace shmap::detail
