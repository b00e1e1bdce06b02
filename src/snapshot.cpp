// shmap — snapshots: Map::dump and Map::load (format in docs/FORMAT.md,
// "Snapshot file format").
//
// Binary file
// ===========
//
//   Header   +0  magic "SHMAPSNP" (8 bytes)   +8 format_version u32   +12
//   body_bytes u32
//            +16 body: a cereal portable-binary (little-endian) archive of
//            SnapshotHeader then header_checksum u64 = XXH3_64bits(bytes 0 ..
//            16 + body_bytes)
//   Chunk*   tag "CHNK" u32, entries u32 (1..chunk_entries), index u64 (0, 1,
//   2, ...)
//            entries x {key u64, value u64}
//            checksum u64 = XXH3_64bits(the chunk's 16-byte header and its
//            entries)
//   Footer   tag "FOOT" u32, reserved u32 (0), chunks u64, entries u64,
//            file_checksum u64 = XXH3_64bits(every byte of the file before this
//            field), end magic "SHMAPEND" (8 bytes)
//
// Every integer is little-endian whatever the host. The header's entry count is
// a hint (the map's size when the dump began): a weakly consistent walk cannot
// know the count in advance, so the footer's count is authoritative and the
// loader sizes its table from it.
//
// Why a bad file changes nothing: load reads and verifies the whole file (every
// checksum, the chunk sequence, the counts) before it touches any map. It then
// reads the file a second time from the same descriptor, verifying again, into
// a table nobody can see (Mode::replace), or a map under a temporary name
// (Mode::create); only when that pass succeeds is the table published
// (publish_replace) or the segment renamed to its final name
// (RENAME_NOREPLACE). Mode::merge builds the map's entries and then the file's into an
// unpublished table the same way, with writers held from before its walk of the map until
// the publish.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
// xxHash compiled into this file (inline, header-only): libshmap.a needs no -lxxhash, so a
// build without CMake links it with -lshmap alone.
#define XXH_INLINE_ALL
#include <rapidjson/document.h>  // after cereal/archives/json.hpp: its RAPIDJSON_ASSERT throws
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cereal/archives/json.hpp>
#include <cereal/archives/portable_binary.hpp>
#include <cereal/external/base64.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/progress.hpp"
#include "shmap/detail/temporaries.hpp"
#include "shmap/string_map.hpp"
#include "shmap/string_multimap.hpp"
#include "shmap/typed_map.hpp"
#include "string_write.hpp"

namespace shmap {
namespace detail {

namespace {

std::atomic<SnapshotProgressFn> g_progress_fn{nullptr};
std::atomic<void *> g_progress_ctx{nullptr};

void report(const char *phase, std::uint64_t done, std::uint64_t total) {
  // Acquire pairs with the release in set_snapshot_progress: ctx is published
  // before fn.
  if (auto fn = g_progress_fn.load(std::memory_order_acquire)) {
    fn(g_progress_ctx.load(std::memory_order_relaxed), phase, done, total);
  }
}

}  // namespace

void set_snapshot_progress(SnapshotProgressFn fn, void *ctx) noexcept {
  g_progress_ctx.store(ctx, std::memory_order_relaxed);
  g_progress_fn.store(fn, std::memory_order_release);
}

// ---- temporaries in progress, for signal handlers -------------------------------------------
//
// A fixed table (no allocation, nothing to lock): a signal handler may run at any instruction
// of any thread. Slot states: 0 free, 1 being filled, 2 armed, 3 taken by the handler (never
// reused: the process is ending). The handler claims a slot with a CAS 2 -> 3 before reading its
// path, and unregister() frees it with a CAS 2 -> 0, so a path is never read while rewritten.
namespace {

struct TempSlot {
  std::atomic<int> state{0};
  char path[4096];
};
TempSlot g_temps[16];

/// Arms `path` for removal by remove_snapshot_temporaries(); -1 if the table is full or the
/// path too long (then only the pid in its name lets a later run clean it up).
int register_temporary(const std::string &path) noexcept {
  if (path.size() >= sizeof(TempSlot::path)) return -1;
  for (int i = 0; i < 16; ++i) {
    int expected = 0;
    // Acquire/release: the path is written between the claim and the arming store.
    if (g_temps[i].state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
      std::memcpy(g_temps[i].path, path.c_str(), path.size() + 1);
      g_temps[i].state.store(2, std::memory_order_release);
      return i;
    }
  }
  return -1;
}

void unregister_temporary(int slot) noexcept {
  if (slot < 0) return;
  int expected = 2;
  // Fails only if a signal handler took the slot: the process is ending anyway.
  g_temps[slot].state.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

/// Keeps `path` armed for its lifetime.
class TempRegistration {
 public:
  explicit TempRegistration(const std::string &path) : slot_(register_temporary(path)) {}
  ~TempRegistration() { unregister_temporary(slot_); }
  TempRegistration(const TempRegistration &) = delete;
  TempRegistration &operator=(const TempRegistration &) = delete;

 private:
  int slot_;
};

}  // namespace

void remove_snapshot_temporaries() noexcept {
  for (TempSlot &t : g_temps) {
    int expected = 2;
    // Acquire: pairs with the arming release store, so the path is complete.
    if (t.state.compare_exchange_strong(expected, 3, std::memory_order_acquire)) ::unlink(t.path);
  }
}

std::optional<int> staging_segment_owner(std::string_view name) noexcept {
  constexpr std::string_view kPrefix = ".shmap-load-";
  if (name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  long pid = 0;
  std::size_t i = 0;
  for (; i < name.size() && i < 10 && name[i] >= '0' && name[i] <= '9'; ++i) {
    pid = pid * 10 + (name[i] - '0');
  }
  if (i == 0 || i >= name.size() || name[i] != '-' || pid <= 0 || pid > INT32_MAX) {
    return std::nullopt;
  }
  return static_cast<int>(pid);
}

bool process_exists(int pid) noexcept { return !(::kill(pid, 0) != 0 && errno == ESRCH); }

namespace {

constexpr char kMagic[8] = {'S', 'H', 'M', 'A', 'P', 'S', 'N', 'P'};
constexpr char kEndMagic[8] = {'S', 'H', 'M', 'A', 'P', 'E', 'N', 'D'};
constexpr std::uint32_t kSnapshotVersion = 1;
// Version 2: a typed map's snapshot (DynamicMap::dump): the header adds both types, and an
// entry is a key word then the value's bytes. A uint64 map still writes version 1.
constexpr std::uint32_t kSnapshotVersionTyped = 2;
// Version 3: a map with string keys (StringMap, TypedMap<std::string, V>): version 2's header;
// the chunks carry a byte stream (a chunk's count is its bytes) of entries {u32 key length,
// u32 value length, key, value}, an entry possibly spanning chunks (docs/FORMAT.md).
constexpr std::uint32_t kSnapshotVersionStrings = 3;
constexpr std::uint32_t kStringChunkBytes = 64 << 10;
constexpr std::uint32_t kChunkTag = 0x4b4e4843;   // "CHNK" little-endian
constexpr std::uint32_t kFooterTag = 0x544f4f46;  // "FOOT" little-endian
constexpr std::uint32_t kChunkEntries = 4096;     // 64 KiB of entries per chunk
constexpr std::uint32_t kMaxChunkEntries = 1u << 20;
constexpr std::uint32_t kMaxHeaderBody = 1u << 20;
constexpr std::size_t kLeadBytes = 16;
constexpr std::size_t kChunkHeadBytes = 16;
constexpr std::size_t kEntryBytes = 16;
constexpr std::size_t kFooterBytes = 40;
constexpr std::size_t kIoBytes = std::size_t{1} << 20;
constexpr const char *kJsonMagic = "shmap-snapshot";
// The JSON form is parsed in memory (the text, then a DOM several times its size): it is for
// people and small maps. 256 MiB of text is about 4 million entries.
constexpr std::uint64_t kMaxJsonBytes = std::uint64_t{256} << 20;
// A shmap JSON snapshot nests 3 deep; anything far deeper is not one.
constexpr int kMaxJsonDepth = 64;

// ---- little-endian words ----
inline void put32(unsigned char *p, std::uint32_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void put64(unsigned char *p, std::uint64_t v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline std::uint32_t get32(const unsigned char *p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}
inline std::uint64_t get64(const unsigned char *p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// What the header's cereal body holds (the lead holds magic, version and body
/// length).
struct SnapshotHeader {
  std::string key_type = "u64";
  std::string value_type = "u64";
  std::uint64_t entry_count = 0;  // binary: a hint (map size at the start); JSON: exact
  std::uint64_t created_unix_ns = 0;
  std::uint32_t chunk_entries = kChunkEntries;
  bool point_in_time = false;
  std::string source_map;
  std::uint32_t source_format_version = 0;
  std::uint64_t initial_capacity = 0;
  std::uint64_t max_handles = 0;
  std::uint64_t mode = 0;
  std::uint64_t max_bytes = 0;

  template <class Archive>
  void serialize(Archive &ar) {
    ar(cereal::make_nvp("key_type", key_type), cereal::make_nvp("value_type", value_type),
       cereal::make_nvp("entry_count", entry_count),
       cereal::make_nvp("created_unix_ns", created_unix_ns),
       cereal::make_nvp("chunk_entries", chunk_entries),
       cereal::make_nvp("point_in_time", point_in_time), cereal::make_nvp("source_map", source_map),
       cereal::make_nvp("source_format_version", source_format_version),
       cereal::make_nvp("initial_capacity", initial_capacity),
       cereal::make_nvp("max_handles", max_handles), cereal::make_nvp("mode", mode),
       cereal::make_nvp("max_bytes", max_bytes));
  }
};

/// Version 2's addition to the header body: the types as the segment records them.
/// (As SegmentHeader::key_type and value_type record them: the name cut at 47 bytes, and the
/// hash of the whole name.)
struct TypedFields {
  std::uint32_t key_size = 0, key_align = 0, key_kind = 0;
  std::string key_name;
  std::uint32_t key_hash = 0;
  std::uint32_t value_size = 0, value_align = 0, value_kind = 0;
  std::string value_name;
  std::uint32_t value_hash = 0;

  template <class Archive>
  void serialize(Archive &ar) {
    ar(cereal::make_nvp("key_size", key_size), cereal::make_nvp("key_align", key_align),
       cereal::make_nvp("key_kind", key_kind), cereal::make_nvp("key_name", key_name),
       cereal::make_nvp("key_hash", key_hash), cereal::make_nvp("value_size", value_size),
       cereal::make_nvp("value_align", value_align), cereal::make_nvp("value_kind", value_kind),
       cereal::make_nvp("value_name", value_name), cereal::make_nvp("value_hash", value_hash));
  }
  SegmentTypes records() const {
    SegmentTypes t;
    auto one = [](TypeRecord *r, std::uint32_t size, std::uint32_t align, std::uint32_t kind,
                  const std::string &name, std::uint32_t hash) {
      r->size = size;
      r->align = align;
      r->kind = kind;
      r->name_hash = hash;
      std::memcpy(r->name, name.data(), std::min(name.size(), sizeof(r->name) - 1));
    };
    one(&t.key, key_size, key_align, key_kind, key_name, key_hash);
    one(&t.value, value_size, value_align, value_kind, value_name, value_hash);
    return t;
  }
};

/// The binary form's header body (cereal portable binary, little-endian): the header, then for
/// versions 2 and 3 the types, then a multimap's kind (a map's body may end before it: kind 1).
std::string header_body(const SnapshotHeader &h, const TypedFields *types, std::uint64_t kind) {
  std::ostringstream body;
  {
    cereal::PortableBinaryOutputArchive ar(
        body, cereal::PortableBinaryOutputArchive::Options::LittleEndian());
    ar(h);
    if (types != nullptr) ar(*types);
    if (kind == kKindMultimap) ar(kKindMultimap);
  }
  return body.str();
}

/// The JSON form's preamble: the binary lead's fields by name, an optional checksum of the
/// content (absent in files written before it existed; load verifies it when present), then
/// the same header. Written with cereal; read by parse_json.
struct JsonPreamble {
  std::string magic = kJsonMagic;
  std::uint32_t format_version = kSnapshotVersion;
  std::string content_xxh3;  // "0x" + 16 hex digits, or empty: none
  template <class Archive>
  void save(Archive &ar) const {
    ar(cereal::make_nvp("magic", magic), cereal::make_nvp("format_version", format_version));
    if (!content_xxh3.empty()) ar(cereal::make_nvp("content_xxh3", content_xxh3));
  }
};

struct JsonEntry {
  std::uint64_t key = 0;
  std::uint64_t value = 0;
  template <class Archive>
  void serialize(Archive &ar) {
    ar(cereal::make_nvp("key", key), cereal::make_nvp("value", value));
  }
};

/// The JSON form's content checksum: XXH3-64 of the header encoded exactly as the binary
/// form's header body, then every entry as key u64, value u64 (little-endian), in file order.
/// It covers what a load applies, not the text, so reformatting the JSON keeps it valid.
std::uint64_t json_content_xxh3(const SnapshotHeader &h, const std::vector<JsonEntry> &entries) {
  const std::string b = header_body(h, nullptr, kKindMap);
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, b.data(), b.size());
  unsigned char kv[16 * 256];
  std::size_t n = 0;
  for (const JsonEntry &e : entries) {
    put64(kv + n * 16, e.key);
    put64(kv + n * 16 + 8, e.value);
    if (++n == 256) {
      XXH3_64bits_update(&st, kv, sizeof kv);
      n = 0;
    }
  }
  XXH3_64bits_update(&st, kv, n * 16);
  return XXH3_64bits_digest(&st);
}

/// Names the map and the file in every message: "shmap: map 'm': snapshot 'f':
/// what".
struct Where {
  const std::string &map;
  const std::string &path;
  [[noreturn]] void fail(Errc code, const std::string &what) const {
    throw Error(code, "shmap: map '" + map + "': snapshot '" + path + "': " + what);
  }
  [[noreturn]] void fail_errno(Errc code, const std::string &what, int err) const {
    fail(code, what + " (" + std::strerror(err) + ")");
  }
};

Errc errc_of(int err, Errc otherwise = Errc::io_error) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return Errc::not_found;
    case EACCES:
    case EPERM:
    case EROFS:
      return Errc::permission_denied;
    case ENOSPC:
    case EDQUOT:
      return Errc::out_of_space;
    default:
      return otherwise;
  }
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd &&o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd &operator=(Fd &&o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd &) = delete;
  Fd &operator=(const Fd &) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::uint64_t now_unix_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

SnapshotHeader header_for(const Map &m, bool point_in_time, std::uint64_t count_hint) {
  const Stats s = m.stats();
  SnapshotHeader h;
  h.entry_count = count_hint;
  h.created_unix_ns = now_unix_ns();
  h.point_in_time = point_in_time;
  h.source_map = m.name();
  h.source_format_version = s.format_version;
  h.initial_capacity = s.options.initial_capacity;
  h.max_handles = s.options.max_handles;
  h.mode = s.options.mode;
  h.max_bytes = s.options.max_bytes;
  return h;
}

// ---- writing
// ----------------------------------------------------------------------------

/// A file under a temporary name beside `path`; commit() makes it appear as
/// `path`, complete. Until then (and if anything fails) the temporary is
/// removed and `path` is untouched.
/// Writes buffers to a file descriptor on a thread of its own, so that a dump walks the map
/// while the previous megabyte goes to the file (walk and write each take about half of a
/// big dump). At most two buffers wait, so memory stays bounded. The first error stops the
/// writing; it is reported by the next hand-off or by finish(). Without a thread (none could
/// be started) the buffers are written in place.
class FileWriter {
 public:
  explicit FileWriter(int fd) : fd_(fd) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::exception &) {
      // No thread to be had (limits, memory): synchronous writes.
    }
  }
  ~FileWriter() { stop(); }
  FileWriter(const FileWriter &) = delete;
  FileWriter &operator=(const FileWriter &) = delete;

  /// Takes *buf (leaving it empty, capacity kept where possible); 0 or the errno of a
  /// failed write so far.
  int hand_off(std::vector<unsigned char> *buf) {
    if (!thread_.joinable()) {
      if (error_ == 0) error_ = write_all(*buf);
      buf->clear();
      return error_;
    }
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return queue_.size() < 2; });
    queue_.push_back(std::move(*buf));
    if (!spare_.empty()) {
      *buf = std::move(spare_.back());
      spare_.pop_back();
    }
    buf->clear();
    cv_.notify_all();
    return error_;
  }
  /// Waits until everything handed off is written; 0 or the errno of the first failure.
  int finish() {
    stop();
    return error_;
  }

