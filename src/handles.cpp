// shmap — handle slots, epoch lanes and reclamation of retired tables: the Handles type
// (detail/handles.hpp), and the process-wide pieces under it (thread numbers, process liveness,
// membarrier). Tables are reached through the Segment and the map's table() only.
//
// Ownership. A slot's {owner word, start time} pair is claimed, freed and read as one 16-byte
// unit. The owner word is 0 when free, else pid | nonce << 32; the start time (from
// /proc/PID/stat) makes a pid that the kernel reused for another process, or a zombie, count
// as dead. A claim takes two steps: {0, *} -> {word, kStartClaiming}, then the owner's pin mode
// and pid namespace are written, then {word, kStartClaiming} -> {word, start}. A reader that
// sees the completed pair (acquire) sees both words of that owner. A claim in progress is
// judged by its pid alone; if a checker wrongly judges it dead and takes the slot over, the
// claimer's second CAS fails and it tries the next slot, having used nothing. A clearer takes a
// dead slot over (bit 63 set) before it recovers the dead owner's pending size records and
// frees it, so no new owner writes those lanes meanwhile.
//
// Pid namespaces. A pid only means something in its own namespace: an owner whose recorded
// namespace is not ours (or a /proc that does not show our own namespace) cannot be checked and
// counts as alive -- its slot is never freed and its pins are never ignored by us. (A dead
// owner in another namespace is cleared by a process of its own namespace, or holds its slot.)
//
// Lanes. Every thread of a Map has a lane of its own (Handles::lane_of): threads 0-14 in the
// Map's slot, later threads in extra slots the Map claims on demand, 16 threads each, released
// at close. A group of threads that cannot get a slot (every slot owned by a live process)
// shares the overflow lane (lane 15 of the Map's slot) with a pin count, for as long as the
// Map stays open: correct, but conservative for reclamation, and without size records.
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
// or conservative reading only delays reclamation. The overflow lane keeps the oldest epoch
// while any of its threads is pinned: conservative again. A dead owner's pins keep its tables
// until its slot is freed (after recovery); a stopped owner keeps its tables alive and they
// are never freed under it.
//
// Without membarrier (seccomp, old kernels) a process cannot make other processes' plain-store
// pins visible. It then pins with seq_cst stores itself, and trusts the scan only if every
// live owner declared fenced pins in its slot (SlotOwner::pin_mode; 0, as older builds leave
// it, counts as light): otherwise global_barrier() says no, and it frees nothing and takes no
// point-in-time hold -- a process that has membarrier frees those tables at its next reclaim.
// A new owner whose mode we read stale stores its mode with a seq_cst store (a full fence)
// before its first pin, so its loads of the chain come after our read of the mode in the
// single total order, hence after the unlink: it cannot reach what we free.
//
// Reclamation never takes the retired stack out of shared memory. One reclaimer at a time
// holds the reclaim lock (its owner word in the header; others skip, a dead holder's lock is
// broken), walks the stack in place and unlinks each table it frees: at the head by CAS (only
// pushes race there, and a push is ABA-free; nobody else removes or frees nodes), further down
// by a store to the predecessor's link (only the holder writes links of published nodes).
// Before unlinking it journals {offset, retire epoch, created epoch} in the header; whoever
// breaks a dead holder's lock finishes that one table: still on the stack -> nothing was done;
// off the stack and its header still that table (both epochs are unique per table) -> it was
// unlinked and not freed: free it; anything else -> it was freed already (and maybe reused).
// A reclaimer killed at any instruction therefore leaks nothing, and racy walkers of the stack
// (stats, check) only ever read memory inside the mapping.
#include "shmap/detail/handles.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>
#include <vector>
// fail(), cas128(), read_cell(): shared with the tables.
#include "shmap/detail/chaos.hpp"
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
    // Nothing may throw out of a destructor: without memory for the list the number is
    // simply not reused (a later thread gets a new one).
    try {
      g_free_numbers.push_back(t_thread_number);
    } catch (...) {
    }
    t_thread_number = SIZE_MAX;
  }
};

// Marks a group of threads that could not get a slot of its own (Handles::groups_).
Handles::LaneGroup g_overflow_group;

std::once_flag g_membarrier_once;
bool g_light_pins = false;

