// shmap — IMPLEMENTATION DETAILS: the shared-memory layout.
//
// Everything in this file lives in the shared segment. Nothing here holds a pointer: every
// reference is a 64-bit byte offset from the segment base (0 = none), so the same bytes work at
// any address, in any process, and in two views of one process.
//
// Segment Layout
// ==============
//
//   offset 0                SegmentHeader (4096 bytes, one page)
//     +0     magic            u64   "shmap" 00 01 02 in memory: reveals byte order
//     +8     format_version   u32   kFormatVersion
//     +12    header_bytes     u32   sizeof(SegmentHeader)
//     +16    layout_signature u64   hash of sizeof/alignof/offsetof of every shared struct
//     +24    init_state       u32   0 initialising, 1 ready            (creator, release)
//     +32    creator_pid, creator_start                                (creator)
//     +48    options          initial_capacity, max_handles, mode, max_bytes, hash_seed
//     +128   line: current_table (offset), global_epoch                (resizers, reclaimers)
//     +192   line: file_bytes, arena_top                               (allocators, CAS)
//     +256   line: counters resizes, tables_freed, bytes_freed, leaked_bytes; writer_gate
//     +512   free_list[64]   u64 packed {offset_pages:40, pages:24}    (allocator, CAS)
//     +1024  retired_head    offset of the newest retired table        (Treiber stack)
//     +1032  reclaim_lock, reclaim journal {table, retire_epoch, created_epoch}  (reclaimer)
//   slots_offset (4096)     HandleSlot[max_handles], each 64 * (1 + kLanes) bytes
//   arena_offset            page-aligned extents, one per table, handed out by a bump pointer
//                           (arena_top) and recycled through free_list
//
// HandleSlot: one cache line of owner data (owner word, start time, open time, pin mode, pid
// namespace), then kLanes cache lines, one per thread of the owning Map. A Map's first 15
// threads use lanes 0-14 of its slot; later threads use lanes of extra slots the Map claims on
// demand (16 threads per slot); lane 15 of the Map's own slot is the overflow lane, a pin count
// shared only by threads for which no slot could be had (MapImpl::lane_of). A lane is written
// by its thread, except that helpers apply a pending size record to its count by 16-byte CAS
// (see struct Lane).
//
// Table Layout (one arena extent)
// ===============================
//
//   +0      TableHeader: capacity, bits, older (offset of the table it replaces), migration
//           cursor and done count, newer (the table it migrates into, once linked), retire
//           epoch and retired-stack link, 16 striped "used" counters, each on its own line
//   +2048   buckets, 24 bytes each, in pairs of 48 bytes (bucket 2p and 2p + 1 at +48p):
//             +0  value0  u64 ┐ bucket 2p's Slot: updated together by one 16-byte CAS
//             +8  meta0   u64 ┘ (cmpxchg16b); bits 0-7 state, 8-23 writer tag, 24-63 version
//             +16 key0    u64   written once, before the bucket leaves state CLAIMED
//             +24 key1    u64   bucket 2p + 1's key
//             +32 value1  u64 ┐ bucket 2p + 1's Slot (16-byte aligned, as the CAS needs)
//             +40 meta1   u64 ┘
//           so each bucket's 24 bytes are contiguous (6 of every 8 lie within one cache line)
//   +2048 + 24 * capacity   fingerprints: one byte per bucket (fp_bytes(capacity) bytes, at
//                           least 16), read 16 at a time with SSE2 (see "Fingerprints" below)
//   ... + fp_bytes          done bitmap: one bit per 64-bucket chunk of this table, set as
//                           the chunk is migrated into the successor
//
// Bucket state machine (a bucket never goes back to EMPTY or CLAIMED):
//
//   state     value word        meaning
//   EMPTY     0                 never claimed; ends a probe run
//   CLAIMED   the key           claimed for `key` (key word may still be 0), no value yet
//   LIVE      the value         key -> value
//   TOMB      0                 key erased
//   FROZEN    the last value    being copied to the successor table; immutable
//   MOVED     0                 the successor table is authoritative for this key
//   SEALED    0                 was EMPTY when migration passed: ends every probe run here,
//                               and the successor table is authoritative for the run
//
//   event \ state   EMPTY    CLAIMED      LIVE(v)     TOMB      FROZEN    MOVED/SEALED
//   claim k         CLAIMED  (is k: use)  (is k: use) (is k)    help,→    go to successor
//   write v         -        LIVE(v)      LIVE(v')    LIVE(v)   help,→    go to successor
//   erase           -        -            TOMB        -         help,→    go to successor
//   migrate         SEALED   MOVED        FROZEN(v)   MOVED     copy,MOVED   -
//
// Because the state is its own word, every uint64 key and every uint64 value is storable.
//
// Fingerprints (format 2)
// =======================
// Beside the buckets, one byte per bucket lets a lookup decide from one cache line (16 bytes
// of it per SSE2 compare) which buckets of its probe run can hold its key and where the run
// ends, without reading a bucket that cannot:
//
//   byte      meaning
//   0         no claim seen here yet: ends a lookup's run (see below why that is authoritative)
//   1         a migration is sealing this bucket (or did): read the bucket
//   2..255    claimed by a key whose fingerprint (fingerprint(hash)) this is; set once the
//             bucket is claimed, never changed after (keys never change within a table)
//
// A byte is written after the bucket CAS it describes (claim: EMPTY -> CLAIMED, then the
// fingerprint) or before it (seal: 1, then EMPTY -> SEALED). A bucket claimed by a writer that
// died before writing the byte keeps 0 until the next writer walks past it; every *writer*
// that walks past a claimed bucket whose byte is 0 writes it first (readers never write). So
// a byte of 0 at position z seen by a lookup means: no key beyond z in this run was claimed
// before the lookup read it, and the key of z itself was not yet written -- the lookup can
// stop there. The full argument is in table.cpp ("Fingerprints").
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace shmap::detail {

inline constexpr std::uint64_t kMagic = 0x0201'0070'616d'6873ULL;  // "shmap\0\1\2" little-endian
/// 2: fingerprints beside the buckets, 24-byte buckets (Table v2). 3: typed maps' types and
/// record heap. 4: large record classes (string entries up to 2 MiB). 5: string maps count
/// their entries in the lanes. 6: capacities between powers of two (see is_capacity). 7: the
/// key hash is one multiply (hash_key). 8: string maps keep short entries in the bucket
/// (entry_list.hpp, InlineEntry). Others are refused.
inline constexpr std::uint32_t kFormatVersion = 8;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kPage = 4096;
inline constexpr std::size_t kLanes = 16;          // lanes (threads) per handle slot
inline constexpr std::size_t kStripes = 16;        // striped "used" counters per table
inline constexpr std::size_t kChunk = 64;          // buckets per migration chunk
inline constexpr std::size_t kChunksPerWrite = 2;  // chunks every write migrates first
inline constexpr std::size_t kMinCapacity = 8;
inline constexpr std::size_t kFreeListSize = 64;
inline constexpr std::size_t kTableHeaderBytes = 2048;
/// Longest chain of tables (current -> older -> ...) the protocol makes; a longer one (or a
/// cycle) in a segment is damage. Normally 1 or 2; 3 or more only while a successor that
/// turned out too small is being replaced (migration.cpp, "Successors that are too small").
inline constexpr std::size_t kMaxChain = 8;
/// A point-in-time hold lasts at most this long, plus 1 s per 256 MiB of tables (the time to
/// copy them in memory); then waiting writers break it. A dump writes its file after the hold.
inline constexpr std::uint64_t kWriterHoldLeaseNs = 2'000'000'000;

enum State : std::uint64_t {
  kEmpty = 0,
  kClaimed = 1,
  kLive = 2,
  kTomb = 3,
  kFrozen = 4,
  kMoved = 5,
  kSealed = 6,
  kBulk = 7,  // only in a table header's bulk cell: its count was added to the size
};
// The meta word of a bucket:
//   bits 63..24  version   +1 on every transition (ABA-free CAS, consistent reads)
//   bits 23..8   tag       writer of a size-changing transition: slot * kLanes + lane + 1,
//                          0 otherwise; names the lane whose pending record covers it
//   bits  7..0   state
inline constexpr std::uint64_t kStateMask = 0xff;
inline constexpr std::uint64_t kVersionOne = std::uint64_t{1} << 24;

constexpr std::uint64_t state_of(std::uint64_t meta) { return meta & kStateMask; }
constexpr std::uint64_t tag_of(std::uint64_t meta) { return (meta >> 8) & 0xffff; }
constexpr std::uint64_t version_of(std::uint64_t meta) { return meta >> 24; }
constexpr std::uint64_t next_meta(std::uint64_t meta, std::uint64_t state, std::uint64_t tag = 0) {
  return ((meta & ~std::uint64_t{0xffffff}) + kVersionOne) | (tag << 8) | state;
}
inline constexpr std::size_t kMaxHandles = 4095;  // so that every tag fits in 16 bits

/// A bucket's {value, meta}: the 16-byte CAS unit.
struct alignas(16) Slot {
  std::uint64_t value;
  std::uint64_t meta;
};
static_assert(sizeof(Slot) == 16 && alignof(Slot) == 16,
              "value+meta must be 16-byte aligned for cmpxchg16b");
static_assert(offsetof(Slot, value) == 0 && offsetof(Slot, meta) == 8,
              "value and meta form one 16-byte CAS unit, value first (low half)");
/// Two buckets: [value0 meta0 key0 | key1 value1 meta1] (see "Table Layout" above).
struct alignas(16) BucketPair {
  Slot slot0;
  std::uint64_t key0;
  std::uint64_t key1;
  Slot slot1;
};
static_assert(sizeof(BucketPair) == 48, "24 bytes per bucket; the arena math assumes it");
static_assert(offsetof(BucketPair, key0) == 16 && offsetof(BucketPair, key1) == 24 &&
                  offsetof(BucketPair, slot1) == 32,
              "each bucket's slot and key contiguous, both slots 16-byte aligned");
inline constexpr std::size_t kBucketBytes = sizeof(BucketPair) / 2;
/// Byte offsets of bucket i's slot and key from the start of the buckets. Bucket i's 24
/// bytes are [24i, 24i + 24): the slot first in an even bucket, the key first in an odd one
/// (the same as 48 * (i >> 1) + 32 * (i & 1) and + 16 + 8 * (i & 1), in fewer instructions).
constexpr std::uint64_t slot_offset(std::uint64_t i) { return 24 * i + ((i & 1) << 3); }
constexpr std::uint64_t key_offset(std::uint64_t i) { return 24 * i + 16 - ((i & 1) << 4); }
/// key_offset(i) from slot_offset(i): the key is 16 bytes past an even bucket's slot and 8
/// bytes before an odd one's. For the lookup path, which needs both (fewer instructions than
/// computing the two from i).
constexpr std::uint64_t key_offset_from_slot(std::uint64_t i, std::uint64_t slot) {
  return slot + 16 - 24 * (i & 1);
}
static_assert(key_offset_from_slot(0, slot_offset(0)) == key_offset(0) &&
              key_offset_from_slot(1, slot_offset(1)) == key_offset(1) &&
              key_offset_from_slot(6, slot_offset(6)) == key_offset(6) &&
              key_offset_from_slot(7, slot_offset(7)) == key_offset(7));
static_assert(slot_offset(0) == offsetof(BucketPair, slot0) &&
              key_offset(0) == offsetof(BucketPair, key0) &&
              slot_offset(1) == offsetof(BucketPair, slot1) &&
              key_offset(1) == offsetof(BucketPair, key1) && slot_offset(2) == 48 &&
              key_offset(2) == 64 && slot_offset(7) == 3 * 48 + 32 && key_offset(7) == 3 * 48 + 24);

/// A table header's bulk cell (see TableHeader::bulk): a slot and two more words.
struct alignas(32) BulkCell {
  Slot slot;
  std::uint64_t key;
  std::uint64_t reserved;
};
static_assert(sizeof(BulkCell) == 32 && offsetof(BulkCell, key) == 16,
              "the layout of format 1's 32-byte bucket, which the header kept");

struct alignas(kCacheLine) PaddedCounter {
  std::atomic<std::uint64_t> n;
};
static_assert(sizeof(PaddedCounter) == kCacheLine, "one counter per cache line");

struct TableHeader {
  std::uint64_t capacity;        // is_capacity(capacity); immutable
  std::uint64_t bits;            // capacity_bits(capacity); immutable
  std::uint64_t extent_bytes;    // bytes of this table's arena extent; immutable
  std::uint64_t older_capacity;  // capacity of the table it replaces (0: none); immutable
  std::uint64_t created_epoch;
  std::uint64_t discard_older;  // 1: replaces the older table's content instead of copying it
  std::uint64_t retire_epoch;   // global epoch when unlinked (set by the retirer)
  std::uint64_t retired_next;   // next table on the retired stack
  // Second line: migration of `older` into this table.
  alignas(kCacheLine) std::atomic<std::uint64_t> older;  // offset; 0 once assimilated
  std::atomic<std::uint64_t> mig_cursor;  // next chunk to claim (fetch_add; may pass the end)
  std::atomic<std::uint64_t> mig_done;    // chunks finished (each counted once via the bitmap)
  // The one table this table migrates into: set once, by CAS from 0, *before* that table is
  // published as current_table (0: none yet). Anyone who finds it set and the table still
  // current finishes the publication; a copy that finds this table full or already migrated
  // past its key follows it (migration.cpp).
  std::atomic<std::uint64_t> newer;
  // A bulk-loaded table's entry count, added to the map's size exactly once, like a bucket
  // write: {value = count, meta} goes CLAIMED (count not yet added) -> BULK (tagged with the
  // lane whose size record adds it). EMPTY in every other table. Its value and meta are the
  // cell; its `key` word is the creator (owner word of the Map that made the table, 0 =
  // unknown: the segment's first table, or a build before it), by which a table that was
  // never linked and whose creator is gone is known to be leaked; its `reserved` word is the
  // table's full flag (1 once a claiming probe found no EMPTY bucket: buckets never become
  // EMPTY again, so it is never cleared).
  BulkCell bulk;
  PaddedCounter used[kStripes];  // claimed buckets, striped by lane to avoid one hot line
};
static_assert(offsetof(TableHeader, older) == 64, "migration fields on their own line");
static_assert(offsetof(TableHeader, bulk) == 96 && offsetof(TableHeader, bulk) % 16 == 0,
              "bulk cell: a 16-byte CAS unit in what format 1 left reserved (zero)");
static_assert(offsetof(TableHeader, newer) == 88,
              "newer was a reserved word (0) in format 1: maps made before it still open");
static_assert(sizeof(TableHeader) == 128 + kStripes * kCacheLine, "table header layout pinned");
static_assert(sizeof(TableHeader) <= kTableHeaderBytes, "header fits before the buckets");
static_assert(kTableHeaderBytes % alignof(BucketPair) == 0, "buckets start aligned");

struct alignas(kCacheLine) SlotOwner {
  // owner: 0 = free, else pid (low 32 bits) | claim nonce (high 32 bits). CAS to claim/free.
  std::atomic<std::uint64_t> owner;
  std::atomic<std::uint64_t>
      start_time;  // owner's start time (clock ticks since boot), 0 = unknown
  std::atomic<std::uint64_t> opened_at_ns;  // CLOCK_REALTIME
  // How this owner's threads pin: kPinsFenced (seq_cst stores: a scan sees them without a
  // fence) or anything else, 0 included (plain stores: only membarrier makes them visible;
  // older builds leave 0, and are treated so). Written before the claim completes.
  std::atomic<std::uint64_t> pin_mode;
  // Inode of the owner's pid namespace (/proc/self/ns/pid), 0 = unknown. Written before the
  // claim completes; an owner in another namespace cannot be checked and counts as alive.
  std::atomic<std::uint64_t> pid_ns;
  std::uint64_t reserved[3];
};
static_assert(sizeof(SlotOwner) == kCacheLine, "owner data is one cache line");
static_assert(offsetof(SlotOwner, pin_mode) == 24 && offsetof(SlotOwner, pid_ns) == 32,
              "pin mode and pid namespace live in what was reserved space: no layout change");
inline constexpr std::uint64_t kPinsFenced = 0x6665'6e63'6564'0001ULL;  // "fenced" 00 01
inline constexpr std::uint64_t kPinsLight = 0x6c69'6768'7400'0001ULL;   // "light" 00 01
/// start_time while a claim is being completed (pin_mode and pid_ns not written yet).
inline constexpr std::uint64_t kStartClaiming = UINT64_MAX - 1;

// pin: 0 = quiescent; else epoch << 16 | count (count > 1 only on the overflow lane).
// The size count: the map's size is the sum of every lane's size_delta. A size-changing write
// records itself in `pending` + pending_* before its bucket CAS and tags the bucket's meta with
// its lane; whoever next changes that bucket, or frees the slot of a dead owner, first applies
// the recorded change if it has not been applied (size_seq says), so the count stays exact
// even when a process dies between its CAS and its count update.
struct alignas(kCacheLine) Lane {
  std::atomic<std::uint64_t> pin;
  std::atomic<std::uint64_t> pending;        // bucket offset of the recorded write; 0 = none
  alignas(16) std::uint64_t size_delta;      // \ one 16-byte CAS unit: the count (+1 per insert,
  std::uint64_t size_seq;                    // /  -1 per erase; wraps) and changes applied to it
  std::atomic<std::uint64_t> pending_meta;   // the meta the recorded CAS installs
  std::atomic<std::uint64_t> pending_value;  // the value it installs
  std::atomic<std::uint64_t> pending_seq;    // size_seq when recorded, and the change: below
  // Seqlock over the record: odd while a new record is being written, even once it is whole;
  // never reset (not even when the slot changes owner), so a reader can tell two records
  // apart. An owner killed mid-record leaves it odd; the next writer rounds it up to even.
  std::atomic<std::uint64_t> record_gen;
};
static_assert(offsetof(Lane, size_delta) == 16, "size_delta + size_seq: a 16-byte CAS unit");
// Lane::pending_seq: bits 0..39 the lane's size_seq (mod 2^40) when the write was recorded;
// bits 40..63 the size change the write makes, as a 24-bit two's complement number, or 0: the
// change follows from the state its CAS installs (LIVE +1, BULK +value, else -1). A write of a
// map of strings changes the size by its entry list's change of length (a multimap's value
// added to a key's list: +1, with the bucket LIVE before and after), so it says so here.
// size_seq changes only by applying this lane's records and its owner's own counts, and a
// record is applied or found applied before its owner records again: 40 bits cannot wrap
// between a record and its application.
inline constexpr std::uint64_t kSeqBits = 40;
inline constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << kSeqBits) - 1;
inline constexpr std::int64_t kMaxRecordedDelta = (std::int64_t{1} << 23) - 1;
constexpr std::uint64_t pack_pending_seq(std::uint64_t seq, std::int64_t delta) {
  return (seq & kSeqMask) | (static_cast<std::uint64_t>(delta) << kSeqBits);
}
/// The change a record states (0: follows from the state it installs).
constexpr std::int64_t recorded_delta(std::uint64_t pending_seq) {
  return static_cast<std::int64_t>(pending_seq) >> kSeqBits;  // arithmetic: sign-extends
}
static_assert(recorded_delta(pack_pending_seq(5, -3)) == -3 &&
                  recorded_delta(pack_pending_seq(kSeqMask, kMaxRecordedDelta)) ==
                      kMaxRecordedDelta &&
                  (pack_pending_seq(kSeqMask + 7, 1) & kSeqMask) == 6,
              "pending_seq packs a 40-bit sequence and a 24-bit signed change");
