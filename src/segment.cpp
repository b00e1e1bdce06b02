// shmap — the segment: the Segment type (segment.hpp: the mapping of the shared-memory object
// in this process, and the arena that hands out extents), and MapImpl::create / open, which
// make or validate the object and its header before a Segment maps it.
//
// Mapping: each attached Map reserves Options::max_bytes of address space (PROT_NONE, no
// memory) and maps the object over the start of it. When the segment grows, the new part is
// mapped with MAP_FIXED right after the old one, so the base never moves: an offset taken at
// any time stays valid for the life of the Map and no view ever has to be swapped out.
//
// Arena: extents are page-aligned. allocate() reuses an extent of exactly the same size from
// the free list (a CAS on its entry claims it), else bumps arena_top by CAS after making sure
// the object covers the range (posix_fallocate reserves the pages, so a full /dev/shm is an
// ENOSPC error here and never a SIGBUS later). Two allocators racing for the same range both
// fallocate it (harmless), one CAS wins and the other retries above it. free_extent() punches
// a hole (the pages go back to the system at once) and files the range on the free list.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "shmap/detail/map_impl.hpp"

namespace shmap::detail {
namespace {

constexpr std::uint32_t kReady = 1;
std::string shm_path(const std::string& name) { return "/" + name; }

// Temporary names of segments being built: ".shmap-new-<name>-<pid>-<nonce>". A creator killed
// mid-create leaves one behind; the next create of that name removes it once its pid is gone.
constexpr const char* kTempPrefix = ".shmap-new-";
constexpr const char* kShmDir = "/dev/shm";

std::uint64_t pack_extent(std::uint64_t offset, std::uint64_t bytes) {
  return (offset / kPage) << 24 | (bytes / kPage);
}
std::uint64_t extent_offset(std::uint64_t packed) { return (packed >> 24) * kPage; }
std::uint64_t extent_bytes(std::uint64_t packed) { return (packed & 0xffffff) * kPage; }

std::uint64_t random_u64() {
  std::uint64_t r = 0;
  if (::getrandom(&r, sizeof(r), 0) != sizeof(r)) {
    r = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  return r;
}

void check_options(const std::string& name, const Options& o) {
  if (o.initial_capacity == 0 || o.initial_capacity > (std::size_t{1} << 36)) {
    fail(Errc::invalid_argument, name, "initial_capacity must be between 1 and 2^36");
  }
  if (o.max_handles == 0 || o.max_handles > kMaxHandles) {
    fail(Errc::invalid_argument, name, "max_handles must be between 1 and 4095");
  }
  if (o.mode > 0777) fail(Errc::invalid_argument, name, "mode must be permission bits (<= 0777)");
  if (o.max_bytes < (std::size_t{1} << 20) || o.max_bytes > (std::size_t{1} << 46)) {
    fail(Errc::invalid_argument, name, "max_bytes must be between 1 MiB and 64 TiB");
  }
}

// False if the file system of fd has fewer than `bytes` free (so a reservation of that many
// cannot succeed); true if it has them or cannot say. Checked before posix_fallocate: when
// tmpfs cannot complete a fallocate it undoes the part it did, and on Linux 6.18 that undo
// spun in the kernel (shmem_undo_range) for minutes when the request nearly fit
// (SpaceTest.ReusedExtentsAreReservedAgainOnAFullDevShm hung; a reservation that cannot fit
// now fails at once). Racy by nature -- another process may take the space meanwhile, and
// then fallocate decides as before.
bool may_fit(int fd, std::uint64_t bytes) {
  struct statvfs st {};
  if (::fstatvfs(fd, &st) != 0 || st.f_frsize == 0) return true;
  return static_cast<std::uint64_t>(st.f_bavail) >= (bytes + st.f_frsize - 1) / st.f_frsize;
}

}  // namespace

// Huge pages are 2 MiB on x86-64. The reservation starts on such a boundary, so that where
// /dev/shm hands out huge pages (mounted with huge=within_size or huge=always) the kernel can
// map each 2 MiB of the object with one page-table entry (offset and address both aligned):
// far fewer TLB misses on a large table (docs/BENCHMARKS.md, run15). Kernels before 6.7 do not
// align large anonymous mappings by themselves.
constexpr std::uint64_t kHugePageBytes = std::uint64_t{2} << 20;

Segment::~Segment() {
  if (base_ != nullptr) ::munmap(base_, reserved_);
  if (fd_ >= 0) ::close(fd_);
}

int Segment::protection() const { return read_only_ ? PROT_READ : PROT_READ | PROT_WRITE; }

void Segment::reserve(std::uint64_t max_bytes) {
  max_bytes = max_bytes / kPage * kPage;  // every mapping ends on a page inside the reservation
  // Reserve 2 MiB more than needed and give back what lies before the first 2 MiB boundary
  // and after the reservation proper.
  const std::uint64_t padded = max_bytes + kHugePageBytes;
  void* p = ::mmap(nullptr, padded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    fail_errno(Errc::out_of_space, name_,
               "cannot reserve " + std::to_string(max_bytes >> 20) + " MiB of address space",
               errno);
  }
  char* const start = static_cast<char*>(p);
  const auto addr = reinterpret_cast<std::uintptr_t>(start);
  const std::uint64_t head = (kHugePageBytes - addr % kHugePageBytes) % kHugePageBytes;
  if (head != 0) ::munmap(start, head);
  ::munmap(start + head + max_bytes, padded - head - max_bytes);  // at least one page
  base_ = start + head;
  reserved_ = max_bytes;
}

void Segment::map_initial(std::uint64_t bytes) {
  // Never past the reservation: MAP_FIXED there would replace whatever this process has mapped
  // behind it (its own libraries), and an object can be larger than max_bytes says.
  bytes = std::min(bytes, reserved_);
  map_range(0, bytes, "cannot map the segment");
  mapped_.store(bytes, std::memory_order_release);
}

void Segment::map_range(std::uint64_t offset, std::uint64_t bytes, const char* what) const {
  if (::mmap(base_ + offset, bytes, protection(), MAP_SHARED | MAP_FIXED, fd_,
             static_cast<off_t>(offset)) == MAP_FAILED) {
    fail_errno(Errc::io_error, name_, what, errno);
  }
}

void Segment::extend_mapping(std::uint64_t end) const {
  std::lock_guard lock(map_mutex_);
  const std::uint64_t cur = mapped_.load(std::memory_order_relaxed);
  if (end <= cur) return;
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail_errno(Errc::io_error, name_, "cannot stat the segment", errno);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (end > reserved_ || end > size) {
    fail(Errc::corrupt, name_,
         "segment offset " + std::to_string(end) + " lies beyond the object (" +
             std::to_string(size) + " bytes) or its max_bytes (" + std::to_string(reserved_) +
             "); run 'shmap check " + name_ + "'");
  }
  // Map as far as the segment is known to reach (file_bytes only grows, and only after the
  // object did), so a growing segment is mapped in few steps -- but never past the object
  // or the reservation, whatever a damaged file_bytes says.
  std::uint64_t target = header().file_bytes.load(std::memory_order_acquire);
  target = std::clamp(target, end, std::min(size, reserved_));
  target = std::min((target + kPage - 1) / kPage * kPage, reserved_);
  map_range(cur, target - cur, "cannot map the grown segment");
  mapped_.store(target, std::memory_order_release);
}

bool Segment::valid_slot_offset(std::uint64_t offset) const noexcept {
  if (offset < arena_offset_ + kTableHeaderBytes || offset % sizeof(Slot) != 0 ||
      offset > reserved_ - sizeof(Slot)) {
    return false;
  }
  try {
    ensure_mapped(offset + sizeof(Slot));
  } catch (...) {
    return false;
  }
  return true;
}

std::uint64_t Segment::allocate(std::uint64_t bytes, std::uint64_t* got) const {
  SegmentHeader& h = header();
  // First fit among free extents of bytes .. 2 * bytes (the whole extent is taken: its size
  // is recorded by the caller, and the pages it does not touch cost nothing after the punch).
  for (auto& entry : h.free_list) {
    std::uint64_t e = entry.load(std::memory_order_acquire);
    if (e == 0 || extent_bytes(e) < bytes || extent_bytes(e) > 2 * bytes ||
        !entry.compare_exchange_strong(e, 0, std::memory_order_acq_rel)) {
      continue;
    }
    const std::uint64_t off = extent_offset(e);
    const std::uint64_t len = extent_bytes(e);
    // The entry is shared memory: an extent outside the arena (say, the header page) is
    // dropped, never handed out as a table.
    if (off < arena_offset_ || len > reserved_ - off ||
        off + len > h.arena_top.load(std::memory_order_acquire) ||
        off + len > h.file_bytes.load(std::memory_order_acquire)) {
      continue;
    }
    // The extent was hole-punched when freed: reserve its pages again, so a full /dev/shm is
    // out_of_space here and never a SIGBUS on the first store into the new table.
    const int rc = may_fit(fd_, len)
                       ? ::posix_fallocate(fd_, static_cast<off_t>(off), static_cast<off_t>(len))
                       : ENOSPC;
    if (rc != 0) {
      for (auto& back : h.free_list) {  // give it back for when space returns
        std::uint64_t zero = 0;
        if (back.compare_exchange_strong(zero, e, std::memory_order_acq_rel)) break;
      }
      if (rc == ENOSPC) {
        fail(Errc::out_of_space, name_,
             "/dev/shm is full (needed " + std::to_string(len >> 10) +
                 " KiB); free space there or erase entries");
      }
      fail_errno(Errc::io_error, name_, "cannot reserve a reused extent", rc);
    }
    ensure_mapped(off + len);
    *got = len;
    return off;
  }
  *got = bytes;
  for (;;) {
    std::uint64_t top = h.arena_top.load(std::memory_order_acquire);
    if (top < arena_offset_ || top % kPage != 0 || top > reserved_) {
      fail(Errc::corrupt, name_,
           "the arena top (" + std::to_string(top) +
               ") lies outside the arena; the segment is damaged: run 'shmap check " + name_ + "'");
    }
    if (bytes > reserved_ - top) {
      fail(Errc::out_of_space, name_,
           "the segment would exceed its max_bytes (" + std::to_string(reserved_ >> 20) +
               " MiB); erase entries or recreate the map with a larger max_bytes");
    }
    const std::uint64_t end = top + bytes;
    const int rc = may_fit(fd_, bytes)
                       ? ::posix_fallocate(fd_, static_cast<off_t>(top), static_cast<off_t>(bytes))
                       : ENOSPC;
    if (rc != 0) {
      if (rc == ENOSPC) {
        fail(Errc::out_of_space, name_,
             "/dev/shm is full (needed " + std::to_string(bytes >> 10) +
                 " KiB more); free space there or erase entries");
      }
      fail_errno(Errc::io_error, name_, "cannot grow the segment", rc);
    }
    // Record the new size before publishing the range, so ensure_mapped() can map it.
    std::uint64_t fb = h.file_bytes.load(std::memory_order_acquire);
    while (fb < end && !h.file_bytes.compare_exchange_weak(fb, end, std::memory_order_acq_rel)) {
    }
    if (h.arena_top.compare_exchange_strong(top, end, std::memory_order_acq_rel)) {
      ensure_mapped(end);
      return top;
    }
  }
}

void Segment::free_extent(std::uint64_t offset, std::uint64_t bytes) const {
  SegmentHeader& h = header();
  // Never punch outside the arena, whatever a damaged table header said its extent was.
  if (offset < arena_offset_ || offset % kPage != 0 || bytes == 0 || bytes % kPage != 0 ||
      bytes > reserved_ - offset) {
    return;
  }
  // The pages go back to the system now; the range reads as zeros when reused.
  if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(bytes)) != 0) {
    // Not zeroed: never hand it out again (a new table must start all EMPTY).
    h.leaked_bytes.fetch_add(bytes, std::memory_order_relaxed);
    return;
  }
  h.bytes_freed.fetch_add(bytes, std::memory_order_relaxed);
  // The last extent of the arena: give its address range back too.
  std::uint64_t top = offset + bytes;
  if (h.arena_top.compare_exchange_strong(top, offset, std::memory_order_acq_rel)) return;
  const std::uint64_t packed = pack_extent(offset, bytes);
  for (auto& entry : h.free_list) {
    std::uint64_t e = 0;
    if (entry.load(std::memory_order_relaxed) == 0 &&
        entry.compare_exchange_strong(e, packed, std::memory_order_acq_rel)) {
      return;
    }
  }
  // Free list full: the pages are returned already; only the address range is lost.
  h.leaked_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

void Segment::release_pages(std::uint64_t offset, std::uint64_t bytes) const noexcept {
  if (offset < arena_offset_ || offset % kPage != 0 || bytes == 0 || bytes % kPage != 0 ||
      bytes > reserved_ - offset) {
    return;
  }
  // A failure keeps the pages: harmless (reserve_pages finds them there).
  (void)::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(bytes));
}