long membarrier(int cmd) { return ::syscall(__NR_membarrier, cmd, 0, 0); }

// No /proc entry: gone -- or /proc hides other users' processes (hidepid). kill(0) tells.
std::uint64_t probe_by_signal(int pid) {
  return ::kill(pid, 0) == 0 || errno == EPERM ? kStartUnknown : 0;
}

std::uint64_t start_time_from(const char* path, int pid) noexcept;

// True if /proc shows this process under the pid getpid() returns, i.e. /proc belongs to our
// pid namespace: only then do /proc/PID paths name the processes our pids name. (A process in
// a child namespace that did not mount its own /proc sees its parent namespace's.)
bool proc_is_ours() noexcept {
  static std::atomic<std::uint64_t> cached{0};  // pid << 1 | answer, per process
  const auto pid = static_cast<std::uint64_t>(::getpid());
  const std::uint64_t c = cached.load(std::memory_order_relaxed);
  if (c >> 1 == pid) return (c & 1) != 0;
  char buf[32] = {};
  const ssize_t n = ::readlink("/proc/self", buf, sizeof(buf) - 1);
  const bool ours = n <= 0 || std::strtoull(buf, nullptr, 10) == pid;  // no /proc: kill(0)
  cached.store(pid << 1 | (ours ? 1 : 0), std::memory_order_relaxed);
  return ours;
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

bool membarrier_fence() noexcept {
  // GLOBAL_EXPEDITED needs no registration of the caller: it fences every registered process.
  if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return true;
  return membarrier(MEMBARRIER_CMD_GLOBAL) == 0;  // slow (an RCU grace period)
}

std::uint64_t own_pid_ns() noexcept {
  static std::atomic<std::uint64_t> cached_pid{0}, cached_ns{0};
  const auto pid = static_cast<std::uint64_t>(::getpid());
  if (cached_pid.load(std::memory_order_acquire) != pid) {
    struct stat st {};
    cached_ns.store(::stat("/proc/self/ns/pid", &st) == 0 ? st.st_ino : 0,
                    std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
  }
  return cached_ns.load(std::memory_order_relaxed);
}

std::uint64_t process_start_time(int pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  return start_time_from(path, pid);
}

namespace {
std::uint64_t start_time_from(const char* path, int pid) noexcept {
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
    char path2[64];
    std::snprintf(path2, sizeof(path2), "/proc/%d/task", pid);
    int tasks = 0;
    if (DIR* d = ::opendir(path2)) {
      while (const dirent* e = ::readdir(d)) tasks += e->d_name[0] != '.';
      ::closedir(d);
    }
    if (tasks <= 1) return 0;
  }
  return start == 0 ? 1 : start;
}
}  // namespace

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
    // /proc/self, not /proc/PID: right even where /proc belongs to another pid namespace.
    cached_start.store(start_time_from("/proc/self/stat", static_cast<int>(pid)),
                       std::memory_order_relaxed);
    cached_pid.store(pid, std::memory_order_release);
  }
  return cached_start.load(std::memory_order_relaxed);
}

void Handles::close() {
  if (seg_.mapped() && slot_index_ != SIZE_MAX && owner_pid_ == ::getpid()) release_slot();
}

void Handles::attach(std::size_t max_handles, std::uint64_t slots_offset, bool private_slot) {
  header_ = &seg_.header();
  max_handles_ = max_handles;
  slots_ = seg_.at<HandleSlot>(slots_offset);
  if (private_slot) {
    private_slot_ = std::make_unique<HandleSlot>();
    my_slot_ = private_slot_.get();
  }
}