static_assert(sizeof(Lane) == kCacheLine, "each lane on its own line: no false sharing");
// The pin word:
//   bits 63..16  epoch   the global epoch when the lane was pinned
//   bit  15      writer  the pinned operation writes (a point-in-time hold waits only for these)
//   bits 14..0   count   pinned operations (> 1 only on the shared overflow lane); 0 = quiescent
inline constexpr std::uint64_t kPinCountMask = 0x7fff;
inline constexpr std::uint64_t kPinWriter = 0x8000;

struct HandleSlot {
  SlotOwner owner;
  Lane lanes[kLanes];
};
static_assert(sizeof(HandleSlot) == kCacheLine * (1 + kLanes), "slot = owner line + lanes");

/// A type as the segment records it (shmap::TypeInfo).
struct TypeRecord {
  std::uint32_t size;
  std::uint32_t align;
  std::uint32_t kind;       // TypeInfo::Kind
  std::uint32_t name_hash;  // FNV-1a of the whole name (which may be longer than `name`)
  char name[48];            // NUL-terminated, cut at 47 bytes
};
static_assert(sizeof(TypeRecord) == 64, "a type record is one line");
inline constexpr std::uint64_t kKindMap = 1;
inline constexpr std::uint64_t kKindMultimap = 2;  // StringMultimap: several values per key