 private:
  int write_all(const std::vector<unsigned char> &b) const {
    std::size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::write(fd_, b.data() + off, b.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {  // standard output may be a non-blocking pipe
          pollfd p{fd_, POLLOUT, 0};
          ::poll(&p, 1, -1);
          continue;
        }
        return errno;
      }
      off += static_cast<std::size_t>(n);
    }
    return 0;
  }
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty() || done_; });
      if (queue_.empty()) return;  // done, and everything written
      std::vector<unsigned char> b = std::move(queue_.front());
      queue_.pop_front();
      const bool skip = error_ != 0;
      lock.unlock();
      const int err = skip ? 0 : write_all(b);
      lock.lock();
      if (err != 0) error_ = err;
      b.clear();
      spare_.push_back(std::move(b));
      cv_.notify_all();
    }
  }
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<unsigned char>> queue_;
  std::vector<std::vector<unsigned char>> spare_;
  int error_ = 0;  // guarded by mu_ while the thread runs
  bool done_ = false;
  std::thread thread_;
};

std::string kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

/// The regular file a dump to `w.path` replaces: the path itself (existing or not), or the
/// regular file a chain of symbolic links ends at (written through: the links stay). Anything
/// else is refused, never replaced: a FIFO, a device, a directory, a link to nothing, and any
/// path through /proc — /dev/stdout is a link to /proc/self/fd/1, which names whatever the
/// shell opened (replacing a redirected file there would detach it from the shell).
std::string dump_target(const Where &w) {
  std::string hop = w.path;
  for (int links = 0; links < 40; ++links) {
    const auto slash = hop.rfind('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : hop.substr(0, slash));
    if (char *real_dir = ::realpath(dir.c_str(), nullptr)) {
      const bool proc = std::strncmp(real_dir, "/proc/", 6) == 0;
      std::free(real_dir);
      if (proc) {
        w.fail(Errc::invalid_argument,
               "names an open file through /proc (" + hop +
                   "): dump replaces only regular files; give '-' to write to standard output");
      }
    }
    struct stat st {};
    if (::lstat(hop.c_str(), &st) != 0) {
      const int err = errno;
      if (err == ENOENT && links == 0) return w.path;  // a new file
      if (err == ENOENT) {
        w.fail(Errc::invalid_argument, "is a symbolic link to nothing ('" + hop +
                                           "'); dump to the file it should name, or remove "
                                           "the link");
      }
      w.fail_errno(errc_of(err), "cannot stat '" + hop + "'", err);
    }
    if (S_ISREG(st.st_mode)) return hop;
    if (!S_ISLNK(st.st_mode)) {
      w.fail(Errc::invalid_argument,
             std::string(links > 0 ? "is a symbolic link to " : "is ") + kind_of(st.st_mode) +
                 ": dump replaces only regular files; give '-' to write to standard output");
    }
    std::string target(PATH_MAX, '\0');
    const ssize_t n = ::readlink(hop.c_str(), target.data(), target.size());
    if (n < 0 || static_cast<std::size_t>(n) >= target.size()) {
      const int err = n < 0 ? errno : ENAMETOOLONG;
      w.fail_errno(errc_of(err), "cannot read the symbolic link '" + hop + "'", err);
    }
    target.resize(static_cast<std::size_t>(n));
    hop = target[0] == '/' || slash == std::string::npos ? target : dir + "/" + target;
  }
  w.fail(Errc::invalid_argument, "too many levels of symbolic links");
}

/// Removes the `TARGET.tmp.PID.N` files of dumps to the same target whose process is gone
/// (killed mid-dump, SIGKILL included). Best effort: a file it cannot remove stays.
void remove_dead_temporaries(const std::string &target) {
  const auto slash = target.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : target.substr(0, slash + 1);
  const std::string prefix =
      (slash == std::string::npos ? target : target.substr(slash + 1)) + ".tmp.";
  DIR *d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent *e = ::readdir(d)) {
    const std::string_view n = e->d_name;
    if (n.substr(0, prefix.size()) != prefix) continue;
    const std::string_view rest = n.substr(prefix.size());
    const auto dot = rest.find('.');
    if (dot == 0 || dot == std::string_view::npos || dot > 10) continue;
    long pid = 0;
    bool digits = true;
    for (const char c : rest.substr(0, dot)) {
      if (c < '0' || c > '9') digits = false;
      pid = pid * 10 + (c - '0');
    }
    for (const char c : rest.substr(dot + 1)) digits = digits && c >= '0' && c <= '9';
    if (!digits || dot + 1 == rest.size() || pid <= 0 || pid > INT32_MAX) continue;
    if (pid == ::getpid() || process_exists(static_cast<int>(pid))) continue;
    ::unlinkat(dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

/// The snapshot's destination. For a path: a temporary `TARGET.tmp.PID.N` beside the target
/// (mode: the map's permission bits, exactly), fsynced and renamed into place by commit();
/// removed if never committed, by a signal handler of the CLI if the process is interrupted
/// (remove_snapshot_temporaries), or by the next dump to the target if the process was killed.
/// For "-": standard output, written as it goes (no temporary, no rename; a failed dump leaves
/// partial output, which load rejects).
class AtomicFile {
 public:
  AtomicFile(const Where &w, unsigned mode) : w_(w) {
    if (w.path == "-") {
      stream_ = true;
      fd_ = STDOUT_FILENO;
    } else {
      target_ = dump_target(w);
      remove_dead_temporaries(target_);
      static std::atomic<unsigned> counter{0};
      tmp_ = target_ + ".tmp." + std::to_string(::getpid()) + "." +
             std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
      registration_ = std::make_unique<TempRegistration>(tmp_);
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd_ < 0) {
        const int err = errno;
        w.fail_errno(errc_of(err), "cannot create '" + tmp_ + "'", err);
      }
      // The map's permission bits, not masked by umask (as for the segment): a snapshot of a
      // 0600 map is not readable by others.
      if (::fchmod(fd_, mode & 07777) != 0) {
        const int err = errno;
        ::close(fd_);
        ::unlink(tmp_.c_str());
        w.fail_errno(errc_of(err), "cannot set the mode of '" + tmp_ + "'", err);
      }
    }
    try {
      writer_ = std::make_unique<FileWriter>(fd_);
    } catch (...) {
      if (!stream_) {
        ::close(fd_);  // the destructor does not run for a constructor that throws
        ::unlink(tmp_.c_str());
      }
      throw;
    }
    XXH3_64bits_reset(&state_);
  }
  ~AtomicFile() {
    writer_.reset();  // stops the writing thread before the descriptor goes
    if (stream_) return;
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicFile(const AtomicFile &) = delete;
  AtomicFile &operator=(const AtomicFile &) = delete;

  /// Appends bytes (buffered) and folds them into the whole-file checksum.
  void write(const void *p, std::size_t n) {
    XXH3_64bits_update(&state_, p, n);
    raw(p, n);
  }
  /// Appends bytes that the whole-file checksum does not cover (the checksum,
  /// the end magic).
  void raw(const void *p, std::size_t n) {
    const auto *c = static_cast<const unsigned char *>(p);
    buf_.insert(buf_.end(), c, c + n);
    if (buf_.size() >= kIoBytes) flush();
  }
  std::uint64_t digest() const { return XXH3_64bits_digest(&state_); }

  void flush() { check(writer_->hand_off(&buf_)); }

  void commit() {
    flush();
    check(writer_->finish());
    if (stream_) {
      struct stat st {};
      if (::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode) && ::fsync(fd_) != 0) {
        const int err = errno;
        w_.fail_errno(errc_of(err), "cannot fsync standard output", err);
      }
      committed_ = true;
      return;
    }
    if (::fsync(fd_) != 0) {
      const int err = errno;
      w_.fail_errno(errc_of(err), "cannot fsync '" + tmp_ + "'", err);
    }
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), target_.c_str()) != 0) {
      const int err = errno;
      w_.fail_errno(errc_of(err), "cannot rename '" + tmp_ + "' to '" + target_ + "'", err);
    }
    committed_ = true;
    // The rename is durable once the directory is synced; failing that is not
    // an error of the snapshot (the file is complete under one name or the
    // other).
    const auto slash = target_.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : target_.substr(0, slash + 1);
    Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (d.get() >= 0) ::fsync(d.get());
  }

 private:
  void check(int err) const {
    if (err != 0) {
      w_.fail_errno(errc_of(err),
                    stream_ ? "cannot write to standard output" : "cannot write '" + tmp_ + "'",
                    err);
    }
  }

  const Where &w_;
  bool stream_ = false;
  std::string target_, tmp_;
  std::unique_ptr<TempRegistration> registration_;
  int fd_ = -1;
  bool committed_ = false;
  std::vector<unsigned char> buf_;
  std::unique_ptr<FileWriter> writer_;
  XXH3_state_t state_;
};

/// Holds writers back for a point-in-time dump; a dumper that dies is noticed
/// by the writers.
class WriterHold {
 public:
  WriterHold(const MapImpl &m, bool on, std::uint64_t extra_bytes = 0) : m_(on ? &m : nullptr) {
    if (m_) m_->hold_writers(extra_bytes);
  }
  ~WriterHold() {
    if (m_) m_->release_writers();
  }
  WriterHold(const WriterHold &) = delete;
  WriterHold &operator=(const WriterHold &) = delete;

 private:
  const MapImpl *m_;
};

// A point-in-time hold has a lease (writers break it after kWriterHoldLeaseNs plus the time to
// copy the tables): a copy that outlived it is not an image of one moment, so it is not used.
void require_hold(const Map &m, bool point_in_time) {
  if (point_in_time && !m.impl().still_holding_writers()) {
    throw Error(Errc::timeout, "shmap: map '" + m.name() +
                                   "': the point-in-time copy outlived its hold on writers (" +
                                   std::to_string(m.impl().writer_hold_lease_ns(0) / 1000000) +
                                   " ms); dump without --point-in-time or retry");
  }
}

/// The binary form after its header, for both versions: entries of `entry_bytes` each,
/// `per_chunk` to a chunk (tag, count, index, entries, checksum), then the footer. A dump's
/// walk calls next() and added() from inside the map's read protocol, so neither throws: a
/// write failure is remembered and rethrown by finish().
class BinaryWriter {
 public:
  BinaryWriter(AtomicFile &out, std::uint32_t version, const std::string &body,
               std::size_t entry_bytes, std::uint32_t per_chunk, std::uint64_t hint)
      : out_(out),
        entry_bytes_(entry_bytes),
        per_chunk_(per_chunk),
        hint_(hint),
        chunk_(kChunkHeadBytes + std::size_t{per_chunk} * entry_bytes + 8) {
    unsigned char lead[kLeadBytes];
    std::memcpy(lead, kMagic, 8);
    put32(lead + 8, version);
    put32(lead + 12, static_cast<std::uint32_t>(body.size()));
    std::vector<unsigned char> head(lead, lead + kLeadBytes);
    head.insert(head.end(), body.begin(), body.end());
    unsigned char word[8];
    put64(word, XXH3_64bits(head.data(), head.size()));
    out_.write(head.data(), head.size());
    out_.write(word, 8);
  }
  /// Where the next entry goes (entry_bytes of it).
  unsigned char *next() {
    return chunk_.data() + kChunkHeadBytes + std::size_t{in_chunk_} * entry_bytes_;
  }
  /// The entry at next() is filled.
  void added() noexcept {
    if (failure_) return;
    ++total_;
    if (++in_chunk_ == per_chunk_) {
      try {
        emit();
      } catch (...) {
        failure_ = std::current_exception();
      }
    }
  }
  bool failed() const { return failure_ != nullptr; }
  /// The last chunk and the footer; the file is complete (not yet committed).
  void finish() {
    if (failure_) std::rethrow_exception(failure_);
    emit();
    unsigned char foot[kFooterBytes];
    put32(foot, kFooterTag);
    put32(foot + 4, 0);
    put64(foot + 8, chunks_);
    put64(foot + 16, total_);
    out_.write(foot, 24);
    put64(foot + 24, out_.digest());
    std::memcpy(foot + 32, kEndMagic, 8);
    out_.raw(foot + 24, 16);
    report("dump", total_, total_);
  }