std::size_t Handles::claim_free_slot(std::uint64_t* word) const {
  const std::uint64_t pid = static_cast<std::uint64_t>(::getpid());
  const std::uint64_t start = own_start_time();
  const std::uint64_t ns = own_pid_ns();
  const std::uint64_t mode = light_pins_enabled() ? kPinsLight : kPinsFenced;
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (std::size_t i = 0; i < max_handles_; ++i) {
      HandleSlot& s = slot(i);
      const SlotOwnerWords seen = read_owner(s);
      if (seen.owner != 0) continue;
      const std::uint64_t nonce = (reinterpret_cast<std::uintptr_t>(this) >> 4) ^ now_ns() ^ i;
      const std::uint64_t w = pid | (((nonce & 0x7fffffffu) | 1) << 32);
      // Step 1: the slot is ours, claim in progress (judged by pid alone meanwhile).
      if (!cas128(owner_words(s), seen.owner, seen.start, w, kStartClaiming)) continue;
      // seq_cst: a full fence between this store and our first pin (see the essay: a
      // membarrier-less reclaimer that read the previous mode is ordered before our pins).
      s.owner.pin_mode.store(mode, std::memory_order_seq_cst);
      // Relaxed: published by the completing CAS below.
      s.owner.pid_ns.store(ns, std::memory_order_relaxed);
      s.owner.opened_at_ns.store(now_ns(), std::memory_order_relaxed);
      // Step 2: owner and start time change together: nobody can see this pid with the start
      // time of the slot's previous owner and judge us dead. Fails only if a checker took the
      // slot over meanwhile (it judged the claim dead): we used nothing, try the next slot.
      if (!cas128(owner_words(s), w, kStartClaiming, w, start)) continue;
      // Lanes of a previous (dead) owner may still hold pins; they were ignored while the slot
      // was dead or free, and are cleared here before this owner uses them. size_delta stays:
      // it is part of the map's size.
      for (Lane& lane : s.lanes) {
        lane.pending.store(0, std::memory_order_relaxed);
        lane.pin.store(0, std::memory_order_release);
      }
      *word = w;
      return i;
    }
    if (attempt == 0 && clear_stale_slots() == 0) break;
  }
  return SIZE_MAX;
}

void Handles::claim_slot() {
  std::uint64_t word = 0;
  const std::size_t i = claim_free_slot(&word);
  if (i == SIZE_MAX) {
    fail(Errc::handles_exhausted, seg_.name(),
         "all " + std::to_string(max_handles_) +
             " handle slots are owned by live processes; close some Map objects, or recreate "
             "the map with a larger max_handles");
  }
  slot_index_ = i;
  my_slot_ = &slot(i);
  light_ = light_pins_enabled();
  owner_word_ = word;
  owner_pid_ = ::getpid();
}

void Handles::release_slot() {
  for (auto& gp : groups_) {
    LaneGroup* g = gp.load(std::memory_order_acquire);
    if (g == nullptr) continue;
    gp.store(nullptr, std::memory_order_relaxed);
    if (g == &g_overflow_group) continue;
    const SlotOwnerWords seen = read_owner(*g->slot);
    if (seen.owner == g->owner_word) cas128(owner_words(*g->slot), seen.owner, seen.start, 0, 0);
    delete g;
  }
  HandleSlot& s = slot(slot_index_);
  const SlotOwnerWords seen = read_owner(s);
  if (seen.owner == owner_word_) cas128(owner_words(s), seen.owner, seen.start, 0, 0);
  slot_index_ = SIZE_MAX;
}

Handles::LaneGroup* Handles::lane_group(std::size_t t) const {
  // A read-only attachment claims no slot: all its extra threads share its private overflow lane.
  if (seg_.read_only()) return nullptr;
  const std::size_t gi = (t - kPrimaryLanes) / kLanes;
  if (gi >= kMaxGroups) return nullptr;
  // Acquire: the group's fields were written before it was published (release, below).
  LaneGroup* g = groups_[gi].load(std::memory_order_acquire);
  if (g == &g_overflow_group) return nullptr;
  if (g != nullptr) return g;
  std::lock_guard lock(groups_mutex_);
  g = groups_[gi].load(std::memory_order_relaxed);
  if (g == nullptr) {
    // The first thread of the group claims a slot for it. Decided once per group: a thread's
    // pin and unpin must agree on its lane, so a group on the overflow lane stays there.
    std::uint64_t word = 0;
    std::size_t index = SIZE_MAX;
    try {
      index = claim_free_slot(&word);
    } catch (const Error&) {
      index = SIZE_MAX;  // clearing stale slots failed (a damaged segment): fall back
    }
    LaneGroup* made = index != SIZE_MAX ? new (std::nothrow) LaneGroup : nullptr;
    if (made != nullptr) {
      made->slot = &slot(index);
      made->index = index;
      made->owner_word = word;
      g = made;
    } else {
      if (index != SIZE_MAX) cas128(owner_words(slot(index)), word, own_start_time(), 0, 0);
      g = &g_overflow_group;
    }
    groups_[gi].store(g, std::memory_order_release);
  }
  return g == &g_overflow_group ? nullptr : g;
}