/// The head of a Treiber stack in shared memory: {offset of the top entry (0: empty), a tag
/// that every change bumps}. One 16-byte CAS unit, so a pop that read a head which was popped
/// and pushed back meanwhile (ABA) fails.
struct alignas(16) StackHead {
  std::uint64_t top;
  std::uint64_t tag;
};
static_assert(sizeof(StackHead) == 16, "one cmpxchg16b unit");

/// Record classes: block sizes in bytes (a 16-byte record header, then the value).
///   small (0 .. kSmallRecordClasses-1): many blocks to a slab of kSlabBytes;
///   large (the rest): one block to an extent of kLargeClassPages pages, the block filling it
///   after the 64-byte slab header. While a large block is free, its pages beyond the first are
///   given back to the system (hole punch), and reserved again when it is reused.
inline constexpr std::size_t kSmallRecordClasses = 27;
inline constexpr std::size_t kLargeRecordClasses = 31;
inline constexpr std::size_t kRecordClasses = kSmallRecordClasses + kLargeRecordClasses;
inline constexpr std::uint32_t kLargeClassPages[kLargeRecordClasses] = {
    2,  3,  4,  5,  6,  7,   8,   10,  12,  14,  16,  20,  24,  28,  32, 40,
    48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512};
inline constexpr std::uint32_t kSlabHeaderBytes = 64;  // sizeof(SlabHeader), pinned below
inline constexpr std::array<std::uint32_t, kRecordClasses> kRecordClassBytes = [] {
  std::array<std::uint32_t, kRecordClasses> b{32,   48,   64,   80,   96,   112,  128,  160,  192,
                                              224,  256,  320,  384,  448,  512,  640,  768,  896,
                                              1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096};
  for (std::size_t c = 0; c < kLargeRecordClasses; ++c) {
    b[kSmallRecordClasses + c] = kLargeClassPages[c] * 4096 - kSlabHeaderBytes;
  }
  return b;
}();
inline constexpr std::size_t kRecordHeaderBytes = 16;