 private:
  void emit() {
    if (in_chunk_ == 0) return;
    put32(chunk_.data(), kChunkTag);
    put32(chunk_.data() + 4, in_chunk_);
    put64(chunk_.data() + 8, chunks_);
    const std::size_t len = kChunkHeadBytes + std::size_t{in_chunk_} * entry_bytes_;
    put64(chunk_.data() + len, XXH3_64bits(chunk_.data(), len));
    out_.write(chunk_.data(), len + 8);
    ++chunks_;
    in_chunk_ = 0;
    report("dump", total_, hint_ > total_ ? hint_ : total_);
  }

  AtomicFile &out_;
  std::size_t entry_bytes_;
  std::uint32_t per_chunk_;
  std::uint64_t hint_;
  std::vector<unsigned char> chunk_;
  std::uint32_t in_chunk_ = 0;
  std::uint64_t chunks_ = 0, total_ = 0;
  std::exception_ptr failure_;
};

void dump_binary(const Map &m, const Where &w, bool point_in_time) {
  AtomicFile out(w, m.stats().options.mode);
  // Point in time: the entries are copied into memory under the hold, and the file is
  // written after it, so writers wait for a memory copy (milliseconds per 100 MB), never
  // for file I/O. Otherwise the walk streams straight into the file.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> copy;
  std::uint64_t hint = 0;
  SnapshotHeader h;
  if (point_in_time) {
    WriterHold hold(m.impl(), true);
    hint = m.size();
    h = header_for(m, true, hint);
    report("dump", 0, hint);  // writers are held from here until the copy is made
    copy.reserve(hint + hint / 8 + 16);
    m.for_each([&](std::uint64_t k, std::uint64_t v) { copy.emplace_back(k, v); });
    require_hold(m, true);
  } else {
    hint = m.size();
    h = header_for(m, false, hint);
  }
  auto walk = [&](auto &&f) {
    if (point_in_time) {
      for (const auto &[k, v] : copy) f(k, v);
    } else {
      m.for_each(f);
    }
  };

  if (!point_in_time) report("dump", 0, hint);
  BinaryWriter bw(out, kSnapshotVersion, header_body(h, nullptr, kKindMap), kEntryBytes,
                  kChunkEntries, hint);
  walk([&](std::uint64_t k, std::uint64_t v) {
    if (bw.failed()) return;
    unsigned char *e = bw.next();
    put64(e, k);
    put64(e + 8, v);
    bw.added();
  });
  bw.finish();
  report("sync", 0, 0);  // the fsync and rename: seconds for a big file on a slow disk
  out.commit();
}

void dump_json(const Map &m, const Where &w, bool point_in_time) {
  AtomicFile out(w, m.stats().options.mode);  // first: a file that cannot be made fails early
  std::vector<JsonEntry> entries;
  SnapshotHeader h;
  {
    WriterHold hold(m.impl(), point_in_time);
    const std::uint64_t hint = m.size();
    h = header_for(m, point_in_time, hint);
    entries.reserve(hint);
    report("dump", 0, hint);
    m.for_each([&](std::uint64_t k, std::uint64_t v) { entries.push_back({k, v}); });
    require_hold(m, point_in_time);
  }
  h.entry_count = entries.size();
  h.chunk_entries = 0;
  JsonPreamble pre;
  pre.content_xxh3 = hex(json_content_xxh3(h, entries));
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(
        os, cereal::JSONOutputArchive::Options(
                324, cereal::JSONOutputArchive::Options::IndentChar::space, 1));
    ar(cereal::make_nvp("snapshot", pre), cereal::make_nvp("header", h),
       cereal::make_nvp("entries", entries));
  }
  os << '\n';
  const std::string text = os.str();
  if (text.size() > kMaxJsonBytes) {
    // load would refuse it: say so now rather than write it.
    w.fail(Errc::invalid_argument, "the JSON form of this map is " + std::to_string(text.size()) +
                                       " bytes, over the " + std::to_string(kMaxJsonBytes >> 20) +
                                       " MiB that load accepts; dump the binary form");
  }
  report("dump", entries.size(), entries.size());
  out.write(text.data(), text.size());
  report("sync", 0, 0);
  out.commit();
}

// ---- reading
// ----------------------------------------------------------------------------

/// Buffered sequential reads by pread from one descriptor.
class Reader {
 public:
  Reader(int fd, std::uint64_t size) : fd_(fd), size_(size) { buf_.resize(kIoBytes); }
  std::uint64_t offset() const { return base_ + pos_; }
  std::uint64_t remaining() const { return size_ - offset(); }
  /// n bytes at the current offset (valid until the next call), or nullptr if
  /// the file ends (or shrank) before them.
  const unsigned char *take(std::size_t n, const Where &w) {
    // Every length a file declares is checked against what the file really holds before any
    // buffer grows to it.
    if (n > remaining()) return nullptr;
    if (len_ - pos_ < n) {
      std::memmove(buf_.data(), buf_.data() + pos_, len_ - pos_);
      base_ += pos_;
      len_ -= pos_;
      pos_ = 0;
      if (buf_.size() < n) buf_.resize(n);
      while (len_ < n) {
        const std::size_t want = std::min<std::uint64_t>(buf_.size() - len_, size_ - base_ - len_);
        if (want == 0) return nullptr;
        const ssize_t got = ::pread(fd_, buf_.data() + len_, want, base_ + len_);
        if (got < 0) {
          if (errno == EINTR) continue;
          const int err = errno;
          w.fail_errno(Errc::io_error, "read failed at byte " + std::to_string(base_ + len_), err);
        }
        if (got == 0) return nullptr;
        len_ += static_cast<std::size_t>(got);
      }
    }
    const unsigned char *p = buf_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  int fd_;
  std::uint64_t size_;
  std::vector<unsigned char> buf_;
  std::uint64_t base_ = 0;  // file offset of buf_[0]
  std::size_t pos_ = 0, len_ = 0;
};

/// Walks the layout of the header's cereal body (see SnapshotHeader) and checks that each
/// field, and every string length it declares, fits in the body. cereal sizes a string from its
/// declared length before reading it, so a damaged length (2^31, with the checksums redone)
/// would otherwise allocate that much before the decode fails.
void check_header_lengths(const unsigned char *body, std::size_t n, const Where &w, bool typed) {
  std::size_t at = 0;
  const bool swap = n == 0 || body[0] != 1;
  auto need = [&](std::size_t k, const char *field) {
    if (n - at < k) {
      w.fail(Errc::corrupt, std::string("header field ") + field + " at byte " +
                                std::to_string(kLeadBytes + at) + " runs past the header's end");
    }
  };
  auto fixed = [&](std::size_t k, const char *field) {
    need(k, field);
    at += k;
  };
  auto string = [&](const char *field) {
    need(8, field);
    std::uint64_t len = get64(body + at);
    if (swap) len = __builtin_bswap64(len);
    if (len > n - at - 8) {
      w.fail(Errc::corrupt, std::string("header field ") + field + " at byte " +
                                std::to_string(kLeadBytes + at) + " declares a " +
                                std::to_string(len) + "-byte string; the header has " +
                                std::to_string(n - at - 8) + " bytes left");
    }
    at += 8 + static_cast<std::size_t>(len);
  };
  fixed(1, "endianness");  // cereal's flag; 1 = little-endian (as written)
  string("key_type");
  string("value_type");
  fixed(8, "entry_count");
  fixed(8, "created_unix_ns");
  fixed(4, "chunk_entries");
  fixed(1, "point_in_time");
  string("source_map");
  fixed(4, "source_format_version");
  fixed(32, "source options");
  if (typed) {
    fixed(12, "key type");
    string("key_name");
    fixed(4, "key_hash");
    fixed(12, "value type");
    string("value_name");
    fixed(4, "value_hash");
  }
}

/// Checks the types a version 2 or 3 header records (`kind`: map or multimap) against what a
/// map can hold; returns the binary form's entry size (version 3's chunks carry bytes: 1).
std::size_t check_types(std::uint32_t version, const TypedFields &t, std::uint64_t kind,
                        const Where &w) {
  std::size_t entry_bytes = 1;
  if (version == kSnapshotVersionTyped) {
    if (t.key_size == 0 || t.key_size > 8 || t.value_size == 0 || t.value_size > kMaxValueBytes ||
        t.key_name.size() > 4096 || t.value_name.size() > 4096) {
      w.fail(Errc::corrupt, "header records key and value sizes " + std::to_string(t.key_size) +
                                " and " + std::to_string(t.value_size) +
                                " that no map can have (keys 1..8, values 1.." +
                                std::to_string(kMaxValueBytes) + " bytes)");
    }
    if (kind != kKindMap) {
      w.fail(Errc::corrupt, "header records a kind of map (" + std::to_string(kind) +
                                ") that a typed map's snapshot cannot have (1: map)");
    }
    entry_bytes = 8 + std::size_t{t.value_size};
  }
  if (version == kSnapshotVersionStrings) {
    const auto strings = static_cast<std::uint32_t>(TypeInfo::Kind::byte_string);
    const bool string_values = t.value_kind == strings && t.value_size == 0;
    const bool string_keys = t.key_kind == strings && t.key_size == 0;
    // String keys or values, or keys of more than 8 bytes (held by their bytes); a fixed-size
    // key or value has a size, and a key and a value fit in one entry together.
    const bool ok = (string_keys || (t.key_kind != strings && t.key_size != 0)) &&
                    (string_values || (t.value_kind != strings && t.value_size != 0)) &&
                    (string_keys || string_values || t.key_size > 8) &&
                    std::uint64_t{t.key_size} + t.value_size <= kMaxStringEntryBytes;
    if (!ok || t.key_name.size() > 4096 || t.value_name.size() > 4096) {
      w.fail(Errc::corrupt, "header records types (key kind " + std::to_string(t.key_kind) +
                                ", value kind " + std::to_string(t.value_kind) + " of " +
                                std::to_string(t.value_size) +
                                " bytes) that no map with strings has");
    }
    if (kind != kKindMap && (kind != kKindMultimap || !string_keys || !string_values)) {
      w.fail(Errc::corrupt, "header records a kind of map (" + std::to_string(kind) +
                                ") that is not one of these types' (1: map, 2: a multimap of "
                                "strings)");
    }
  }
  return entry_bytes;
}

using ChunkFn = std::function<void(const unsigned char *entries, std::uint32_t n)>;

struct ScanResult {
  std::uint32_t version = kSnapshotVersion;
  std::size_t entry_bytes = kEntryBytes;  // version 2: 8 + the value's size
  TypedFields types;                      // version 2
  std::uint64_t kind = kKindMap;          // version 3: kKindMultimap for a multimap's
  SnapshotHeader header;
  std::uint64_t entries = 0;
  std::uint64_t chunks = 0;
};

/// Reads and verifies a binary snapshot from start to end, calling `fn` for
/// each verified chunk.
ScanResult scan_binary(int fd, std::uint64_t size, const Where &w, const char *phase,
                       const ChunkFn &fn) {
  Reader r(fd, size);
  XXH3_state_t file_hash;
  XXH3_64bits_reset(&file_hash);
  ScanResult res;

  const unsigned char *lead = r.take(kLeadBytes, w);
  if (lead == nullptr || std::memcmp(lead, kMagic, 8) != 0) {
    if (size >= 8) {
      unsigned char got[8];
      if (::pread(fd, got, 8, 0) == 8 && std::memcmp(got, kMagic, 8) != 0) {
        w.fail(Errc::corrupt, "not a shmap snapshot: bad magic at byte 0 (expected " +
                                  hex(get64(reinterpret_cast<const unsigned char *>(kMagic))) +
                                  " \"SHMAPSNP\", found " + hex(get64(got)) + ")");
      }
    }
    w.fail(Errc::corrupt, "truncated header: the file has " + std::to_string(size) +
                              " bytes, the header's fixed part alone needs " +
                              std::to_string(kLeadBytes));
  }
  const std::uint32_t version = get32(lead + 8);
  if (version != kSnapshotVersion && version != kSnapshotVersionTyped &&
      version != kSnapshotVersionStrings) {
    w.fail(Errc::version_mismatch, "format version " + std::to_string(version) +
                                       " at byte 8; this build reads versions 1 to " +
                                       std::to_string(kSnapshotVersionStrings));
  }
  res.version = version;
  const std::uint32_t body_bytes = get32(lead + 12);
  if (body_bytes == 0 || body_bytes > kMaxHeaderBody) {
    w.fail(Errc::corrupt, "header length " + std::to_string(body_bytes) +
                              " at byte 12 is out of range (1.." + std::to_string(kMaxHeaderBody) +
                              ")");
  }
  std::vector<unsigned char> head(lead, lead + kLeadBytes);
  const unsigned char *body = r.take(body_bytes + 8, w);
  if (body == nullptr) {
    w.fail(Errc::corrupt, "truncated header: needs " + std::to_string(kLeadBytes + body_bytes + 8) +
                              " bytes, the file has " + std::to_string(size));
  }
  head.insert(head.end(), body, body + body_bytes);
  check_header_lengths(body, body_bytes, w, version != kSnapshotVersion);
  {
    const std::uint64_t stored = get64(body + body_bytes);
    const std::uint64_t computed = XXH3_64bits(head.data(), head.size());
    if (stored != computed) {
      w.fail(Errc::corrupt, "header checksum mismatch at byte " +
                                std::to_string(kLeadBytes + body_bytes) + " (stored " +
                                hex(stored) + ", computed " + hex(computed) + ")");
    }
    XXH3_64bits_update(&file_hash, head.data(), head.size());
    XXH3_64bits_update(&file_hash, body + body_bytes, 8);
  }
  try {
    std::istringstream is(
        std::string(reinterpret_cast<const char *>(head.data() + kLeadBytes), body_bytes));
    cereal::PortableBinaryInputArchive ar(is);
    ar(res.header);
    if (version != kSnapshotVersion) ar(res.types);
    if (version == kSnapshotVersionStrings && is.peek() != std::char_traits<char>::eof()) {
      ar(res.kind);
    }
  } catch (const std::exception &e) {
    w.fail(Errc::corrupt, std::string("header body does not decode: ") + e.what());
  }
  const SnapshotHeader &h = res.header;
  if (version == kSnapshotVersion && (h.key_type != "u64" || h.value_type != "u64")) {
    w.fail(Errc::version_mismatch, "holds " + h.key_type + " -> " + h.value_type +
                                       " entries; this build stores u64 -> u64");
  }
  if (version != kSnapshotVersion) res.entry_bytes = check_types(version, res.types, res.kind, w);
  if (h.chunk_entries == 0 || h.chunk_entries > kMaxChunkEntries) {
    w.fail(Errc::corrupt, "header says " + std::to_string(h.chunk_entries) +
                              " entries per chunk (must be 1.." + std::to_string(kMaxChunkEntries) +
                              ")");
  }
  report(phase, 0, size);

  for (;;) {
    const std::uint64_t at = r.offset();
    const unsigned char *tag_at = r.take(4, w);
    if (tag_at == nullptr) {
      w.fail(Errc::corrupt, "truncated: the file ends at byte " + std::to_string(size) +
                                " after chunk " + std::to_string(res.chunks) + " where chunk " +
                                std::to_string(res.chunks) + " or the footer should start");
    }
    // Copy the tag: the next take() may move the buffer.
    unsigned char tag_p[4];
    std::memcpy(tag_p, tag_at, 4);
    const std::uint32_t tag = get32(tag_p);
    if (tag == kFooterTag) {
      const unsigned char *f = r.take(kFooterBytes - 4, w);
      if (f == nullptr) {
        w.fail(Errc::corrupt, "truncated footer at byte " + std::to_string(at) + ": needs " +
                                  std::to_string(kFooterBytes) + " bytes, " +
                                  std::to_string(size - at) + " left");
      }
      XXH3_64bits_update(&file_hash, tag_p, 4);
      XXH3_64bits_update(&file_hash, f, 20);
      const std::uint64_t computed = XXH3_64bits_digest(&file_hash);
      const std::uint64_t stored = get64(f + 20);
      if (stored != computed) {
        w.fail(Errc::corrupt, "file checksum mismatch in the footer at byte " +
                                  std::to_string(at + 24) + " (stored " + hex(stored) +
                                  ", computed " + hex(computed) + ")");
      }
      if (std::memcmp(f + 28, kEndMagic, 8) != 0) {
        w.fail(Errc::corrupt, "bad end marker at byte " + std::to_string(at + 32) +
                                  " (expected \"SHMAPEND\", found " + hex(get64(f + 28)) + ")");
      }
      const std::uint64_t f_chunks = get64(f + 4);
      const std::uint64_t f_entries = get64(f + 12);
      if (get32(f) != 0 || f_chunks != res.chunks || f_entries != res.entries) {
        w.fail(Errc::corrupt, "footer at byte " + std::to_string(at) + " says " +
                                  std::to_string(f_chunks) + " chunks / " +
                                  std::to_string(f_entries) + " entries, found " +
                                  std::to_string(res.chunks) + " / " + std::to_string(res.entries));
      }
      if (r.remaining() != 0) {
        w.fail(Errc::corrupt, std::to_string(r.remaining()) +
                                  " unexpected bytes after the footer (at byte " +
                                  std::to_string(r.offset()) + ")");
      }
      report(phase, size, size);
      return res;
    }
    if (tag != kChunkTag) {
      w.fail(Errc::corrupt, "at byte " + std::to_string(at) + " where chunk " +
                                std::to_string(res.chunks) +
                                " or the footer should start: expected tag "
                                "\"CHNK\" or \"FOOT\", found " +
                                hex(tag));
    }
    const unsigned char *rest = r.take(kChunkHeadBytes - 4, w);
    if (rest == nullptr) {
      w.fail(Errc::corrupt, "truncated: chunk " + std::to_string(res.chunks) + " at byte " +
                                std::to_string(at) + " has no complete header");
    }
    const std::uint32_t n = get32(rest);
    const std::uint64_t index = get64(rest + 4);
    if (n == 0 || n > h.chunk_entries) {
      w.fail(Errc::corrupt, "chunk " + std::to_string(res.chunks) + " at byte " +
                                std::to_string(at) + ": entry count " + std::to_string(n) +
                                " out of range (1.." + std::to_string(h.chunk_entries) + ")");
    }
    const std::size_t body_len = std::size_t{n} * res.entry_bytes;
    // Re-take the header and body as one span so the checksum covers them
    // contiguously.
    unsigned char chead[kChunkHeadBytes];
    std::memcpy(chead, tag_p, 4);
    std::memcpy(chead + 4, rest, kChunkHeadBytes - 4);
    const unsigned char *entries = r.take(body_len + 8, w);
    if (entries == nullptr) {
      w.fail(Errc::corrupt, "truncated: chunk " + std::to_string(res.chunks) + " at byte " +
                                std::to_string(at) + " needs " +
                                std::to_string(kChunkHeadBytes + body_len + 8) +
                                " bytes, the file ends after " + std::to_string(size - at));
    }
    XXH3_state_t cs;
    XXH3_64bits_reset(&cs);
    XXH3_64bits_update(&cs, chead, kChunkHeadBytes);
    XXH3_64bits_update(&cs, entries, body_len);
    const std::uint64_t computed = XXH3_64bits_digest(&cs);
    const std::uint64_t stored = get64(entries + body_len);
    if (stored != computed) {
      w.fail(Errc::corrupt, "chunk " + std::to_string(res.chunks) + " (entries " +
                                std::to_string(res.entries) + ".." +
                                std::to_string(res.entries + n - 1) + ") at byte " +
                                std::to_string(at) + ": checksum mismatch (stored " + hex(stored) +
                                ", computed " + hex(computed) + ")");
    }
    if (index != res.chunks) {
      w.fail(Errc::corrupt, "chunk at byte " + std::to_string(at) + " is numbered " +
                                std::to_string(index) + ", expected " + std::to_string(res.chunks) +
                                " (chunks missing or reordered)");
    }
    XXH3_64bits_update(&file_hash, chead, kChunkHeadBytes);
    XXH3_64bits_update(&file_hash, entries, body_len + 8);
    if (fn) fn(entries, n);
    res.entries += n;
    ++res.chunks;
    report(phase, r.offset(), size);
  }
}

struct JsonSnapshot {
  SnapshotHeader header;
  std::vector<JsonEntry> entries;
};

/// Rejects JSON nested deeper than a snapshot ever is, before the (recursive) parser sees it:
/// a million '[' would overflow its stack. Brackets inside strings do not count.
void check_json_depth(const std::string &text, const Where &w) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        w.fail(Errc::corrupt, "JSON nested more than " + std::to_string(kMaxJsonDepth) +
                                  " deep at byte " + std::to_string(i) +
                                  "; a shmap snapshot nests 3 deep: not a shmap snapshot");
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

[[noreturn]] void fail_json_too_big(std::uint64_t size, const Where &w) {
  w.fail(Errc::corrupt, "JSON snapshot of " + std::to_string(size) +
                            " bytes or more: the JSON form is limited to " +
                            std::to_string(kMaxJsonBytes >> 20) +
                            " MiB (it is parsed in memory); use the binary form for big maps");
}

/// "line L, column C (byte N)" of a byte offset into text, for JSON messages.
std::string json_position(const std::string &text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1, col = 1;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(col) + " (byte " +
         std::to_string(offset) + ")";
}

/// Reads a JSON document's members, naming the member and where it is in every message.
class JsonFields {
 public:
  JsonFields(const Where &w, const char *expected) : w_(w), expected_(expected) {}
  [[noreturn]] void bad(const std::string &what) const {
    w_.fail(Errc::corrupt, "JSON snapshot: " + what + " (expected " + expected_ + ")");
  }
  /// An integer member from 0 to max; false when absent.
  bool u64(const rapidjson::Value &obj, const char *field, const std::string &where,
           std::uint64_t *out, std::uint64_t max) const {
    const auto it = obj.FindMember(field);
    if (it == obj.MemberEnd()) return false;
    if (!it->value.IsUint64() || it->value.GetUint64() > max) {
      bad(where + ": \"" + field + "\" is not an integer from 0 to " + std::to_string(max));
    }
    *out = it->value.GetUint64();
    return true;
  }
  template <class T>
  bool u32(const rapidjson::Value &obj, const char *field, const std::string &where, T *out) const {
    std::uint64_t v = *out;
    const bool found = u64(obj, field, where, &v, UINT32_MAX);
    *out = static_cast<T>(v);
    return found;
  }
  /// A string member; false when absent.
  bool str(const rapidjson::Value &obj, const char *field, const std::string &where,
           std::string *out) const {
    const auto it = obj.FindMember(field);
    if (it == obj.MemberEnd()) return false;
    if (!it->value.IsString()) bad(where + ": \"" + field + "\" is not a string");
    out->assign(it->value.GetString(), it->value.GetStringLength());
    return true;
  }
  /// Fails unless every member of obj is one of `known`.
  void only(const rapidjson::Value &obj, std::initializer_list<std::string_view> known,
            const std::string &where) const {
    for (auto m = obj.MemberBegin(); m != obj.MemberEnd(); ++m) {
      const std::string_view n(m->name.GetString(), m->name.GetStringLength());
      if (std::find(known.begin(), known.end(), n) == known.end()) {
        bad("unknown member \"" + std::string(n) + "\" " + where);
      }
    }
  }