bool Handles::owns_slot_word(std::uint64_t w) const {
  if (w == owner_word_) return true;
  for (const auto& gp : groups_) {
    const LaneGroup* g = gp.load(std::memory_order_acquire);
    if (g != nullptr && g != &g_overflow_group && g->owner_word == w) return true;
  }
  return false;
}

void Handles::pin_extra(std::size_t t) const {
  LaneGroup* g = lane_group(t);
  if (g == nullptr) return pin_shared();
  const std::size_t l = (t - kPrimaryLanes) % kLanes;
  pin_lane(g->slot->lanes[l], g->depth[l]);
}

void Handles::unpin_extra(std::size_t t) const noexcept {
  // The pin resolved the group already: no claim here.
  const std::size_t gi = (t - kPrimaryLanes) / kLanes;
  LaneGroup* g = gi < kMaxGroups ? groups_[gi].load(std::memory_order_acquire) : nullptr;
  if (g == nullptr || g == &g_overflow_group) return unpin_shared();
  const std::size_t l = (t - kPrimaryLanes) % kLanes;
  unpin_lane(g->slot->lanes[l], g->depth[l]);
}

void Handles::reclaim_deferred() const noexcept {
  t_reclaim_wanted = false;
  try {
    reclaim_impl(false);
  } catch (...) {
    t_reclaim_wanted = true;  // try again at this thread's next unpin
  }
}

bool Handles::global_barrier() const noexcept {
  if (membarrier_fence()) return true;
  // No fence from here: the scan is sound only if no live owner pins with plain stores.
  // seq_cst loads: ordered before the lane scan that follows (see the essay).
  for (std::size_t i = 0; i < max_handles_; ++i) {
    const HandleSlot& s = slot(i);
    if (s.owner.owner.load(std::memory_order_seq_cst) == 0) continue;
    if (s.owner.pin_mode.load(std::memory_order_seq_cst) == kPinsFenced) continue;
    // A dead process's stores are all visible; a live light owner's may not be.
    if (owner_alive(read_owner(s))) return false;
  }
  return true;
}

SlotOwnerWords Handles::read_owner(const HandleSlot& s) {
  // The owner word carries a per-claim nonce, so the same owner word before and after the
  // start-time load means the pair was read from one claim.
  // pid_ns is written before the claim completes (the CAS that stores the start time), so
  // with a completed start time it is this owner's.
  for (;;) {
    const std::uint64_t w = s.owner.owner.load(std::memory_order_acquire);
    const std::uint64_t st = s.owner.start_time.load(std::memory_order_acquire);
    const std::uint64_t ns = s.owner.pid_ns.load(std::memory_order_acquire);
    if (s.owner.owner.load(std::memory_order_relaxed) == w) return {w, st, ns};
  }
}

bool Handles::owner_alive(SlotOwnerWords o) {
  if (o.owner == 0) return false;
  const int pid = static_cast<int>(o.owner & 0xffffffffu);
  // A claim in progress: pin mode and namespace may not be written yet; its pid decides (a
  // wrong "dead" costs the claimer a retry, nothing else: see the essay).
  if (o.start == kStartClaiming) return process_alive(pid, 0);
  // Another pid namespace, or a /proc of another namespace: its pid means nothing to us.
  const std::uint64_t ns = own_pid_ns();
  if (o.ns != 0 && ns != 0 && o.ns != ns) return true;
  if (!proc_is_ours()) {
    return pid != ::getpid() || o.start == own_start_time() || o.start == kStartUnknown;
  }
  // Our own pid is alive, but it may be a reused pid: the start time still has to match.
  if (pid == ::getpid()) {
    return o.start == 0 || o.start == kStartUnknown || o.start == own_start_time();
  }
  return process_alive(pid, o.start);
}

bool Handles::word_owner_alive(std::uint64_t w) const {
  for (std::size_t i = 0; i < max_handles_; ++i) {
    if (slot(i).owner.owner.load(std::memory_order_acquire) == w) return slot_owner_alive(i);
  }
  return false;  // the holder's slot was freed: it closed or was cleared as dead
}