/// A slab: one arena extent carved into records of one class: kSlabBytes for a small class,
/// kLargeClassPages pages for a large one (one block). Its first words can never pass as a
/// table header (kSlabMagic is not a power of two), so the leak sweep, which walks the arena
/// extent by extent, recognises it and steps over it (leaks.cpp).
inline constexpr std::uint64_t kSlabBytes = std::uint64_t{64} << 10;
inline constexpr std::uint64_t kSlabMagic = 0x62616c7370616d73ULL;  // "smapslab"
/// The extent a slab of class cls asks for (the allocator may hand out up to twice that).
constexpr std::uint64_t class_extent(std::size_t cls) {
  return cls < kSmallRecordClasses
             ? kSlabBytes
             : std::uint64_t{kLargeClassPages[cls - kSmallRecordClasses]} * 4096;
}
/// Whether a slab header's class and extent size agree (read from shared memory: validated).
constexpr bool slab_shape_ok(std::uint64_t cls, std::uint64_t extent) {
  return cls < kRecordClasses && extent % 4096 == 0 && extent >= class_extent(cls) &&
         extent <= 2 * class_extent(cls);
}
/// The blocks of a slab of class cls and `extent` bytes (slab_shape_ok).
constexpr std::uint64_t slab_blocks(std::size_t cls, std::uint64_t extent) {
  return cls < kSmallRecordClasses ? (extent - kSlabHeaderBytes) / kRecordClassBytes[cls] : 1;
}
struct SlabHeader {
  std::uint64_t magic;         // kSlabMagic, written last (release): the slab is complete
  std::uint64_t extent_bytes;  // class_extent(cls) .. twice that
  std::uint32_t cls;           // its record class
  std::uint32_t block_bytes;   // kRecordClassBytes[cls]
  std::uint64_t blocks;        // slab_blocks(cls, extent_bytes)
  std::uint64_t next;          // the slab directory: the slab pushed before this one
  std::uint64_t reserved[3];
};
static_assert(sizeof(SlabHeader) == kSlabHeaderBytes, "records start one line into the slab");
static_assert(offsetof(SlabHeader, extent_bytes) == 8, "slab size where a table keeps bits");