void Segment::reserve_pages(std::uint64_t offset, std::uint64_t bytes) const {
  const int rc = may_fit(fd_, bytes)
                     ? ::posix_fallocate(fd_, static_cast<off_t>(offset), static_cast<off_t>(bytes))
                     : ENOSPC;
  if (rc == ENOSPC) {
    fail(Errc::out_of_space, name_,
         "/dev/shm is full (needed " + std::to_string(bytes >> 10) +
             " KiB); free space there or erase entries");
  }
  if (rc != 0) fail_errno(Errc::io_error, name_, "cannot reserve the pages of a record", rc);
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> Segment::free_extents() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (const auto& entry : header().free_list) {
    const std::uint64_t e = entry.load(std::memory_order_acquire);
    if (e != 0) out.emplace_back(extent_offset(e), extent_bytes(e));
  }
  return out;
}

std::uint64_t Segment::allocated_bytes() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

MapImpl::MapImpl(std::string name, int fd, bool read_only)
    // The handles reach the tables they retire and free through table() only.
    : handles_(seg_, {this,
                      [](const void* m, std::uint64_t offset) {
                        return static_cast<const MapImpl*>(m)->table(offset);
                      }}),
      seg_(std::move(name), fd, read_only) {}

MapImpl::~MapImpl() { handles_.close(); }