 private:
  const Where &w_;
  const char *expected_;
};

/// A JSON snapshot parsed, with its preamble and header read: what every version's reader
/// starts from. Version 1 when the file has no "snapshot" preamble (the minimal form).
struct JsonDocument {
  rapidjson::Document doc;
  JsonPreamble pre;  // content_xxh3 as stored; empty: none
  std::uint32_t version = kSnapshotVersion;
  bool has_header = false;
  SnapshotHeader header;
};

/// Reads the JSON form with RapidJSON's DOM (iterative parser, exact 64-bit integers) and checks
/// every member's type itself, so a bad file is reported with a position (a syntax error) or
/// a member's name, never with a parser assertion.
std::unique_ptr<JsonDocument> read_json(int fd, std::uint64_t size, const Where &w,
                                        const JsonFields &f) {
  // Bounded before anything is allocated: a 1 TiB sparse file that starts with '{' is refused
  // here, not by std::bad_alloc.
  if (size > kMaxJsonBytes) fail_json_too_big(size, w);
  std::string text(size, '\0');
  std::size_t off = 0;
  while (off < size) {
    const ssize_t n = ::pread(fd, text.data() + off, size - off, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      w.fail_errno(Errc::io_error, "read failed", err);
    }
    if (n == 0) break;
    off += static_cast<std::size_t>(n);
  }
  text.resize(off);
  check_json_depth(text, w);
  auto j = std::make_unique<JsonDocument>();
  rapidjson::Document &d = j->doc;
  d.Parse<rapidjson::kParseFullPrecisionFlag | rapidjson::kParseIterativeFlag>(text.data(),
                                                                               text.size());
  if (d.HasParseError()) {
    w.fail(Errc::corrupt, std::string("JSON does not parse at ") +
                              json_position(text, d.GetErrorOffset()) + ": " +
                              rapidjson::GetParseError_En(d.GetParseError()));
  }
  if (!d.IsObject()) f.bad("the document is not an object");
  f.only(d, {"snapshot", "header", "types", "entries"}, "at the top level");
  if (const auto it = d.FindMember("snapshot"); it != d.MemberEnd()) {
    const rapidjson::Value &p = it->value;
    if (!p.IsObject()) f.bad("\"snapshot\" is not an object");
    JsonPreamble &pre = j->pre;
    pre.magic.clear();
    f.str(p, "magic", "\"snapshot\"", &pre.magic);
    if (pre.magic != kJsonMagic) {
      w.fail(Errc::corrupt, "not a shmap snapshot: JSON \"snapshot.magic\" is \"" + pre.magic +
                                "\", expected \"" + kJsonMagic + "\"");
    }
    std::uint64_t version = 0;
    f.u64(p, "format_version", "\"snapshot\"", &version, UINT32_MAX);
    if (version < kSnapshotVersion || version > kSnapshotVersionStrings) {
      w.fail(Errc::version_mismatch, "JSON format version " + std::to_string(version) +
                                         "; this build reads versions 1 to " +
                                         std::to_string(kSnapshotVersionStrings));
    }
    j->version = static_cast<std::uint32_t>(version);
    f.str(p, "content_xxh3", "\"snapshot\"", &pre.content_xxh3);
    for (auto m = p.MemberBegin(); m != p.MemberEnd(); ++m) {
      const std::string n(m->name.GetString(), m->name.GetStringLength());
      // Strict: a bit flip in the checksum's name must not make the checksum disappear.
      if (n != "magic" && n != "format_version" && n != "content_xxh3") {
        w.fail(Errc::corrupt, "JSON \"snapshot\" has a member this build does not know (\"" + n +
                                  "\"; expected \"magic\", \"format_version\", \"content_xxh3\")");
      }
    }
  }
  if (const auto it = d.FindMember("header"); it != d.MemberEnd()) {
    const rapidjson::Value &hv = it->value;
    if (!hv.IsObject()) f.bad("\"header\" is not an object");
    j->has_header = true;
    SnapshotHeader &h = j->header;
    const std::string where = "\"header\"";
    f.str(hv, "key_type", where, &h.key_type);
    f.str(hv, "value_type", where, &h.value_type);
    f.u64(hv, "entry_count", where, &h.entry_count, UINT64_MAX);
    f.u64(hv, "created_unix_ns", where, &h.created_unix_ns, UINT64_MAX);
    f.u32(hv, "chunk_entries", where, &h.chunk_entries);
    if (const auto p = hv.FindMember("point_in_time"); p != hv.MemberEnd()) {
      if (!p->value.IsBool()) f.bad(where + ": \"point_in_time\" is not true or false");
      h.point_in_time = p->value.GetBool();
    }
    f.str(hv, "source_map", where, &h.source_map);
    f.u32(hv, "source_format_version", where, &h.source_format_version);
    f.u64(hv, "initial_capacity", where, &h.initial_capacity, UINT64_MAX);
    f.u64(hv, "max_handles", where, &h.max_handles, UINT64_MAX);
    f.u64(hv, "mode", where, &h.mode, UINT64_MAX);
    f.u64(hv, "max_bytes", where, &h.max_bytes, UINT64_MAX);
  }
  const auto entries = d.FindMember("entries");
  if (entries == d.MemberEnd()) f.bad("no \"entries\" member");
  if (!entries->value.IsArray()) f.bad("\"entries\" is not an array");
  return j;
}

/// A content checksum stored in a JSON file, checked against the one computed from what the
/// load would apply.
void check_json_checksum(const JsonPreamble &pre, std::uint64_t computed, const Where &w) {
  if (!pre.content_xxh3.empty() && pre.content_xxh3 != hex(computed)) {
    w.fail(Errc::corrupt, "JSON content checksum mismatch (stored \"" + pre.content_xxh3 +
                              "\", computed " + hex(computed) +
                              "): the header or an entry was changed; after editing by hand, "
                              "delete \"content_xxh3\" to load the file unchecked");
  }
}

/// The uint64 map's JSON form (version 1). The minimal form
/// {"entries": [{"key": K, "value": V}, ...]} loads too (no "snapshot" preamble, no "header":
/// not integrity-checked, default creation options).
JsonSnapshot parse_json(int fd, std::uint64_t size, const Where &w) {
  const JsonFields f(w,
                     "{\"entries\": [{\"key\": K, \"value\": V}, ...]}, optionally with the "
                     "\"snapshot\" and \"header\" that dump writes");
  const auto j = read_json(fd, size, w, f);
  if (j->version != kSnapshotVersion) {
    w.fail(Errc::layout_mismatch,
           "holds a typed map's or a string map's entries (JSON format version " +
               std::to_string(j->version) +
               "), which a uint64 map cannot take; load it with shmap::DynamicMap::load or "
               "'shmap load FILE NAME'");
  }
  if (j->doc.HasMember("types")) f.bad("\"types\" in a version 1 file (a uint64 map's)");
  JsonSnapshot s;
  s.header = j->header;
  const rapidjson::Value &entries = j->doc["entries"];
  s.entries.reserve(entries.Size());
  std::size_t index = 0;
  for (const rapidjson::Value &e : entries.GetArray()) {
    const std::string where = "entry " + std::to_string(index);
    if (!e.IsObject()) f.bad(where + " is not an object");
    JsonEntry je;
    if (!f.u64(e, "key", where, &je.key, UINT64_MAX)) f.bad(where + " has no \"key\"");
    if (!f.u64(e, "value", where, &je.value, UINT64_MAX)) f.bad(where + " has no \"value\"");
    if (e.MemberCount() != 2) f.bad(where + " has members besides \"key\" and \"value\"");
    s.entries.push_back(je);
    ++index;
  }
  if (!j->has_header) s.header.entry_count = s.entries.size();
  if (s.header.key_type != "u64" || s.header.value_type != "u64") {
    w.fail(Errc::version_mismatch, "holds " + s.header.key_type + " -> " + s.header.value_type +
                                       " entries; this build stores u64 -> u64");
  }
  check_json_checksum(j->pre, json_content_xxh3(s.header, s.entries), w);
  if (s.header.entry_count != s.entries.size()) {
    w.fail(Errc::corrupt, "JSON header says " + std::to_string(s.header.entry_count) +
                              " entries, \"entries\" holds " + std::to_string(s.entries.size()));
  }
  return s;
}

/// An opened, verified snapshot: `feed` delivers its entries (again verified,
/// for binary).
struct Source {
  std::uint64_t entries = 0;
  bool feed_reports = false;  // feed reports its own progress (a binary re-read: "load")
  std::function<void(const std::function<void(std::uint64_t, std::uint64_t)> &)> feed;
};

std::string shm_path(const std::string &name) { return "/dev/shm/" + name; }

/// Removes the staging segments of create-mode loads whose process is gone.
void remove_dead_staging_segments() {
  DIR *d = ::opendir("/dev/shm");
  if (d == nullptr) return;
  while (const dirent *e = ::readdir(d)) {
    const auto pid = staging_segment_owner(e->d_name);
    if (pid && *pid != ::getpid() && !process_exists(*pid)) ::unlinkat(dirfd(d), e->d_name, 0);
  }
  ::closedir(d);
}

/// Opens the snapshot to read. Only a regular file is opened for reading: the type is checked
/// before the open (a FIFO would block it until a writer came, a device could do anything),
/// and again on the descriptor (opened O_NONBLOCK, in case the path changed in between).
/// Standard input, copied into an anonymous file (O_TMPFILE in $TMPDIR or /tmp, else a memfd):
/// load reads a snapshot twice (verify, then build), a pipe can be read once. The copy grows
/// with what is really read, 1 MiB at a time, never from a length the input declares; it has no
/// name, so an interrupted load leaves nothing. A JSON input stops at the JSON size limit.
Fd spool_stdin(const Where &w, std::uint64_t *size) {
  const char *tmpdir = std::getenv("TMPDIR");
  Fd fd(::open(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp",
               O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd.get() < 0) fd = Fd(::memfd_create("shmap-load-stdin", MFD_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    w.fail_errno(errc_of(err), "cannot make a temporary file to hold standard input", err);
  }
  std::vector<char> buf(kIoBytes);
  std::uint64_t total = 0;
  char first = 0;
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {  // a non-blocking pipe
        pollfd p{STDIN_FILENO, POLLIN, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      const int err = errno;
      w.fail_errno(Errc::io_error, "cannot read standard input", err);
    }
    if (n == 0) break;
    for (ssize_t i = 0; i < n && first == 0; ++i) {
      if (buf[i] != ' ' && buf[i] != '\n' && buf[i] != '\r' && buf[i] != '\t') first = buf[i];
    }
    total += static_cast<std::uint64_t>(n);
    if (first == '{' && total > kMaxJsonBytes) fail_json_too_big(total, w);
    report("read", total, 0);
    for (ssize_t off = 0; off < n;) {
      const ssize_t m = ::write(fd.get(), buf.data() + off, static_cast<std::size_t>(n - off));
      if (m < 0 && errno == EINTR) continue;
      if (m < 0) {
        const int err = errno;
        w.fail_errno(errc_of(err), "cannot hold standard input in a temporary file", err);
      }
      off += m;
    }
  }
  *size = total;
  return fd;
}

Fd open_input(const Where &w, std::uint64_t *size) {
  if (w.path == "-") return spool_stdin(w, size);
  struct stat st {};
  if (::stat(w.path.c_str(), &st) != 0) {
    const int err = errno;
    w.fail_errno(errc_of(err), "cannot open", err);
  }
  auto refuse = [&](mode_t m) {
    w.fail(Errc::corrupt, "is " + kind_of(m) +
                              ", not a snapshot file; to read a snapshot from a pipe, give '-' "
                              "and send it to standard input");
  };
  if (!S_ISREG(st.st_mode)) refuse(st.st_mode);
  Fd fd(::open(w.path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    w.fail_errno(errc_of(err), "cannot open", err);
  }
  if (::fstat(fd.get(), &st) != 0) {
    const int err = errno;
    w.fail_errno(Errc::io_error, "cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) refuse(st.st_mode);
  *size = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

/// Only shmap::Error leaves the API: anything else thrown below (std::bad_alloc from a
/// container, a std::system_error from the standard library) becomes one that names the map
/// and the file.
template <class F>
auto only_shmap_errors(const Where &w, F &&f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error &) {
    throw;
  } catch (const std::bad_alloc &) {
    w.fail(Errc::out_of_space, "out of memory (std::bad_alloc); free memory and retry");
  } catch (const std::exception &e) {
    w.fail(Errc::io_error, std::string("unexpected failure: ") + e.what());
  }
}

Map load_impl(const std::string &path, const std::string &name, const LoadOptions &options,
              const Where &w);
Map load_from(int fd, std::uint64_t size, const std::string &name, const LoadOptions &options,
              const Where &w);

}  // namespace
}  // namespace detail

void Map::dump(const std::string &path, const DumpOptions &options) const {
  const detail::Where w{name(), path};
  detail::only_shmap_errors(w, [&] {
    if (path.empty()) w.fail(Errc::invalid_argument, "empty file name");
    if (options.point_in_time && read_only()) {
      w.fail(Errc::permission_denied,
             "a point-in-time dump holds writers back, which a read-only attachment may not do; "
             "attach read-write, or dump without --point-in-time");
    }
    if (options.json) {
      detail::dump_json(*this, w, options.point_in_time);
    } else {
      detail::dump_binary(*this, w, options.point_in_time);
    }
  });
}

Map Map::load(const std::string &path, const std::string &name, const LoadOptions &options) {
  const detail::Where w{name, path};
  return detail::only_shmap_errors(w, [&] { return detail::load_impl(path, name, options, w); });
}

namespace detail {
namespace {

/// The options of the map a create-mode load makes: each override given, else the snapshot's
/// recorded value when it is one a map can have, else the default (a JSON file without a
/// header, or a damaged value in an unchecked one).
Options creation_options(const SnapshotHeader &h, const CreationOverrides &o) {
  Options d;
  Options r;
  const bool cap_ok = h.initial_capacity >= 1 && h.initial_capacity <= (std::uint64_t{1} << 36);
  r.initial_capacity =
      o.initial_capacity.value_or(cap_ok ? h.initial_capacity : d.initial_capacity);
  const bool handles_ok = h.max_handles >= 1 && h.max_handles <= 4095;
  r.max_handles = o.max_handles.value_or(handles_ok ? h.max_handles : d.max_handles);
  r.mode = o.mode.value_or(h.mode != 0 && h.mode <= 0777 ? static_cast<unsigned>(h.mode) : d.mode);
  const bool bytes_ok =
      h.max_bytes >= (std::uint64_t{1} << 20) && h.max_bytes <= (std::uint64_t{1} << 46);
  r.max_bytes = o.max_bytes.value_or(bytes_ok ? h.max_bytes : d.max_bytes);
  return r;
}

/// A create-mode load: build(tmp) creates and fills a map under a staging name nobody else
/// uses; it is renamed to `name` only if that name is still free (RENAME_NOREPLACE), so a map
/// appears under `name` complete or not at all. `taken` says what to do when it is not free.
void build_staged(const std::string &name, const std::string &path, const std::string &taken,
                  const std::function<void(const std::string &tmp)> &build) {
  if (::access(shm_path(name).c_str(), F_OK) == 0) {
    fail(Errc::already_exists, name, "a map of that name exists; " + taken);
  }
  remove_dead_staging_segments();
  static std::atomic<unsigned> counter{0};
  const std::string tmp = ".shmap-load-" + std::to_string(::getpid()) + "-" +
                          std::to_string(counter.fetch_add(1, std::memory_order_relaxed)) + "-" +
                          hex(XXH3_64bits(name.data(), name.size())).substr(2);
  struct TmpGuard {
    const std::string &tmp;
    bool armed = true;
    ~TmpGuard() {
      if (armed) Map::remove(tmp);
    }
  } guard{tmp};
  // Removed by the CLI's signal handlers if the load is interrupted; the next load removes it
  // if the process is killed (its pid is in the name).
  TempRegistration registration(shm_path(tmp));
  build(tmp);  // (its map is closed again before the rename)
  if (::renameat2(AT_FDCWD, shm_path(tmp).c_str(), AT_FDCWD, shm_path(name).c_str(),
                  RENAME_NOREPLACE) != 0) {
    const int err = errno;
    if (err == EEXIST) {
      fail(Errc::already_exists, name,
           "a map of that name appeared while loading '" + path + "'; nothing was changed");
    }
    fail_errno(errc_of(err), name, "cannot rename the loaded segment into place", err);
  }
  guard.armed = false;
}

Map load_impl(const std::string &path, const std::string &name, const LoadOptions &options,
              const Where &w) {
  validate_name(name);
  if (path.empty()) w.fail(Errc::invalid_argument, "empty file name");
  std::uint64_t size = 0;
  Fd fd = open_input(w, &size);
  return load_from(fd.get(), size, name, options, w);
}

/// Map::load of an opened input (a file, or standard input's copy).
Map load_from(int fd, std::uint64_t size, const std::string &name, const LoadOptions &options,
              const Where &w) {
  if (size == 0) w.fail(Errc::corrupt, "empty file (0 bytes): not a shmap snapshot");

  // Detect the form: the binary form starts with its magic, the JSON form with
  // '{'.
  char first = 0;
  {
    char probe[64];
    const ssize_t n = ::pread(fd, probe, sizeof probe, 0);
    for (ssize_t i = 0; i < n; ++i) {
      if (probe[i] != ' ' && probe[i] != '\n' && probe[i] != '\r' && probe[i] != '\t') {
        first = probe[i];
        break;
      }
    }
  }

  // Pass 1: verify everything before touching any map.
  Source src;
  SnapshotHeader recorded;  // the source map's creation options (0: not recorded)
  auto json = std::make_shared<JsonSnapshot>();
  if (first == '{' || first == '[') {  // JSON (an array is reported as not the right JSON)
    report("verify", 0, size);         // parsed and checked in memory: no finer progress
    *json = parse_json(fd, size, w);
    report("verify", size, size);
    recorded = json->header;
    src.entries = json->entries.size();
    src.feed = [json](const std::function<void(std::uint64_t, std::uint64_t)> &put) {
      for (const auto &e : json->entries) put(e.key, e.value);
    };
  } else {
    const ScanResult res = scan_binary(fd, size, w, "verify", nullptr);
    if (res.version != kSnapshotVersion) {
      w.fail(Errc::layout_mismatch,
             "holds a typed map's entries (" + res.header.key_type + " -> " +
                 res.header.value_type +
                 "), which a uint64 map cannot take; load it with shmap::DynamicMap::load or "
                 "'shmap load FILE NAME'");
    }
    recorded = res.header;
    src.entries = res.entries;
    src.feed_reports = true;
    const int raw_fd = fd;
    src.feed = [raw_fd, size, &w](const std::function<void(std::uint64_t, std::uint64_t)> &put) {
      scan_binary(raw_fd, size, w, "load", [&](const unsigned char *e, std::uint32_t n) {
        for (std::uint32_t i = 0; i < n; ++i, e += 16) put(get64(e), get64(e + 8));
      });
    };
  }

  // Pass 2: build off to the side and publish in one step. `keep` entries (the map's own, for
  // a merge) go in first, so that the file's value of a key wins.
  auto build_into = [&](const Map &m, std::uint64_t keep, const Map *keep_from) {
    const MapImpl &impl = m.impl();
    report("allocate", 0, 0);
    const std::uint64_t table = impl.build_table(keep + src.entries);
    try {
      std::uint64_t done = 0;
      // Batches: the core prefetches a batch's buckets before filling them.
      std::pair<std::uint64_t, std::uint64_t> batch[64];
      std::size_t in_batch = 0;
      auto put = [&](std::uint64_t k, std::uint64_t v) {
        batch[in_batch++] = {k, v};
        if (in_batch == 64) {
          impl.bulk_put_many(table, batch, in_batch);
          in_batch = 0;
        }
      };
      if (keep_from != nullptr) {
        // The walk runs inside the map's read protocol: nothing may throw out of it.
        std::exception_ptr failure;
        keep_from->for_each([&](std::uint64_t k, std::uint64_t v) {
          if (failure) return;
          try {
            put(k, v);
          } catch (...) {
            failure = std::current_exception();
          }
        });
        if (failure) std::rethrow_exception(failure);
      }
      src.feed([&](std::uint64_t k, std::uint64_t v) {
        put(k, v);
        if ((++done & 0xffff) == 0 && !src.feed_reports) report("build", done, src.entries);
      });
      impl.bulk_put_many(table, batch, in_batch);
      // A merge holds writers for its whole length; if the hold was broken (its lease ran
      // out), writes made since then are in the old table only: publishing would lose them.
      if (keep_from != nullptr && !impl.still_holding_writers()) {
        w.fail(Errc::timeout,
               "the merge outlived its hold on writers; nothing was changed; retry when fewer "
               "writers wait, or merge a smaller file");
      }
    } catch (...) {
      impl.discard_table(table);
      throw;
    }
    if (!src.feed_reports) report("build", src.entries, src.entries);
    report("publish", 0, 0);
    impl.publish_replace(table);
  };

  switch (options.mode) {
    case LoadOptions::Mode::merge: {
      // All or nothing, like replace: the merged content (the map's entries, then the file's)
      // is built in a table nobody sees and published in one step, with writers held from
      // before the walk until the publish so that none of their writes is lost. Running out
      // of space (build_table) or anything else before the publish leaves the map as it was.
      Map m = Map::open(name);
      // The file is read into memory first: writers are held for memory work only (the walk,
      // the build, the publish), never for file I/O.
      if (src.feed_reports) {
        auto entries = std::make_shared<std::vector<std::pair<std::uint64_t, std::uint64_t>>>();
        entries->reserve(src.entries);
        src.feed([&](std::uint64_t k, std::uint64_t v) { entries->emplace_back(k, v); });
        src.feed = [entries](const std::function<void(std::uint64_t, std::uint64_t)> &put) {
          for (const auto &[k, v] : *entries) put(k, v);
        };
        src.feed_reports = false;
      }
      WriterHold hold(m.impl(), true, table_bytes((m.size() + src.entries) * 2 + 2));
      std::uint64_t current = 0;
      m.for_each([&](std::uint64_t, std::uint64_t) { ++current; });
      build_into(m, current, &m);
      return m;
    }
    case LoadOptions::Mode::replace: {
      Map m = Map::open(name);
      build_into(m, 0, nullptr);
      return m;
    }
    case LoadOptions::Mode::create:
      break;
  }

  // Mode::create: built under a staging name, renamed into place complete.
  build_staged(name, w.path, "load with --replace or --merge, or remove it first",
               [&](const std::string &tmp) {
                 Map staging = Map::create(tmp, creation_options(recorded, options.options));
                 if (src.entries > 0) build_into(staging, 0, nullptr);
               });
  return Map::open(name);
}

}  // namespace

// ---- typed maps (snapshot version 2) -----------------------------------------------------------

/// The uint64 map under a DynamicMap (a friend of it): the snapshot code walks and holds it.
/// (And the core of a StringMap, which it walks with the StringMap's own visit.)
struct SnapshotAccess {
  static const Map &map(const DynamicMap &d) { return d.map_; }
  static const DynamicMap &core(const StringMap &s) { return s.core_; }
  static const DynamicMap &core(const StringMultimap &s) { return s.core_; }
  static void visit(const StringMap &s, void (*fn)(void *, std::string_view, std::string_view),
                    void *ctx) {
    s.visit(fn, ctx);
  }
  /// The string-keyed map under a DynamicMap whose types were checked (a loaded snapshot's).
  static StringMap strings(DynamicMap d) { return StringMap(StringMap::Checked{}, std::move(d)); }
  static StringMultimap multimap(DynamicMap d) { return StringMultimap(std::move(d)); }
  /// A typed map whose segment records exactly `types` (a loaded snapshot's).
  static DynamicMap create(const std::string &name, const Options &o, const SegmentTypes &types) {
    return DynamicMap::create_recorded(name, o, types);
  }
  /// Sets the capacity below which the staged map never shrinks nor fits (the header's
  /// initial_capacity) to `initial_capacity`'s, once it is filled: a load sizes its first table
  /// for the snapshot's entries, but the map keeps the creator's floor, so that compact() can
  /// fit it later. Only on a map still under its staging name (nobody else attached).
  static void set_floor(const DynamicMap &d, std::size_t initial_capacity) {
    d.map_.impl().header().initial_capacity = detail::next_pow2_capacity(initial_capacity);
  }
};

namespace {

/// The types exactly as the segment records them (with the whole names' hashes).
TypedFields typed_fields(const DynamicMap &d) {
  const SegmentTypes &r = SnapshotAccess::map(d).impl().types();
  TypedFields t;
  t.key_size = r.key.size;
  t.key_align = r.key.align;
  t.key_kind = r.key.kind;
  t.key_name.assign(r.key.name, strnlen(r.key.name, sizeof(r.key.name)));
  t.key_hash = r.key.name_hash;
  t.value_size = r.value.size;
  t.value_align = r.value.align;
  t.value_kind = r.value.kind;
  t.value_name.assign(r.value.name, strnlen(r.value.name, sizeof(r.value.name)));
  t.value_hash = r.value.name_hash;
  return t;
}

/// A typed map's binary snapshot: version 2, the layout of version 1 with entries of
/// 8 + value_size bytes (the key word, little-endian, then the value's bytes as the map holds
/// them) and both types in the header.
void dump_typed(const DynamicMap &d, const Where &w, bool point_in_time) {
  const Map &m = SnapshotAccess::map(d);
  AtomicFile out(w, m.stats().options.mode);
  const std::size_t vbytes = d.value_type().size;
  const std::size_t ebytes = 8 + vbytes;
  // About 64 KiB of entries per chunk, as version 1.
  const auto per_chunk = static_cast<std::uint32_t>(std::max<std::size_t>(1, (64 << 10) / ebytes));
  std::vector<unsigned char> copy;  // point in time: the entries, copied under the hold
  std::uint64_t hint = 0;
  SnapshotHeader h;
  auto header = [&](bool pit) {
    h = header_for(m, pit, hint);
    h.key_type = d.key_type().name;
    h.value_type = d.value_type().name;
    h.chunk_entries = per_chunk;
  };
  if (point_in_time) {
    WriterHold hold(m.impl(), true);
    hint = m.size();
    header(true);
    report("dump", 0, hint);
    copy.reserve((hint + hint / 8 + 16) * ebytes);
    struct Copy {
      std::vector<unsigned char> &to;
      std::size_t vbytes;
    } c{copy, vbytes};
    // (A failed allocation here throws out of the walk: only a copy into memory, under the
    // hold, nothing half-written; the hold is released by its guard.)
    d.for_each(
        [](void *p, std::uint64_t k, const void *v) {
          auto &x = *static_cast<Copy *>(p);
          unsigned char key[8];
          put64(key, k);
          x.to.insert(x.to.end(), key, key + 8);
          const auto *b = static_cast<const unsigned char *>(v);
          x.to.insert(x.to.end(), b, b + x.vbytes);
        },
        &c);
    require_hold(m, true);
  } else {
    hint = m.size();
    header(false);
  }
  if (!point_in_time) report("dump", 0, hint);
  const TypedFields types = typed_fields(d);
  BinaryWriter bw(out, kSnapshotVersionTyped, header_body(h, &types, kKindMap), ebytes, per_chunk,
                  hint);
  auto add = [&](const unsigned char *key8, const void *v) {
    if (bw.failed()) return;
    unsigned char *e = bw.next();
    std::memcpy(e, key8, 8);
    std::memcpy(e + 8, v, vbytes);
    bw.added();
  };
  if (point_in_time) {
    for (std::size_t at = 0; at < copy.size(); at += ebytes) add(&copy[at], &copy[at + 8]);
  } else {
    struct Ctx {
      decltype(add) &f;
    } ctx{add};
    d.for_each(
        [](void *c, std::uint64_t k, const void *v) {
          unsigned char key[8];
          put64(key, k);
          static_cast<Ctx *>(c)->f(key, v);
        },
        &ctx);
  }
  bw.finish();
  report("sync", 0, 0);
  out.commit();
}

/// What an opened input starts like: the version of a binary snapshot (its magic, then the
/// version word), kJsonKind for text that opens with '{', 0 for anything else (too short, bad
/// magic, unreadable: the uint64 map's load says what is wrong).
constexpr std::uint32_t kJsonKind = UINT32_MAX;
std::uint32_t snapshot_kind(int fd) {
  unsigned char lead[256];
  const ssize_t n = ::pread(fd, lead, sizeof lead, 0);
  if (n >= static_cast<ssize_t>(kLeadBytes) && std::memcmp(lead, kMagic, 8) == 0) {
    return get32(lead + 8);
  }
  for (ssize_t i = 0; i < n; ++i) {
    if (lead[i] == '{') return kJsonKind;
    if (lead[i] != ' ' && lead[i] != '\n' && lead[i] != '\r' && lead[i] != '\t') break;
  }
  return 0;
}

// ---- maps with string keys (snapshot version 3) ----------------------------------------------

/// Version 3's entries, {u32 key length, u32 value length, key, value} back to back, as the
/// chunks carry them: bytes in, whole entries out, each checked before it is used.
class EntryStream {
 public:
  /// fixed: every value has this many bytes (a TypedMap<std::string, V>'s), 0: any.
  EntryStream(const Where &w, std::size_t fixed) : w_(w), fixed_(fixed) {}
  /// Takes the next n bytes of the stream; emit(key, value) for each entry they complete.
  template <class F>
  void feed(const unsigned char *p, std::size_t n, F &&emit) {
    buf_.append(reinterpret_cast<const char *>(p), n);
    for (;;) {
      const std::size_t have = buf_.size() - at_;
      if (have < 8) break;
      const auto *e = reinterpret_cast<const unsigned char *>(buf_.data() + at_);
      const std::uint64_t klen = get32(e), vlen = get32(e + 4);
      if (klen + vlen > kMaxStringEntryBytes || (fixed_ != 0 && vlen != fixed_)) {
        w_.fail(
            Errc::corrupt,
            "entry " + std::to_string(entries_) + " at byte " + std::to_string(offset_) +
                " of the entry stream has a key of " + std::to_string(klen) +
                " bytes and a value of " + std::to_string(vlen) +
                (fixed_ != 0 ? " (this map's values have " + std::to_string(fixed_) + ")"
                             : " (together at most " + std::to_string(kMaxStringEntryBytes) + ")"));
      }
      if (have < 8 + klen + vlen) break;
      const std::string_view all(buf_);
      emit(all.substr(at_ + 8, klen), all.substr(at_ + 8 + klen, vlen));
      min_value_ = std::min<std::uint64_t>(min_value_, vlen);
      min_key_ = std::min<std::uint64_t>(min_key_, klen);
      max_key_ = std::max<std::uint64_t>(max_key_, klen);
      max_value_ = std::max<std::uint64_t>(max_value_, vlen);
      at_ += 8 + klen + vlen;
      offset_ += 8 + klen + vlen;
      ++entries_;
    }
    // Keep only the unfinished entry's bytes.
    if (at_ > (64 << 10) || at_ == buf_.size()) {
      buf_.erase(0, at_);
      at_ = 0;
    }
  }
  /// The stream ended: no entry may be left half.
  void finish() const {
    if (buf_.size() != at_) {
      w_.fail(Errc::corrupt, "the entry stream ends inside entry " + std::to_string(entries_) +
                                 " (at byte " + std::to_string(offset_) + ")");
    }
  }
  std::uint64_t entries() const { return entries_; }
  /// Whether every value had exactly `bytes` bytes.
  bool values_all(std::uint64_t bytes) const {
    return entries_ == 0 || (min_value_ == bytes && max_value_ == bytes);
  }
  /// Whether every key had exactly `bytes` bytes.
  bool keys_all(std::uint64_t bytes) const {
    return entries_ == 0 || (min_key_ == bytes && max_key_ == bytes);
  }

 private:
  const Where &w_;
  std::size_t fixed_;
  std::string buf_;
  std::size_t at_ = 0;
  std::uint64_t offset_ = 0, entries_ = 0;
  std::uint64_t min_value_ = UINT64_MAX, max_value_ = 0;
  std::uint64_t min_key_ = UINT64_MAX, max_key_ = 0;
};

void append_entry(std::string &to, std::string_view k, std::string_view v) {
  unsigned char lens[8];
  put32(lens, static_cast<std::uint32_t>(k.size()));
  put32(lens + 4, static_cast<std::uint32_t>(v.size()));
  to.append(reinterpret_cast<const char *>(lens), 8);
  to.append(k);
  to.append(v);
}

/// Every entry of a map of strings (a multimap's values in their order), weakly consistent.
template <class F>
void walk_strings(const DynamicMap &d, F &&f) {
  visit_entries(
      SnapshotAccess::map(d),
      [](void *c, std::string_view k, std::string_view v) {
        (*static_cast<std::remove_reference_t<F> *>(c))(k, v);
      },
      &f);
}

/// A map of strings' binary snapshot (version 3); `size`: its entries now (a hint).
void dump_strings(const DynamicMap &d, std::size_t size, const Where &w, bool point_in_time) {
  const Map &m = SnapshotAccess::map(d);
  AtomicFile out(w, m.stats().options.mode);
  std::string copy;  // point in time: the entry stream, copied under the hold
  std::uint64_t hint = 0;
  SnapshotHeader h;
  auto header = [&](bool pit) {
    h = header_for(m, pit, hint);
    h.key_type = d.key_type().name;
    h.value_type = d.value_type().name;
    h.chunk_entries = kStringChunkBytes;
  };
  if (point_in_time) {
    WriterHold hold(m.impl(), true);
    hint = size;
    header(true);
    report("dump", 0, hint);
    std::uint64_t n = 0;
    walk_strings(d, [&](std::string_view k, std::string_view v) {
      append_entry(copy, k, v);
      ++n;
    });
    require_hold(m, true);
    h.entry_count = n;
  } else {
    hint = size;
    header(false);
  }
  if (!point_in_time) report("dump", 0, hint);
  const TypedFields types = typed_fields(d);
  BinaryWriter bw(out, kSnapshotVersionStrings,
                  header_body(h, &types, d.is_multimap() ? kKindMultimap : kKindMap), 1,
                  kStringChunkBytes, copy.size());
  auto add = [&](std::string_view bytes) {
    for (const char c : bytes) {
      if (bw.failed()) return;
      *bw.next() = static_cast<unsigned char>(c);
      bw.added();
    }
  };
  if (point_in_time) {
    add(copy);
  } else {
    std::string one;
    walk_strings(d, [&](std::string_view k, std::string_view v) {
      one.clear();
      append_entry(one, k, v);
      add(one);
    });
  }
  bw.finish();
  report("sync", 0, 0);
  out.commit();
}

/// Refuses what a load of a typed map's or a string map's snapshot does not do yet, and types
/// other than those the caller's map wants.
void check_typed_load(const std::string &name, const LoadOptions &options, const Where &w,
                      const SegmentTypes &types, const DynamicMap::Layout *expect) {
  if (options.mode != LoadOptions::Mode::create) {
    w.fail(Errc::invalid_argument,
           "--replace and --merge of a typed map's or a string map's snapshot are not "
           "supported yet; load it into a new map (remove the old one first, or load under "
           "another name)");
  }
  if (expect != nullptr && !same_types(types, layout_types(name, *expect))) {
    w.fail(Errc::layout_mismatch, "the snapshot holds " + describe_types(types) +
                                      ", the map wanted holds " +
                                      describe_types(layout_types(name, *expect)));
  }
}

/// Fills a new map of strings, made with `types` under the staging name `tmp`: feed(put) calls
/// put(key, value) for every entry, a multimap's values in their order.
void fill_strings(
    const std::string &tmp, const Options &o, const SegmentTypes &types,
    const std::function<void(const std::function<void(std::string_view, std::string_view)> &)>
        &feed,
    std::size_t floor) {
  DynamicMap core = SnapshotAccess::create(tmp, o, types);
  if (types.kind == kKindMultimap) {
    StringMultimap multi = SnapshotAccess::multimap(std::move(core));
    feed([&](std::string_view k, std::string_view v) { multi.insert(k, v); });
    SnapshotAccess::set_floor(SnapshotAccess::core(multi), floor);
  } else {
    StringMap map = SnapshotAccess::strings(std::move(core));
    feed([&](std::string_view k, std::string_view v) { map.insert_or_assign(k, v); });
    SnapshotAccess::set_floor(SnapshotAccess::core(map), floor);
  }
}

void load_strings(int fd, std::uint64_t size, const std::string &name, const LoadOptions &options,
                  const Where &w, const DynamicMap::Layout *expect) {
  const auto strings = static_cast<std::uint32_t>(TypeInfo::Kind::byte_string);
  // The verify pass checks every entry too, before anything is made.
  EntryStream verify(w, 0);
  const ScanResult res =
      scan_binary(fd, size, w, "verify", [&](const unsigned char *e, std::uint32_t n) {
        verify.feed(e, n, [](std::string_view, std::string_view) {});
      });
  verify.finish();
  SegmentTypes types = res.types.records();
  types.kind = res.kind;
  const std::size_t fixed = res.types.value_kind == strings ? 0 : res.types.value_size;
  if (fixed != 0 && !verify.values_all(fixed)) {
    w.fail(Errc::corrupt,
           "holds values of other sizes than its value type's " + std::to_string(fixed) + " bytes");
  }
  if (res.types.key_kind != strings && !verify.keys_all(res.types.key_size)) {
    w.fail(Errc::corrupt, "holds keys of other sizes than its key type's " +
                              std::to_string(res.types.key_size) + " bytes");
  }
  const std::uint64_t entries = verify.entries();
  check_typed_load(name, options, w, types, expect);
  build_staged(name, w.path, "remove it first (a snapshot loads into a new map)",
               [&](const std::string &tmp) {
                 Options o = creation_options(res.header, options.options);
                 const std::size_t floor = o.initial_capacity;
                 o.initial_capacity = std::max<std::size_t>(o.initial_capacity, entries * 2 + 2);
                 fill_strings(
                     tmp, o, types,
                     [&](const auto &put) {
                       EntryStream feed(w, fixed);
                       // The second pass verifies again as it feeds (a file changed in between
                       // fails). A multimap's values come in their order, and are added in it.
                       scan_binary(
                           fd, size, w, "load",
                           [&](const unsigned char *e, std::uint32_t n) { feed.feed(e, n, put); });
                       feed.finish();
                     },
                     floor);
               });
}

void load_typed(int fd, std::uint64_t size, const std::string &name, const LoadOptions &options,
                const Where &w, const DynamicMap::Layout *expect) {
  const ScanResult res = scan_binary(fd, size, w, "verify", nullptr);
  // The segment will record the types exactly as the snapshot does (names and their hashes).
  const SegmentTypes types = res.types.records();
  check_typed_load(name, options, w, types, expect);
  build_staged(name, w.path, "remove it first (a typed snapshot loads into a new map)",
               [&](const std::string &tmp) {
                 Options o = creation_options(res.header, options.options);
                 const std::size_t floor = o.initial_capacity;
                 o.initial_capacity =
                     std::max<std::size_t>(o.initial_capacity, res.entries * 2 + 2);
                 DynamicMap staging = SnapshotAccess::create(tmp, o, types);
                 const std::size_t ebytes = res.entry_bytes;
                 // The second pass verifies again as it feeds (a file changed in between fails).
                 scan_binary(fd, size, w, "load", [&](const unsigned char *e, std::uint32_t n) {
                   for (std::uint32_t i = 0; i < n; ++i, e += ebytes) {
                     staging.insert_or_assign(get64(e), e + 8);
                   }
                 });
                 SnapshotAccess::set_floor(staging, floor);
               });
}

// ---- the JSON form of typed maps and maps of strings (versions 2 and 3) ------------------------

/// A key's or a value's type as the JSON form writes it: its kind and size (0: a string of any
/// length) and name.
struct FieldType {
  std::uint32_t kind = 0;
  std::uint32_t size = 0;
  std::string name;
};

bool valid_utf8(std::string_view bytes) {
  const std::string z(bytes);  // NUL-terminated: a sequence cut short at the end fails on it
  rapidjson::StringStream in(z.c_str());
  struct Discard {
    void Put(char) {}
  } out;
  while (in.Tell() < z.size()) {
    if (!rapidjson::UTF8<>::Validate(in, out)) return false;
  }
  return true;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string h;
  h.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    h += kDigits[static_cast<unsigned char>(c) >> 4];
    h += kDigits[static_cast<unsigned char>(c) & 15];
  }
  return h;
}

std::optional<std::string> from_hex(std::string_view h) {
  if (h.size() % 2 != 0) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out(h.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = digit(h[2 * i]), lo = digit(h[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

/// Strict base64 (RFC 4648, padded): cereal's decoder skips what it does not know, so the text
/// is checked here first.
std::optional<std::string> from_base64(const std::string &b) {
  if (b.size() % 4 != 0) return std::nullopt;
  for (std::size_t i = 0; i < b.size(); ++i) {
    const char c = b[i];
    const bool pad_ok = c == '=' && i + 2 >= b.size() && (i + 1 == b.size() || b[i + 1] == '=');
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || pad_ok)) {
      return std::nullopt;
    }
  }
  return cereal::base64::decode(b);
}

bool integer_size(std::uint32_t size) { return size == 1 || size == 2 || size == 4 || size == 8; }

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

/// Writes a key or a value (`name`: "key" or "value") as its type reads best: a string of valid
/// UTF-8 as "name": "text", other bytes as "name_base64"; an integer or a finite floating point
/// number as "name": number; anything else (a struct, a NaN, a key word with bytes beyond its
/// type's) as "name_hex", its bytes in memory order.
void write_field(JsonWriter &out, const std::string &name, const FieldType &t,
                 std::string_view bytes) {
  using Kind = TypeInfo::Kind;
  const auto kind = static_cast<Kind>(t.kind);
  if (kind == Kind::byte_string && t.size == 0) {
    if (valid_utf8(bytes)) {
      out.Key(name.c_str());
      out.String(bytes.data(), static_cast<rapidjson::SizeType>(bytes.size()));
    } else {
      const std::string key = name + "_base64";
      out.Key(key.c_str());
      const std::string b = cereal::base64::encode(
          reinterpret_cast<const unsigned char *>(bytes.data()), bytes.size());
      out.String(b.c_str(), static_cast<rapidjson::SizeType>(b.size()));
    }
    return;
  }
  if (bytes.size() == t.size) {
    unsigned char le[8] = {};
    if ((kind == Kind::unsigned_integer || kind == Kind::signed_integer) && integer_size(t.size)) {
      std::memcpy(le, bytes.data(), t.size);
      std::uint64_t v = get64(le);
      if (kind == Kind::signed_integer && t.size < 8 && (v >> (8 * t.size - 1)) != 0) {
        v |= ~std::uint64_t{0} << (8 * t.size);  // sign-extend
      }
      out.Key(name.c_str());
      if (kind == Kind::unsigned_integer) {
        out.Uint64(v);
      } else {
        out.Int64(static_cast<std::int64_t>(v));
      }
      return;
    }
    if (kind == Kind::floating_point && (t.size == 4 || t.size == 8)) {
      double d = 0;
      if (t.size == 4) {
        float fl = 0;
        std::memcpy(&fl, bytes.data(), 4);
        d = fl;
      } else {
        std::memcpy(&d, bytes.data(), 8);
      }
      if (std::isfinite(d)) {
        out.Key(name.c_str());
        out.Double(d);  // the shortest text that reads back as the same double
        return;
      }
    }
  }
  const std::string key = name + "_hex";
  out.Key(key.c_str());
  const std::string h = to_hex(bytes);
  out.String(h.c_str(), static_cast<rapidjson::SizeType>(h.size()));
}

/// Reads a key or a value written by write_field (any of its three forms, whatever the type:
/// a hand-written file may give a struct as base64). Returns its bytes; the caller checks their
/// number.
std::string read_field(const rapidjson::Value &e, const std::string &name, const FieldType &t,
                       const std::string &where, const JsonFields &f) {
  using Kind = TypeInfo::Kind;
  const auto kind = static_cast<Kind>(t.kind);
  const std::string hex_name = name + "_hex", b64_name = name + "_base64";
  const auto plain = e.FindMember(name.c_str());
  const auto as_hex = e.FindMember(hex_name.c_str());
  const auto as_b64 = e.FindMember(b64_name.c_str());
  const int forms =
      (plain != e.MemberEnd()) + (as_hex != e.MemberEnd()) + (as_b64 != e.MemberEnd());
  if (forms != 1) {
    f.bad(where + (forms == 0 ? " has no " : " has more than one of ") + "\"" + name + "\", \"" +
          hex_name + "\", \"" + b64_name + "\"");
  }
  if (as_hex != e.MemberEnd() || as_b64 != e.MemberEnd()) {
    const bool is_hex = as_hex != e.MemberEnd();
    const rapidjson::Value &v = is_hex ? as_hex->value : as_b64->value;
    const std::string &member = is_hex ? hex_name : b64_name;
    if (!v.IsString()) f.bad(where + ": \"" + member + "\" is not a string");
    const std::string text(v.GetString(), v.GetStringLength());
    std::optional<std::string> bytes = is_hex ? from_hex(text) : from_base64(text);
    if (!bytes) {
      f.bad(where + ": \"" + member + "\" is not " +
            (is_hex ? "hexadecimal (two digits a byte)" : "base64 (RFC 4648, padded)"));
    }
    return std::move(*bytes);
  }
  const rapidjson::Value &v = plain->value;
  const std::string what = where + ": \"" + name + "\" (" + t.name + ")";
  if (kind == Kind::byte_string && t.size == 0) {
    if (!v.IsString()) f.bad(what + " is not a string");
    return std::string(v.GetString(), v.GetStringLength());
  }
  unsigned char le[8] = {};
  if (kind == Kind::unsigned_integer && integer_size(t.size)) {
    const std::uint64_t max = t.size == 8 ? UINT64_MAX : (std::uint64_t{1} << (8 * t.size)) - 1;
    if (!v.IsUint64() || v.GetUint64() > max) {
      f.bad(what + " is not an integer from 0 to " + std::to_string(max));
    }
    put64(le, v.GetUint64());
    return std::string(reinterpret_cast<const char *>(le), t.size);
  }
  if (kind == Kind::signed_integer && integer_size(t.size)) {
    const std::int64_t max =
        t.size == 8 ? INT64_MAX
                    : static_cast<std::int64_t>((std::uint64_t{1} << (8 * t.size - 1)) - 1);
    if (!v.IsInt64() || v.GetInt64() > max || v.GetInt64() < -max - 1) {
      f.bad(what + " is not an integer from " + std::to_string(-max - 1) + " to " +
            std::to_string(max));
    }
    put64(le, static_cast<std::uint64_t>(v.GetInt64()));
    return std::string(reinterpret_cast<const char *>(le), t.size);
  }
  if (kind == Kind::floating_point && (t.size == 4 || t.size == 8)) {
    if (!v.IsNumber()) f.bad(what + " is not a number");
    const double d = v.GetDouble();
    if (t.size == 8) return std::string(reinterpret_cast<const char *>(&d), 8);
    const auto fl = static_cast<float>(d);
    if (!std::isfinite(fl)) f.bad(what + " is out of the range of a 32-bit float");
    return std::string(reinterpret_cast<const char *>(&fl), 4);
  }
  f.bad(what + " is written as \"" + hex_name + "\" (its bytes in hexadecimal): a " +
        std::to_string(t.size) + "-byte " + (kind == Kind::other ? "struct" : "value") +
        " has no plain JSON form");
}

/// The types a version 2 or 3 snapshot records, as the JSON form's "types" member: the binary
/// header's fields by name, and "kind": "multimap" for a multimap (absent: a map).
struct JsonTypes {
  mutable TypedFields types;  // (TypedFields::serialize is not const)
  std::uint64_t kind = kKindMap;
  template <class Archive>
  void save(Archive &ar) const {
    types.serialize(ar);
    if (kind == kKindMultimap) ar(cereal::make_nvp("kind", std::string("multimap")));
  }
};

/// One entry as a typed or string map holds it: version 2, the key word (8 bytes,
/// little-endian) and the value's bytes; version 3, the key's bytes and the value's.
using ByteEntry = std::pair<std::string, std::string>;

/// The content checksum of a version 2 or 3 JSON file: XXH3-64 of the binary form's header body
/// (header, types, kind), then every entry as {u32 key length, u32 value length, key, value}
/// (little-endian), in file order.
std::uint64_t typed_content_xxh3(const std::string &body, const std::vector<ByteEntry> &entries) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, body.data(), body.size());
  for (const auto &[k, v] : entries) {
    unsigned char lens[8];
    put32(lens, static_cast<std::uint32_t>(k.size()));
    put32(lens + 4, static_cast<std::uint32_t>(v.size()));
    XXH3_64bits_update(&st, lens, 8);
    XXH3_64bits_update(&st, k.data(), k.size());
    XXH3_64bits_update(&st, v.data(), v.size());
  }
  return XXH3_64bits_digest(&st);
}

std::pair<FieldType, FieldType> field_types(const TypedFields &t) {
  return {{t.key_kind, t.key_size, t.key_name}, {t.value_kind, t.value_size, t.value_name}};
}

/// The JSON form of a typed map (version 2) or a map of strings (version 3).
void dump_typed_json(const DynamicMap &d, std::size_t size, const Where &w, bool point_in_time) {
  const Map &m = SnapshotAccess::map(d);
  AtomicFile out(w, m.stats().options.mode);  // first: a file that cannot be made fails early
  const bool strings = d.holds_strings();
  const std::uint32_t version = strings ? kSnapshotVersionStrings : kSnapshotVersionTyped;
  const std::uint64_t kind = d.is_multimap() ? kKindMultimap : kKindMap;
  const std::size_t vbytes = d.value_type().size;
  std::vector<ByteEntry> entries;
  SnapshotHeader h;
  {
    WriterHold hold(m.impl(), point_in_time);
    h = header_for(m, point_in_time, size);
    entries.reserve(size);
    report("dump", 0, size);
    // (A failed allocation throws out of the walk: a copy into memory only, nothing written.)
    if (strings) {
      walk_strings(d, [&](std::string_view k, std::string_view v) { entries.emplace_back(k, v); });
    } else {
      struct Copy {
        std::vector<ByteEntry> &to;
        std::size_t vbytes;
      } c{entries, vbytes};
      d.for_each(
          [](void *p, std::uint64_t k, const void *v) {
            auto &x = *static_cast<Copy *>(p);
            unsigned char key[8];
            put64(key, k);
            x.to.emplace_back(std::string(reinterpret_cast<const char *>(key), 8),
                              std::string(static_cast<const char *>(v), x.vbytes));
          },
          &c);
    }
    require_hold(m, point_in_time);
  }
  h.key_type = d.key_type().name;
  h.value_type = d.value_type().name;
  h.entry_count = entries.size();
  h.chunk_entries = 0;
  const TypedFields types = typed_fields(d);
  JsonPreamble pre;
  pre.format_version = version;
  pre.content_xxh3 = hex(typed_content_xxh3(header_body(h, &types, kind), entries));
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(
        os, cereal::JSONOutputArchive::Options(
                324, cereal::JSONOutputArchive::Options::IndentChar::space, 1));
    ar(cereal::make_nvp("snapshot", pre), cereal::make_nvp("header", h),
       cereal::make_nvp("types", JsonTypes{types, kind}));
  }
  // cereal closed the document: reopen it for the entries, one to a line.
  std::string text = os.str();
  text.resize(text.rfind('}'));
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  text += ",\n \"entries\": [";
  const auto [key_t, value_t] = field_types(types);
  rapidjson::StringBuffer line;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    std::string_view k = entries[i].first;
    // A typed map's key word: its type's bytes when the rest are zero (as every TypedMap key).
    if (!strings && k.find_first_not_of('\0', key_t.size) == std::string_view::npos) {
      k = k.substr(0, key_t.size);
    }
    line.Clear();
    JsonWriter jw(line);
    jw.StartObject();
    write_field(jw, "key", key_t, k);
    write_field(jw, "value", value_t, entries[i].second);
    jw.EndObject();
    text += i == 0 ? "\n  " : ",\n  ";
    text.append(line.GetString(), line.GetSize());
    if (text.size() > kMaxJsonBytes) break;
  }
  text += entries.empty() ? "]\n}\n" : "\n ]\n}\n";
  if (text.size() > kMaxJsonBytes) {
    // load would refuse it: say so now rather than write it.
    w.fail(Errc::invalid_argument, "the JSON form of this map is over the " +
                                       std::to_string(kMaxJsonBytes >> 20) +
                                       " MiB that load accepts; dump the binary form");
  }
  report("dump", entries.size(), entries.size());
  out.write(text.data(), text.size());
  report("sync", 0, 0);
  out.commit();
}

/// A version 2 or 3 JSON snapshot, read and verified whole.
struct TypedJson {
  SnapshotHeader header;
  TypedFields types;
  std::uint64_t kind = kKindMap;
  std::vector<ByteEntry> entries;
};

TypedJson parse_typed_json(const JsonDocument &j, const Where &w, const JsonFields &f) {
  TypedJson s;
  s.header = j.header;
  if (!j.has_header) f.bad("no \"header\" member (a typed or string map's JSON form has one)");
  const auto tv = j.doc.FindMember("types");
  if (tv == j.doc.MemberEnd()) f.bad("no \"types\" member (the key and value types)");
  if (!tv->value.IsObject()) f.bad("\"types\" is not an object");
  const rapidjson::Value &types = tv->value;
  TypedFields &t = s.types;
  const std::string where = "\"types\"";
  f.only(types,
         {"key_size", "key_align", "key_kind", "key_name", "key_hash", "value_size", "value_align",
          "value_kind", "value_name", "value_hash", "kind"},
         "in \"types\"");
  auto need = [&](bool found, const char *member) {
    if (!found) f.bad("\"types\" has no \"" + std::string(member) + "\"");
  };
  need(f.u32(types, "key_size", where, &t.key_size), "key_size");
  need(f.u32(types, "key_align", where, &t.key_align), "key_align");
  need(f.u32(types, "key_kind", where, &t.key_kind), "key_kind");
  need(f.str(types, "key_name", where, &t.key_name), "key_name");
  need(f.u32(types, "key_hash", where, &t.key_hash), "key_hash");
  need(f.u32(types, "value_size", where, &t.value_size), "value_size");
  need(f.u32(types, "value_align", where, &t.value_align), "value_align");
  need(f.u32(types, "value_kind", where, &t.value_kind), "value_kind");
  need(f.str(types, "value_name", where, &t.value_name), "value_name");
  need(f.u32(types, "value_hash", where, &t.value_hash), "value_hash");
  std::string kind = "map";
  f.str(types, "kind", where, &kind);
  if (kind != "map" && kind != "multimap") {
    f.bad("\"types\": \"kind\" is \"" + kind + "\" (\"map\" or \"multimap\")");
  }
  s.kind = kind == "multimap" ? kKindMultimap : kKindMap;
  check_types(j.version, t, s.kind, w);
  const bool strings = j.version == kSnapshotVersionStrings;
  const auto [key_t, value_t] = field_types(t);
  const rapidjson::Value &entries = j.doc["entries"];
  s.entries.reserve(entries.Size());
  std::size_t index = 0;
  for (const rapidjson::Value &e : entries.GetArray()) {
    const std::string at = "entry " + std::to_string(index++);
    if (!e.IsObject()) f.bad(at + " is not an object");
    std::string k = read_field(e, "key", key_t, at, f);
    std::string v = read_field(e, "value", value_t, at, f);
    if (e.MemberCount() != 2) f.bad(at + " has members besides its key and its value");
    auto wrong = [&](const char *what, std::size_t got, const std::string &want) {
      f.bad(at + ": its " + what + " has " + std::to_string(got) + " bytes, " + want);
    };
    if (key_t.size != 0 && k.size() != key_t.size && (strings || k.size() != 8)) {
      wrong("key", k.size(), "its type (" + key_t.name + ") " + std::to_string(key_t.size));
    }
    if (value_t.size != 0 && v.size() != value_t.size) {
      wrong("value", v.size(), "its type (" + value_t.name + ") " + std::to_string(value_t.size));
    }
    if (strings && k.size() + v.size() > kMaxStringEntryBytes) {
      wrong("key and value together", k.size() + v.size(),
            "at most " + std::to_string(kMaxStringEntryBytes));
    }
    if (!strings) k.resize(8, '\0');  // the key word
    s.entries.emplace_back(std::move(k), std::move(v));
  }
  check_json_checksum(j.pre, typed_content_xxh3(header_body(s.header, &t, s.kind), s.entries), w);
  if (s.header.entry_count != s.entries.size()) {
    w.fail(Errc::corrupt, "JSON header says " + std::to_string(s.header.entry_count) +
                              " entries, \"entries\" holds " + std::to_string(s.entries.size()));
  }
  return s;
}

/// Loads a version 2 or 3 JSON snapshot into a new map.
void load_typed_json(const JsonDocument &j, const std::string &name, const LoadOptions &options,
                     const Where &w, const DynamicMap::Layout *expect) {
  const JsonFields f(w, "the \"snapshot\", \"header\", \"types\" and \"entries\" that dump writes");
  const TypedJson s = parse_typed_json(j, w, f);
  SegmentTypes types = s.types.records();
  types.kind = s.kind;
  check_typed_load(name, options, w, types, expect);
  build_staged(name, w.path, "remove it first (a snapshot loads into a new map)",
               [&](const std::string &tmp) {
                 Options o = creation_options(s.header, options.options);
                 const std::size_t floor = o.initial_capacity;
                 o.initial_capacity =
                     std::max<std::size_t>(o.initial_capacity, s.entries.size() * 2 + 2);
                 if (j.version == kSnapshotVersionStrings) {
                   fill_strings(
                       tmp, o, types,
                       [&](const auto &put) {
                         for (const auto &[k, v] : s.entries) put(k, v);
                       },
                       floor);
                   return;
                 }
                 DynamicMap staging = SnapshotAccess::create(tmp, o, types);
                 for (const auto &[k, v] : s.entries) {
                   staging.insert_or_assign(
                       get64(reinterpret_cast<const unsigned char *>(k.data())), v.data());
                 }
                 SnapshotAccess::set_floor(staging, floor);
               });
}

}  // namespace
}  // namespace detail
}  // namespace shmap