/// The first 16 bytes of every record block; the value follows.
///   live:     word0 = value bytes (low 32) | class (high 32); word1 = its slab's offset
///   free:     word0 = next free block of the class (0: none);  word1 = the same
///   retired:  word0 = next block on the limbo stack or batch;  word1 = the same
/// Readers read only the value, so retiring (which rewrites word0) never disturbs a reader
/// still copying it. word1 is written when the slab is carved and never changes: a block
/// offset read from shared memory is checked against it before a write uses it
/// (RecordHeap::check_block).
struct RecordHeader {
  std::uint64_t word0;
  std::uint64_t slab;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes, "record header pinned");

struct SegmentHeader {
  std::uint64_t magic;
  std::uint32_t format_version;
  std::uint32_t header_bytes;
  std::uint64_t layout_signature;
  std::atomic<std::uint32_t> init_state;  // 0 initialising, 1 ready
  std::uint32_t reserved0;
  std::uint64_t creator_pid;
  std::uint64_t creator_start;
  // Creation options (immutable after init).
  std::uint64_t initial_capacity;
  std::uint64_t max_handles;
  std::uint64_t mode;
  std::uint64_t max_bytes;
  std::uint64_t hash_seed;
  std::uint64_t slots_offset;
  std::uint64_t arena_offset;
  std::uint64_t reserved1;
  alignas(kCacheLine) std::atomic<std::uint64_t> current_table;  // read by every operation
  std::atomic<std::uint64_t> global_epoch;                       // read by every pin
  alignas(kCacheLine) std::atomic<std::uint64_t> file_bytes;     // size of the object
  std::atomic<std::uint64_t> arena_top;                          // bump pointer
  alignas(kCacheLine) std::atomic<std::uint64_t> resizes;
  std::atomic<std::uint64_t> tables_freed;
  std::atomic<std::uint64_t> bytes_freed;
  std::atomic<std::uint64_t> leaked_bytes;
  std::atomic<std::uint64_t> writer_gate;  // 0, or the owner word of a point-in-time dumper
  std::atomic<std::uint64_t> writer_gate_deadline;  // CLOCK_MONOTONIC ns; CAS'd with the gate
  alignas(512) std::atomic<std::uint64_t> free_list[kFreeListSize];
  // Stack of unlinked tables awaiting reclamation, linked through TableHeader::retired_next.
  alignas(kCacheLine) std::atomic<std::uint64_t> retired_head;
  // The reclaim lock: 0, or the owner word of the Map freeing retired tables (one at a time;
  // a dead holder's lock is broken). The journal names the table being unlinked and freed, so
  // that whoever takes the lock after a holder died finishes that one table (handles.cpp).
  std::atomic<std::uint64_t> reclaim_lock;
  std::atomic<std::uint64_t> reclaim_table;          // journal: offset, 0 = none
  std::atomic<std::uint64_t> reclaim_retire_epoch;   // journal: its retire_epoch
  std::atomic<std::uint64_t> reclaim_created_epoch;  // journal: its created_epoch
  // Format 3: the types of the keys and values (immutable after init; Map is uint64 -> uint64)
  // and the record heap of a typed map whose values do not fit in a bucket (records.hpp).
  alignas(kCacheLine) TypeRecord key_type;
  TypeRecord value_type;
  std::uint64_t kind;  // kKindMap or kKindMultimap
  // Slab directory: the newest slab; each slab links the one pushed before it (push only).
  alignas(kCacheLine) std::atomic<std::uint64_t> slab_head;
  std::atomic<std::uint64_t> slabs;  // how many were pushed (a bound for walks)
  // Records replaced or erased, waiting for the readers that could still see them: pushed on
  // `limbo`; a reclaimer moves the whole stack to the batch, stamped with an epoch, and frees
  // the batch once no lane is pinned below that epoch (RecordHeap::reclaim).
  alignas(16) StackHead limbo;
  std::atomic<std::uint64_t> limbo_batch;        // list (linked through word0), 0: none
  std::atomic<std::uint64_t> limbo_batch_epoch;  // free once every pin is at this or later
  // Per record class, the free records (RecordHeap).
  alignas(kCacheLine) StackHead record_free[kRecordClasses];
  // Format 4 counted a string map's entries beyond one per bucket here; since format 5 the
  // lanes count every entry (Lane::pending_seq). Always 0; kept so the layout stays put.
  alignas(kCacheLine) std::atomic<std::int64_t> unused_extra_entries;
  std::uint8_t reserved2[kPage - 2312];
};
static_assert(offsetof(SegmentHeader, init_state) == 24, "init_state pinned");
static_assert(offsetof(SegmentHeader, current_table) == 128, "hot read-mostly line");
static_assert(offsetof(SegmentHeader, file_bytes) == 192, "allocator line");
static_assert(offsetof(SegmentHeader, resizes) == 256, "counters line");
static_assert(offsetof(SegmentHeader, free_list) == 512, "free list pinned");
static_assert(offsetof(SegmentHeader, retired_head) == 1024, "retired stack head pinned");
static_assert(offsetof(SegmentHeader, reclaim_lock) == 1032 &&
                  offsetof(SegmentHeader, reclaim_created_epoch) == 1056,
              "reclaim lock and journal live in what was reserved space: no layout change");