namespace {

/// Removes ".shmap-new-<name>-<pid>-<nonce>" objects whose creator is gone (killed mid-create).
void remove_orphans(const std::string& name) {
  DIR* d = ::opendir(kShmDir);
  if (d == nullptr) return;
  const std::string prefix = kTempPrefix + name + "-";
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.compare(0, prefix.size(), prefix) != 0) continue;
    // The rest must be exactly "<pid>-<hex nonce>" (a map named name-5 has its own temps).
    const std::string rest = n.substr(prefix.size());
    const auto dash = rest.find('-');
    if (dash == std::string::npos || dash == 0 || rest.find('-', dash + 1) != std::string::npos ||
        rest.find_first_not_of("0123456789") != dash ||
        rest.find_first_not_of("0123456789abcdef", dash + 1) != std::string::npos) {
      continue;
    }
    const int pid = std::atoi(rest.substr(0, dash).c_str());
    if (pid > 0 && !process_alive(pid, 0)) ::unlinkat(dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

}  // namespace

std::unique_ptr<MapImpl> MapImpl::create(const std::string& name, const Options& options,
                                         bool exclusive_only, bool* existed,
                                         const SegmentTypes& types) {
  validate_name(name);
  check_options(name, options);
  const std::string path = std::string(kShmDir) + "/" + name;
  auto exists = [&] {
    if (exclusive_only) {
      fail(Errc::already_exists, name, "a map of this name exists; open it or remove it first");
    }
    *existed = true;
  };
  // Cheap early answer for the common case; link() below is what decides.
  if (struct stat st{}; ::lstat(path.c_str(), &st) == 0) {
    exists();
    return nullptr;
  }
  remove_orphans(name);
  // The segment is built under a temporary name and published complete with link(): nobody
  // ever sees a half-made segment under the map's name, so open() never waits for a creator
  // and anything there without a ready header is corrupt at once.
  char nonce[16];
  std::snprintf(nonce, sizeof(nonce), "%08x", static_cast<unsigned>(random_u64()));
  const std::string temp = kTempPrefix + name + "-" + std::to_string(::getpid()) + "-" + nonce;
  const std::string temp_path = std::string(kShmDir) + "/" + temp;
  const int fd = ::shm_open(shm_path(temp).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
                            static_cast<mode_t>(options.mode));
  if (fd < 0) {
    const int err = errno;
    if (err == EACCES) fail_errno(Errc::permission_denied, name, "cannot create", err);
    fail_errno(Errc::io_error, name, "cannot create the shared-memory object", err);
  }
  auto m = std::make_unique<MapImpl>(name, fd, false);
  try {
    ::fchmod(fd, static_cast<mode_t>(options.mode));  // exact bits, whatever the umask
    const std::uint64_t capacity = next_pow2_capacity(options.initial_capacity);
    const std::uint64_t slots_bytes = options.max_handles * sizeof(HandleSlot);
    const std::uint64_t arena = (kPage + slots_bytes + kPage - 1) / kPage * kPage;
    const std::uint64_t total = arena + table_bytes(capacity);
    if (total > options.max_bytes) {
      fail(Errc::invalid_argument, name, "initial_capacity does not fit in max_bytes");
    }
    // Header and slots first; the first table comes from the arena like every later one.
    const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(arena));
    if (rc != 0) {
      fail_errno(rc == ENOSPC ? Errc::out_of_space : Errc::io_error, name,
                 "cannot size the new segment", rc);
    }
    m->seg_.reserve(options.max_bytes);
    m->seg_.map_initial(arena);
    m->seg_.set_arena_offset(arena);
    m->handles_.attach(options.max_handles, kPage);
    SegmentHeader& h = m->header();
    h.creator_pid = static_cast<std::uint64_t>(::getpid());
    h.creator_start = process_start_time(::getpid());
    h.magic = kMagic;
    h.format_version = kFormatVersion;
    h.header_bytes = sizeof(SegmentHeader);
    h.layout_signature = layout_signature();
    h.initial_capacity = capacity;
    h.max_handles = options.max_handles;
    h.mode = options.mode;
    h.max_bytes = options.max_bytes;
    h.hash_seed = random_u64();
    h.slots_offset = kPage;
    h.arena_offset = arena;
    h.file_bytes.store(arena, std::memory_order_relaxed);
    h.arena_top.store(arena, std::memory_order_relaxed);
    h.global_epoch.store(1, std::memory_order_relaxed);
    h.key_type = types.key;
    h.value_type = types.value;
    h.kind = types.kind;
    m->types_ = types;
    m->seed_ = h.hash_seed;
    const std::uint64_t first = m->create_table(capacity, 0);
    h.current_table.store(first, std::memory_order_relaxed);
    // Publishes every field above to openers that acquire init_state.
    h.init_state.store(kReady, std::memory_order_release);
    // Exactly one creator's link() succeeds; the others find the name taken.
    if (::link(temp_path.c_str(), path.c_str()) != 0) {
      const int err = errno;
      if (err != EEXIST) {
        fail_errno(err == EACCES || err == EPERM ? Errc::permission_denied : Errc::io_error, name,
                   "cannot publish the new segment", err);
      }
      ::unlink(temp_path.c_str());
      exists();
      return nullptr;
    }
  } catch (...) {
    ::unlink(temp_path.c_str());
    throw;
  }
  ::unlink(temp_path.c_str());
  m->handles_.claim_slot();
  return m;
}