namespace {
// The size change a recorded transition makes: an insert +1, an erase or a discarded entry
// (tagged MOVED) -1, a bulk-loaded table's count (BULK) +count.
std::int64_t delta_of(std::uint64_t meta, std::uint64_t value) {
  const std::uint64_t s = state_of(meta);
  return s == kLive ? 1 : s == kBulk ? static_cast<std::int64_t>(value) : -1;
}
/// The size change of a record: the one it states, else the one its transition implies.
std::int64_t delta_of(std::uint64_t meta, std::uint64_t value, std::uint64_t pending_seq) {
  const std::int64_t stated = recorded_delta(pending_seq);
  return stated != 0 ? stated : delta_of(meta, value);
}
}  // namespace

Handles::SizeWords Handles::read_size(const Lane& lane) {
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

std::uint64_t Handles::write_record(Lane& lane, std::uint64_t off, std::uint64_t meta,
                                    std::uint64_t value, std::int64_t delta) {
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
  lane.pending_seq.store(pack_pending_seq(seq, delta), std::memory_order_release);
  lane.record_gen.store(base + 2, std::memory_order_release);
  return seq;
}

void Handles::apply_pending(Lane& lane, std::uint64_t seq, std::int64_t delta) {
  const SizeWords now = read_size(lane);
  // Applied already (by the owner or another helper)? (A record keeps 40 bits of seq.)
  if ((now.seq & kSeqMask) != (seq & kSeqMask)) return;
  // One winner: the owner after its CAS, a writer about to change the bucket, a recoverer.
  cas128(&lane.size_delta, now.size, now.seq, now.size + static_cast<std::uint64_t>(delta),
         now.seq + 1);
}

void Handles::help_pending(const Slot& b, const Cell& c) const {
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
  if (off != seg_.offset_of(&b)) return;
  // The record is for exactly the transition that produced the bucket's current content.
  if (meta != c.meta || value != c.value) return;
  apply_pending(lane, seq, delta_of(meta, value, seq));
}

void Handles::recover_lane(Lane& lane) const {
  // The owner is dead: nobody rewrites the record under us (a clearer took the slot over).
  const std::uint64_t off = lane.pending.load(std::memory_order_acquire);
  if (off == 0) return;
  // A record is shared memory: an offset that cannot be a bucket is dropped, not followed.
  if (!seg_.valid_slot_offset(off)) {
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
  seg_.ensure_mapped(off + sizeof(Slot));
  const Cell c = read_cell(*seg_.at<Slot>(off));
  // The owner is dead. If the bucket still holds what its CAS installs, the CAS landed and
  // nobody changed the bucket since (a change would have applied the record first): apply it
  // unless the owner did. Otherwise the CAS never landed, or the change was applied.
  if (c.meta == meta && c.value == value) apply_pending(lane, seq, delta_of(meta, value, seq));
  lane.pending.store(0, std::memory_order_release);
}

bool Handles::free_dead_slot(std::size_t i, SlotOwnerWords seen) const {
  HandleSlot& s = slot(i);
  // Take the slot over first (owner = this process, with bit 63 set: "recovering"), so that
  // no new owner can claim it and start writing its lanes while we recover them, and only
  // one clearer recovers. A clearer that dies here leaves a dead owner: the next one redoes
  // the (idempotent) recovery.
  const std::uint64_t my_start = own_start_time();
  const std::uint64_t marker = static_cast<std::uint64_t>(::getpid()) |
                               ((((now_ns() >> 3) & 0x7fffffffu) | 0x80000001u) << 32);
  if (!cas128(owner_words(s), seen.owner, seen.start, marker, my_start)) return false;
  // The marker is judged in our namespace from now on. Relaxed: only liveness checks read it.
  s.owner.pid_ns.store(own_pid_ns(), std::memory_order_relaxed);
  for (Lane& lane : s.lanes) recover_lane(lane);
  return cas128(owner_words(s), marker, my_start, 0, 0);
}

std::size_t Handles::clear_stale_slots() const {
  std::size_t cleared = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    const SlotOwnerWords seen = read_owner(slot(i));
    if (seen.owner == 0 || owner_alive(seen)) continue;
    if (free_dead_slot(i, seen)) ++cleared;
  }
  if (cleared != 0) reclaim();
  return cleared;
}

void Handles::pin_shared() const {
  // Overflow lane: a count of pinned threads, keeping the oldest epoch while it is non-zero.
  // Always seq_cst: the count is a read-modify-write anyway.
  Lane& lane = overflow_lane();
  std::uint64_t w = lane.pin.load(std::memory_order_relaxed);
  for (;;) {
    const std::uint64_t e = header_->global_epoch.load(std::memory_order_seq_cst);
    const std::uint64_t next = (w & kPinCountMask) == 0 ? (e << 16 | 1) : w + 1;
    if (lane.pin.compare_exchange_weak(w, next, std::memory_order_seq_cst)) return;
  }
}

void Handles::unpin_shared() const noexcept {
  Lane& lane = overflow_lane();
  const std::uint64_t before = lane.pin.fetch_sub(1, std::memory_order_release);
  if (t_reclaim_wanted && (before & kPinCountMask) == 1) reclaim_deferred();
}

void Handles::retire(std::uint64_t table_offset) const {
  SegmentHeader& h = seg_.header();
  TableHeader* t = table(table_offset);
  t->retire_epoch = h.global_epoch.fetch_add(1, std::memory_order_seq_cst);
  // Treiber push onto the retired stack (no fixed limit: a long-pinned reader holds back
  // memory, never correctness).
  // Relaxed link store: the release CAS publishes it. A push races only other pushes and the
  // reclaimer's head CAS (one of them retries); it never suffers ABA: it links to whatever the
  // head is when its CAS succeeds.
  std::uint64_t head = h.retired_head.load(std::memory_order_relaxed);
  do {
    std::atomic_ref<std::uint64_t>(t->retired_next).store(head, std::memory_order_relaxed);
  } while (!h.retired_head.compare_exchange_weak(head, table_offset, std::memory_order_acq_rel));
  // The retiring thread is pinned itself; it reclaims once it unpins.
  t_reclaim_wanted = true;
}

namespace {
std::uint64_t next_of(const TableHeader* t) {
  // Acquire: pairs with the release that published the link (push CAS, or an unlink store).
  return std::atomic_ref<const std::uint64_t>(t->retired_next).load(std::memory_order_acquire);
}
std::uint64_t field(const std::uint64_t& w) {
  // The header of a table that may be freed and reused under us: atomic, racy by design.
  return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_relaxed);
}
}  // namespace