static_assert(offsetof(SegmentHeader, writer_gate) == 288, "writer gate pinned");
static_assert(offsetof(SegmentHeader, writer_gate_deadline) == 296 &&
                  offsetof(SegmentHeader, writer_gate) % 16 == 0,
              "gate and deadline: one 16-byte CAS unit, set and cleared together");
static_assert(offsetof(SlotOwner, start_time) == 8, "owner and start time: one 16-byte CAS unit");
static_assert(offsetof(SegmentHeader, key_type) == 1088 &&
                  offsetof(SegmentHeader, value_type) == 1152 &&
                  offsetof(SegmentHeader, kind) == 1216,
              "format 3: types pinned");
static_assert(offsetof(SegmentHeader, slab_head) == 1280 &&
                  offsetof(SegmentHeader, limbo) == 1296 &&
                  offsetof(SegmentHeader, record_free) == 1344,
              "format 3: record heap pinned");
static_assert(offsetof(SegmentHeader, unused_extra_entries) == 2304, "format 4: pinned");
static_assert(sizeof(SegmentHeader) == kPage, "the header is exactly one page");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "64-bit atomics must be lock-free to work across processes");
static_assert(sizeof(std::atomic<std::uint64_t>) == 8, "atomics are plain words in shared memory");

// Fingerprint bytes (see "Fingerprints" above).
inline constexpr std::uint8_t kFpFree = 0;
inline constexpr std::uint8_t kFpSealing = 1;
/// The fingerprint of a key hash: its low byte (the home position uses the high bits), moved
/// out of the two reserved values.
constexpr std::uint8_t fingerprint(std::uint64_t hash) {
  const auto f = static_cast<std::uint8_t>(hash);
  return f < 2 ? static_cast<std::uint8_t>(f + 2) : f;
}
/// Bytes of a table's fingerprint array: one per bucket, at least one 16-byte group (a table of
/// 8 buckets reads bytes 8..15 too, and ignores them).
constexpr std::size_t fp_bytes(std::size_t capacity) { return capacity < 16 ? 16 : capacity; }