std::unique_ptr<MapImpl> MapImpl::open(const std::string& name, bool clear_stale, bool read_only,
                                       const SegmentTypes* expect) {
  validate_name(name);
  // O_NONBLOCK: a FIFO planted under the name must not block the open.
  const int fd = ::shm_open(shm_path(name).c_str(),
                            (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK, 0);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail(Errc::not_found, name, "no such map; create it first");
    if (err == EACCES) {
      if (read_only) {
        fail_errno(Errc::permission_denied, name,
                   "this process may not read the map (no read permission on /dev/shm/" + name +
                       "; its owner can grant it with chmod)",
                   err);
      }
      const int probe = ::shm_open(shm_path(name).c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK, 0);
      const bool can_read = probe >= 0;
      if (probe >= 0) ::close(probe);
      fail_errno(Errc::permission_denied, name,
                 can_read ? "this process may read the map but not write it (no write "
                            "permission on /dev/shm/" +
                                name + "); attach read-only to look at it"
                          : "this process may neither read nor write the map (no permission "
                            "on /dev/shm/" +
                                name + "); check the mode it was created with",
                 err);
    }
    if (err == ELOOP) {
      fail(Errc::corrupt, name,
           "not a shmap segment (a symbolic link); remove it with 'shmap rm " + name + "'");
    }
    fail_errno(Errc::io_error, name, "cannot open the shared-memory object", err);
  }
  auto m = std::make_unique<MapImpl>(name, fd, read_only);
  // Creators publish a segment only once it is complete (create() links it under the name),
  // so whatever is here is either a whole segment or not one: no waiting.
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_errno(Errc::io_error, name, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) {
    fail(Errc::corrupt, name,
         "not a shmap segment (not a regular file); remove it with 'shmap rm " + name + "'");
  }
  if (st.st_size < static_cast<off_t>(sizeof(SegmentHeader))) {
    fail(Errc::corrupt, name,
         "not a shmap segment (" + std::to_string(st.st_size) +
             " bytes, smaller than a header); remove it with 'shmap rm " + name + "'");
  }
  // Read the header through a temporary view to learn how much address space to reserve.
  void* hp = ::mmap(nullptr, sizeof(SegmentHeader), PROT_READ, MAP_SHARED, fd, 0);
  if (hp == MAP_FAILED) fail_errno(Errc::io_error, name, "cannot map the header", errno);
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(SegmentHeader)); }
  } unmap{hp};
  const auto& h = *static_cast<const SegmentHeader*>(hp);
  if (h.magic != kMagic) {
    if (__builtin_bswap64(h.magic) == kMagic) {
      fail(Errc::layout_mismatch, name, "written on a machine of the other byte order");
    }
    fail(Errc::corrupt, name,
         "not a shmap segment (bad magic); remove it with 'shmap rm " + name + "'");
  }
  if (h.format_version < kFormatVersion) {
    fail(Errc::version_mismatch, name,
         "made by an older build of shmap (segment format " + std::to_string(h.format_version) +
             ", this build reads " + std::to_string(kFormatVersion) +
             "); dump it with that build ('shmap dump " + name +
             " FILE'), then load the dump with this one ('shmap rm " + name + "', 'shmap load " +
             name + " FILE')");
  }
  if (h.format_version != kFormatVersion) {
    fail(Errc::version_mismatch, name,
         "made by a newer build of shmap (segment format " + std::to_string(h.format_version) +
             ", this build reads " + std::to_string(kFormatVersion) +
             "); use that build, or dump the map with it and load the dump with this one");
  }
  if (h.header_bytes != sizeof(SegmentHeader) || h.layout_signature != layout_signature()) {
    fail(Errc::layout_mismatch, name,
         "segment written by a build with another memory layout; use the same build of shmap");
  }
  if (h.init_state.load(std::memory_order_acquire) != kReady) {
    fail(Errc::corrupt, name,
         "the segment was never finished (its creator died while making it, or it is "
         "damaged); remove it with 'shmap rm " +
             name + "'");
  }
  // The types, copied once and compared as copied.
  SegmentTypes held;
  std::memcpy(&held.key, &h.key_type, sizeof(TypeRecord));
  std::memcpy(&held.value, &h.value_type, sizeof(TypeRecord));
  held.key.name[sizeof(held.key.name) - 1] = 0;
  held.value.name[sizeof(held.value.name) - 1] = 0;
  held.kind = std::atomic_ref<const std::uint64_t>(h.kind).load(std::memory_order_relaxed);
  if (held.kind != kKindMap && held.kind != kKindMultimap) {
    fail(Errc::corrupt, name,
         "the segment header names an unknown kind of map (damaged); remove it with 'shmap rm " +
             name + "'");
  }
  if (expect != nullptr && !same_types(held, *expect)) {
    fail(Errc::layout_mismatch, name,
         "holds " + describe_types(held) + ", opened as " + describe_types(*expect) +
             "; open it with the types it was created with");
  }
  // The immutable fields, each read once: the values checked are the values kept.
  auto once = [](const std::uint64_t& w) {
    return std::atomic_ref<const std::uint64_t>(w).load(std::memory_order_relaxed);
  };
  const std::uint64_t max_bytes = once(h.max_bytes);
  const std::uint64_t max_handles = once(h.max_handles);
  const std::uint64_t slots_offset = once(h.slots_offset);
  const std::uint64_t arena = once(h.arena_offset);
  const std::uint64_t seed = once(h.hash_seed);
  if (max_bytes > (std::uint64_t{1} << 46) || max_handles == 0 || max_handles > kMaxHandles ||
      slots_offset != kPage || arena % kPage != 0 ||
      arena < slots_offset + max_handles * sizeof(HandleSlot) ||
      arena + table_bytes(kMinCapacity) > max_bytes) {
    fail(Errc::corrupt, name,
         "the segment header is inconsistent (damaged or not written by shmap); remove it "
         "with 'shmap rm " +
             name + "'");
  }
  // A consistent view of the mutable fields: current_table first, then file_bytes, then the
  // object's size. A table is published (CAS on current_table) only after file_bytes covers
  // it, and file_bytes is raised only after the object grew, so read in this order they
  // agree even while another process grows the segment. (Read the other way round, a growth
  // between the reads made a healthy map look corrupt.) A few re-reads cover a damaged word
  // that is being repaired by nobody: then it is corrupt.
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t cur = h.current_table.load(std::memory_order_acquire);
    if (open_after_first_read_for_test != nullptr) open_after_first_read_for_test();
    const std::uint64_t file_bytes = h.file_bytes.load(std::memory_order_acquire);
    if (::fstat(fd, &st) != 0) fail_errno(Errc::io_error, name, "cannot stat", errno);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (file_bytes <= size && file_bytes <= max_bytes && cur >= arena && cur % kPage == 0 &&
        cur <= file_bytes - table_bytes(kMinCapacity)) {
      break;
    }
    if (attempt == 3) {
      fail(Errc::corrupt, name,
           "the segment header is inconsistent (its table or size lies outside the object); "
           "remove it with 'shmap rm " +
               name + "'");
    }
  }
  m->seg_.reserve(max_bytes);
  m->seg_.map_initial(static_cast<std::uint64_t>(st.st_size) / kPage * kPage);
  m->seed_ = seed;
  m->types_ = held;
  m->seg_.set_arena_offset(arena);
  // Read-only: no slot; pins go to a lane of this process's own memory, which nobody else
  // reads. They protect nothing; read-only reads validate against the global epoch instead
  // (src/read_only.cpp).
  m->handles_.attach(max_handles, slots_offset, read_only);
  if (read_only) return m;
  if (clear_stale) m->handles_.clear_stale_slots();
  m->handles_.claim_slot();
  return m;
}