namespace shmap {

void DynamicMap::dump(const std::string &path, const DumpOptions &options) const {
  if (value_type() == type_info<std::uint64_t>() && key_type() == type_info<std::uint64_t>()) {
    return map_.dump(path, options);  // a uint64 map: version 1, as Map::dump
  }
  const detail::Where w{name(), path};
  detail::only_shmap_errors(w, [&] {
    if (path.empty()) w.fail(Errc::invalid_argument, "empty file name");
    if (options.point_in_time && read_only()) {
      w.fail(Errc::permission_denied,
             "a point-in-time dump holds writers back, which a read-only attachment may not do; "
             "attach read-write, or dump without --point-in-time");
    }
    // The size hint of a map of strings: its buckets (the walk counts the entries it writes).
    if (options.json) return detail::dump_typed_json(*this, size(), w, options.point_in_time);
    if (holds_strings()) return detail::dump_strings(*this, size(), w, options.point_in_time);
    detail::dump_typed(*this, w, options.point_in_time);
  });
}

namespace {
DynamicMap load_any(const std::string &path, const std::string &name, const LoadOptions &options,
                    const DynamicMap::Layout *expect) {
  const detail::Where w{name, path};
  return detail::only_shmap_errors(w, [&] {
    detail::validate_name(name);
    if (path.empty()) w.fail(Errc::invalid_argument, "empty file name");
    std::uint64_t size = 0;
    detail::Fd fd = detail::open_input(w, &size);  // standard input: copied into a file
    const std::uint32_t version = detail::snapshot_kind(fd.get());
    const TypeInfo u64 = type_info<std::uint64_t>();
    const bool want_u64 = expect == nullptr || (expect->key == u64 && expect->value == u64);
    if (version == 2) {
      detail::load_typed(fd.get(), size, name, options, w, expect);
    } else if (version == 3) {
      detail::load_strings(fd.get(), size, name, options, w, expect);
    } else if (version == detail::kJsonKind) {
      const detail::JsonFields f(w,
                                 "the \"snapshot\", \"header\", \"types\" and \"entries\" "
                                 "that dump writes");
      const auto j = detail::read_json(fd.get(), size, w, f);
      if (j->version != 1) {
        detail::load_typed_json(*j, name, options, w, expect);
        return DynamicMap::open(name);
      }
      if (!want_u64) {
        w.fail(Errc::layout_mismatch,
               "the snapshot holds uint64 -> uint64, the map wanted holds " +
                   detail::describe_types(detail::layout_types(name, *expect)));
      }
      detail::load_from(fd.get(), size, name, options, w);
    } else {
      // Version 1 (or not a snapshot: Map::load says what is wrong): a uint64 map.
      if (version == 1 && !want_u64) {
        w.fail(Errc::layout_mismatch,
               "the snapshot holds uint64 -> uint64, the map wanted holds " +
                   detail::describe_types(detail::layout_types(name, *expect)));
      }
      detail::load_from(fd.get(), size, name, options, w);
    }
    return DynamicMap::open(name);
  });
}
}  // namespace

void StringMap::dump(const std::string &path, const DumpOptions &options) const {
  detail::SnapshotAccess::core(*this).dump(path, options);
}

StringMap StringMap::load(const std::string &path, const std::string &name,
                          const LoadOptions &options) {
  DynamicMap::load(path, name, options, layout());
  return open(name);
}

DynamicMap DynamicMap::load(const std::string &path, const std::string &name,
                            const LoadOptions &options) {
  return load_any(path, name, options, nullptr);
}

DynamicMap DynamicMap::load(const std::string &path, const std::string &name,
                            const LoadOptions &options, const Layout &expect) {
  return load_any(path, name, options, &expect);
}

}  // namespace shmap