/// Hash of every size, alignment and offset above; a build that differs refuses to attach.
std::uint64_t layout_signature() noexcept;

/// Bytes of a table's extent: header, buckets, and the done bitmap of its own chunks (used when
/// this table is the older one being migrated; one bit per 64-bucket chunk).
/// Capacities above kMaxCapacity cannot fit in any segment (max_bytes <= 2^46): table_bytes()
/// saturates there instead of wrapping, so a capacity read from damaged memory (or computed from
/// a damaged size count) is an allocation that fails, never a small extent used as a big table.
inline constexpr std::size_t kMaxCapacity = std::size_t{1} << 42;
inline constexpr std::size_t table_bytes(std::size_t capacity) {
  if (capacity > kMaxCapacity) return SIZE_MAX / 2;
  const std::size_t bitmap_words = (capacity / kChunk + 63) / 64 + 1;
  const std::size_t raw =
      kTableHeaderBytes + capacity * kBucketBytes + fp_bytes(capacity) + bitmap_words * 8;
  return (raw + kPage - 1) / kPage * kPage;
}
static_assert(table_bytes(8) == kPage, "a minimal table is one page");

// Table capacities
// ================
// Format 6: 8, 16, 32, then multiples of kChunk of the form m * 2^j with m in {4, 5, 6, 7}
// -- four sizes per doubling (64, 128, 192, 256, 320, 384, 448, 512, 640, ...). Growth still
// doubles (a table made by growth or shrink is a power of two); the sizes in between let
// compact() and bulk loads fit a table to its entries at a load of 0.56-0.7 where a power of
// two leaves 0.375-0.75 (2^20 entries: 1.5 * 2^20 buckets, not 2^21). Every capacity is a
// whole number of 16-byte fingerprint groups (or the one group of a table of 8) and of
// migration chunks (or below one chunk), which the fast path and help_migrate rely on.
// A key's home is the high part of hash * capacity (home_of): for a power of two 2^b that is
// hash >> (64 - b), the mapping of formats 1-5; for any capacity it keeps the homes in hash
// order and uses the hash's high bits, so the fingerprint (the low byte) stays independent.
constexpr bool is_capacity(std::uint64_t c) {
  if (c < kMinCapacity || c > kMaxCapacity) return false;
  if (c == 8 || c == 16 || c == 32) return true;
  if (c % kChunk != 0) return false;
  const int drop =
      static_cast<int>(std::bit_width(c)) - 3;  // c >> drop is c's top three bits: 4..7
  return (c & ((std::uint64_t{1} << drop) - 1)) == 0;
}
/// The smallest capacity >= n (kMaxCapacity if none: n may come from counters in shared
/// memory, and a table that large fails to allocate with out_of_space, never loops).
constexpr std::uint64_t next_capacity(std::uint64_t n) {
  if (n <= 8) return 8;
  if (n <= 16) return 16;
  if (n <= 32) return 32;
  if (n >= kMaxCapacity) return kMaxCapacity;
  // n rounded up to a quarter of the power of two below it (at least a chunk, 2^6): m * 2^drop
  // with m in 4..8 (8 * 2^drop = 4 * 2^(drop + 1)).
  static_assert(kChunk == 64);
  const int drop = std::max(static_cast<int>(std::bit_width(n)) - 3, 6);
  return (((n - 1) >> drop) + 1) << drop;
}
/// The smallest power-of-two capacity >= n (growth and shrink sizes), clamped as above.
constexpr std::uint64_t next_pow2_capacity(std::uint64_t n) {
  return n <= kMinCapacity ? kMinCapacity : std::min<std::uint64_t>(std::bit_ceil(n), kMaxCapacity);
}
/// TableHeader::bits: ceil(log2(capacity)) (log2 for a power of two, as in formats 1-5).
constexpr std::uint64_t capacity_bits(std::uint64_t c) {
  return static_cast<std::uint64_t>(std::bit_width(c - 1));
}
/// A table header's capacity and bits words agree and name a capacity: checked wherever a
/// table is taken from shared memory, before its size is believed.
constexpr bool table_shape_ok(std::uint64_t cap, std::uint64_t bits) {
  return is_capacity(cap) && bits == capacity_bits(cap);
}
/// A key's home bucket in a table of `capacity` buckets (see "Table capacities").
constexpr std::uint64_t home_of(std::uint64_t hash, std::uint64_t capacity) {
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(hash) * capacity) >> 64);
}
/// The bucket after i in a probe run: linear, wrapping at the end of the table.
constexpr std::uint64_t next_bucket(std::uint64_t i, std::uint64_t capacity) {
  return i + 1 == capacity ? 0 : i + 1;
}
static_assert(is_capacity(8) && is_capacity(64) && is_capacity(192) && is_capacity(448) &&
                  is_capacity(640) && !is_capacity(24) && !is_capacity(96) && !is_capacity(576),
              "capacities: 8, 16, 32, then four multiples of 64 per doubling");