const SegmentTypes& u64_types() {
  static const SegmentTypes types = [] {
    SegmentTypes t;
    for (TypeRecord* r : {&t.key, &t.value}) {
      r->size = 8;
      r->align = 8;
      r->kind = 1;  // TypeInfo::Kind::unsigned_integer
      std::memcpy(r->name, "uint64", 7);
      r->name_hash = type_name_hash("uint64");
    }
    return t;
  }();
  return types;
}

std::uint32_t type_name_hash(std::string_view name) {
  std::uint32_t h = 2166136261u;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 16777619u;
  }
  return h;
}

bool same_types(const SegmentTypes& a, const SegmentTypes& b) {
  // The hash tells apart two long names that agree in their first 47 bytes.
  auto same = [](const TypeRecord& x, const TypeRecord& y) {
    return x.size == y.size && x.align == y.align && x.kind == y.kind &&
           x.name_hash == y.name_hash && std::strncmp(x.name, y.name, sizeof(x.name)) == 0;
  };
  return a.kind == b.kind && same(a.key, b.key) && same(a.value, b.value);
}

std::string describe_types(const SegmentTypes& t) {
  auto one = [](const TypeRecord& r) {
    const std::size_t n = strnlen(r.name, sizeof(r.name));
    std::string s = n != 0 ? std::string(r.name, n) : std::string("?");
    // A number's name says its size; a struct's size is worth saying; a string has none.
    if (r.kind != 5 && (r.kind == 4 || s.find_first_of("0123456789") == std::string::npos)) {
      s += " (" + std::to_string(r.size) + " bytes)";
    }
    return s;
  };
  return (t.kind == kKindMultimap ? "a multimap " : "") + one(t.key) + " -> " + one(t.value);
}