TableHeader* Handles::table_or_null(std::uint64_t offset) const noexcept {
  try {
    return table(offset);
  } catch (...) {
    return nullptr;
  }
}

void Handles::finish_reclaim_journal() const {
  SegmentHeader& h = seg_.header();
  const std::uint64_t x = h.reclaim_table.load(std::memory_order_acquire);
  if (x == 0) return;
  const std::uint64_t re = h.reclaim_retire_epoch.load(std::memory_order_relaxed);
  const std::uint64_t ce = h.reclaim_created_epoch.load(std::memory_order_relaxed);
  // Still on the stack: the holder died before unlinking it; the walk judges it as any other.
  bool on_stack = false;
  std::size_t n = 0;
  for (std::uint64_t off = h.retired_head.load(std::memory_order_acquire);
       off != 0 && n < kMaxRetiredWalk; ++n) {
    if (off == x) {
      on_stack = true;
      break;
    }
    off = next_of(table(off));
  }
  if (!on_stack) {
    // Unlinked. Freed already (punched: zeros; or reused: other epochs), or not: then its
    // header is still exactly the journaled table's. Epochs are unique per table, and the
    // shape checks rule out bucket or bitmap words of a table that reused the range.
    const std::uint64_t file = h.file_bytes.load(std::memory_order_acquire);
    if (x % kPage == 0 && x >= h.arena_offset && x + kTableHeaderBytes <= file) {
      seg_.ensure_mapped(x + kTableHeaderBytes);
      const TableHeader* t = seg_.at<TableHeader>(x);
      const std::uint64_t cap = field(t->capacity), bits = field(t->bits);
      const std::uint64_t bytes = field(t->extent_bytes);
      if (table_shape_ok(cap, bits) && bytes >= table_bytes(cap) && bytes % kPage == 0 &&
          x + bytes <= file && field(t->retire_epoch) == re && field(t->created_epoch) == ce) {
        seg_.free_extent(x, bytes);
        h.tables_freed.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  h.reclaim_table.store(0, std::memory_order_release);
}

bool Handles::lock_reclaim(std::chrono::milliseconds wait) const {
  SegmentHeader& h = seg_.header();
  const auto give_up = std::chrono::steady_clock::now() + wait;
  for (;;) {
    std::uint64_t holder = 0;
    // acq_rel: we see the previous holder's unlinks and journal; ours are seen by the next.
    if (h.reclaim_lock.compare_exchange_strong(holder, owner_word_, std::memory_order_acq_rel)) {
      return true;
    }
    // A dead holder's lock is broken (its journal is finished by the caller); a live one frees
    // what we would have: skip, or wait a little when asked to.
    if (!word_owner_alive(holder)) {
      if (h.reclaim_lock.compare_exchange_strong(holder, owner_word_, std::memory_order_acq_rel)) {
        return true;
      }
      continue;
    }
    if (std::chrono::steady_clock::now() >= give_up) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void Handles::unlock_reclaim() const noexcept {
  std::uint64_t w = owner_word_;
  // Release: our unlinks and frees happen-before the next holder's walk.
  seg_.header().reclaim_lock.compare_exchange_strong(w, 0, std::memory_order_release);
}

std::optional<std::uint64_t> Handles::oldest_pin(std::uint64_t oldest) const {
  // Light pins are plain stores: make every one of them visible before scanning (or, without
  // membarrier here, trust nothing while any live owner uses them).
  if (!global_barrier()) return std::nullopt;
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
  return oldest;
}

void Handles::reclaim_impl(bool patient) const {
  SegmentHeader& h = seg_.header();
  if (h.retired_head.load(std::memory_order_acquire) == 0 &&
      h.reclaim_table.load(std::memory_order_acquire) == 0) {
    return;
  }
  if (owner_word_ == 0) return;  // no slot yet (open clears stale slots before claiming)
  // One reclaimer per Map (threads of one Map share its owner word), one per segment.
  std::unique_lock local(reclaim_mutex_, std::defer_lock);
  if (patient) {
    local.lock();
  } else if (!local.try_lock()) {
    return;
  }
  if (!lock_reclaim(std::chrono::milliseconds(patient ? kReclaimLockWaitMs : 0))) return;
  struct Unlock {
    const Handles& m;
    ~Unlock() { m.unlock_reclaim(); }
  } unlock{*this};
  finish_reclaim_journal();
  if (h.retired_head.load(std::memory_order_acquire) == 0) return;

  // Read the epoch before scanning: a table retired during the scan gets an epoch >= this one
  // and is kept, whatever the lanes scanned before its retirement said.
  const std::optional<std::uint64_t> pinned =
      oldest_pin(h.global_epoch.load(std::memory_order_seq_cst));
  if (!pinned) return;
  const std::uint64_t oldest = *pinned;

  // Walk the stack in place; unlink and free what no pinned lane can see (see the essay).
  // Each link is checked (table() throws corrupt on a bad one: nothing is freed that is not a
  // table; from unpin() the error is deferred, from compact() it is reported), and the walk is
  // bounded (a damaged stack may be a cycle).
  TableHeader* prev = nullptr;  // nullptr: cur is linked from retired_head
  std::uint64_t cur = h.retired_head.load(std::memory_order_acquire);
  for (std::size_t n = 0; cur != 0 && n < kMaxRetiredWalk; ++n) {
    TableHeader* t = table(cur);
    const std::uint64_t next = next_of(t);
    // Pinned at an epoch > e: pinned after the unlink, cannot see the table.
    if (t->retire_epoch >= oldest) {
      prev = t;
      cur = next;
      continue;
    }
    // Relaxed epochs: the release store of the offset publishes them.
    h.reclaim_retire_epoch.store(t->retire_epoch, std::memory_order_relaxed);
    h.reclaim_created_epoch.store(t->created_epoch, std::memory_order_relaxed);
    h.reclaim_table.store(cur, std::memory_order_release);
    if (in_reclaim_for_test != nullptr) in_reclaim_for_test(1);
    if (prev == nullptr) {
      std::uint64_t expected = cur;
      if (!h.retired_head.compare_exchange_strong(expected, next, std::memory_order_acq_rel)) {
        // Pushes went in front of cur: its predecessor is the last of them.
        prev = table(expected);
        for (std::size_t hops = 0; next_of(prev) != cur; ++hops) {
          if (hops > kMaxRetiredWalk) return;  // damaged stack: leave it (check reports it)
          prev = table(next_of(prev));
        }
      }
    }
    if (prev != nullptr) {
      // Release: a walker that follows the new link sees what it links to.
      std::atomic_ref<std::uint64_t>(prev->retired_next).store(next, std::memory_order_release);
    }
    if (in_reclaim_for_test != nullptr) in_reclaim_for_test(2);
    SHMAP_CHAOS_POINT();
    seg_.free_extent(cur, t->extent_bytes);
    h.tables_freed.fetch_add(1, std::memory_order_relaxed);
    if (in_reclaim_for_test != nullptr) in_reclaim_for_test(3);
    h.reclaim_table.store(0, std::memory_order_release);
    cur = next;
  }
}

bool Handles::with_reclaim_lock(bool patient, std::chrono::milliseconds wait, void (*fn)(void*),
                                void* ctx) const {
  if (owner_word_ == 0) return false;
  std::unique_lock local(reclaim_mutex_, std::defer_lock);
  if (patient) {
    local.lock();
  } else if (!local.try_lock()) {
    return false;
  }
  if (!lock_reclaim(wait)) return false;
  struct Unlock {
    const Handles& m;
    ~Unlock() { m.unlock_reclaim(); }
  } unlock{*this};
  finish_reclaim_journal();
  fn(ctx);
  return true;
}

std::size_t Handles::retired_count() const {
  // Racy walk (a reclaimer may pop meanwhile): bounded, and it reads only mapped memory.
  std::size_t n = 0;
  // (A table freed under the walk reads zeros: the walk ends early.)
  for (std::uint64_t off = seg_.header().retired_head.load(std::memory_order_acquire);
       off != 0 && n < kMaxRetiredWalk; ++n) {
    const TableHeader* t = table_or_null(off);
    if (t == nullptr) break;
    off = next_of(t);
  }
  return n;
}

std::size_t Handles::slots_in_use() const {
  std::size_t n = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    if (slot(i).owner.owner.load(std::memory_order_relaxed) != 0) ++n;
  }
  return n;
}

std::size_t Handles::dead_slots() const {
  std::size_t dead = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    if (slot(i).owner.owner.load(std::memory_order_acquire) != 0 && !slot_owner_alive(i)) ++dead;
  }
  return dead;
}

std::vector<ReaderInfo> Handles::readers() const {
  std::vector<ReaderInfo> out;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    const HandleSlot& s = slot(i);
    const std::uint64_t w = s.owner.owner.load(std::memory_order_acquire);
    if (w == 0) continue;
    ReaderInfo r;
    r.slot = i;
    r.pid = static_cast<int>(w & 0xffffffffu);
    r.alive = slot_owner_alive(i);
    r.self = owns_slot_word(w);
    r.opened_at_unix_ns = s.owner.opened_at_ns.load(std::memory_order_relaxed);
    r.oldest_pinned_epoch = UINT64_MAX;
    for (const Lane& lane : s.lanes) {
      const std::uint64_t p = lane.pin.load(std::memory_order_acquire);
      if ((p & kPinCountMask) == 0) continue;
      r.pinned_lanes += p & kPinCountMask;
      r.oldest_pinned_epoch = std::min(r.oldest_pinned_epoch, p >> 16);
    }
    if (r.pinned_lanes == 0) r.oldest_pinned_epoch = 0;
    out.push_back(r);
  }
  return out;
}

std::int64_t Handles::size_estimate() const {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < max_handles_; ++i) {
    for (const Lane& lane : slot(i).lanes) {
      sum += std::atomic_ref<const std::uint64_t>(lane.size_delta).load(std::memory_order_relaxed);
    }
  }
  return static_cast<std::int64_t>(sum);
}

void Handles::add_size(std::int64_t d) const {
  Lane& lane = my_lane();
  // The overflow lane has several writers and no pending records: a plain atomic add. An
  // exclusive lane can also be updated by helpers applying a record: a 16-byte CAS with seq.
  if (&lane == &overflow_lane()) {
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