static_assert(next_capacity(33) == 64 && next_capacity(129) == 192 && next_capacity(513) == 640 &&
                  next_capacity(1572864) == 1572864 && next_capacity(1572865) == 1835008,
              "next_capacity rounds up to the next capacity");
static_assert(home_of(~std::uint64_t{0}, 1024) == (~std::uint64_t{0} >> 54),
              "a power of two maps as hash >> (64 - bits)");
static_assert(table_bytes(kMaxCapacity) > (std::size_t{1} << 46), "kMaxCapacity fits no segment");

/// The key hash (pinned by a golden test: changing it changes where keys live): the two halves
/// of the 128-bit product of `k ^ seed` and the golden-ratio constant, xored ("mulx", as
/// Boost.Unordered's foa tables post-mix an integer key). Format 7; formats up to 6 used the
/// MurmurHash3 finalizer, two multiplies and three shift-xors: one multiply is ~10 fewer
/// instructions and a shorter chain before a lookup's first load. Every bit of k reaches the
/// high half (the home position) through the product; the low byte (the fingerprint) is the low
/// byte of the high half xored with that of the low half.
constexpr std::uint64_t hash_key(std::uint64_t k, std::uint64_t seed) {
  const unsigned __int128 p = static_cast<unsigned __int128>(k ^ seed) * 0x9E3779B97F4A7C15ULL;
  return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
}

}  // namespace shmap::detail