std::uint64_t layout_signature() noexcept {
  // FNV-1a over every number that fixes where a shared field lives.
  const std::uint64_t facts[] = {sizeof(SegmentHeader),
                                 alignof(SegmentHeader),
                                 offsetof(SegmentHeader, current_table),
                                 offsetof(SegmentHeader, file_bytes),
                                 offsetof(SegmentHeader, free_list),
                                 offsetof(SegmentHeader, retired_head),
                                 offsetof(SegmentHeader, key_type),
                                 offsetof(SegmentHeader, slab_head),
                                 offsetof(SegmentHeader, record_free),
                                 offsetof(SegmentHeader, unused_extra_entries),
                                 sizeof(SlabHeader),
                                 sizeof(RecordHeader),
                                 kRecordClasses,
                                 kSlabBytes,
                                 sizeof(HandleSlot),
                                 sizeof(Lane),
                                 sizeof(SlotOwner),
                                 sizeof(TableHeader),
                                 offsetof(TableHeader, older),
                                 offsetof(TableHeader, used),
                                 offsetof(TableHeader, retired_next),
                                 offsetof(SlotOwner, start_time),
                                 sizeof(BucketPair),
                                 alignof(BucketPair),
                                 offsetof(BucketPair, key0),
                                 offsetof(BucketPair, slot1),
                                 offsetof(Slot, meta),
                                 sizeof(BulkCell),
                                 kCacheLine,
                                 kLanes,
                                 kStripes,
                                 kChunk,
                                 kTableHeaderBytes,
                                 sizeof(void*),
                                 hash_key(0x0123456789abcdefULL, 42)};
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const std::uint64_t f : facts) {
    for (int i = 0; i < 8; ++i) {
      h ^= (f >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

}  // namespace shmap::detail

namespace shmap {

bool Map::remove(const std::string& name) {
  detail::validate_name(name);
  if (::shm_unlink(("/" + name).c_str()) == 0) return true;
  const int err = errno;
  if (err == ENOENT) return false;
  if (err == EACCES || err == EPERM) {
    detail::fail_errno(Errc::permission_denied, name, "cannot remove", err);
  }
  detail::fail_errno(Errc::io_error, name, "cannot remove", err);
}

void Map::validate_name(const std::string& name) { detail::validate_name(name); }

std::vector<std::string> Map::list() { return list(nullptr); }

std::vector<std::string> Map::list(std::vector<std::string>* unreadable) {
  std::vector<std::string> names;
  DIR* d = ::opendir("/dev/shm");
  if (d == nullptr) return names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." ||
        n.compare(0, std::strlen(detail::kTempPrefix), detail::kTempPrefix) == 0) {
      continue;  // a segment still being built (or orphaned by a killed creator)
    }
    // Only regular files, looked at without following links, and opened without blocking: a
    // FIFO or device in /dev/shm must not hang the listing.
    struct stat lst {};
    if (::fstatat(dirfd(d), e->d_name, &lst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(lst.st_mode)) {
      continue;
    }
    const int fd =
        ::openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
      if (unreadable != nullptr && (errno == EACCES || errno == EPERM)) unreadable->push_back(n);
      continue;
    }
    std::uint64_t magic = 0;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        ::pread(fd, &magic, sizeof(magic), 0) == sizeof(magic) && magic == detail::kMagic) {
      names.push_back(n);
    }
    ::close(fd);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  if (unreadable != nullptr) std::sort(unreadable->begin(), unreadable->end());
  return names;
}

}  // namespace shmap
