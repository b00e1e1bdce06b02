// shmap — reading a string map's entry lists (string_write.hpp).
#include "string_write.hpp"

// xxHash compiled into this file (inline, header-only), as in snapshot.cpp: libshmap.a
// needs no -lxxhash.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

namespace shmap::detail {

[[noreturn]] void damaged(const MapImpl& m, std::uint64_t w) {
  fail(Errc::corrupt, m.name(),
       "the string record at offset " + std::to_string(w) + " is damaged; run 'shmap check " +
           m.name() + "'");
}

EntryList list_at(const MapImpl& m, const RecordHeap& heap, std::uint64_t key_word, std::uint64_t w,
                  InlineEntry::Payload& buf) {
  if (InlineEntry::is_inline(w)) {
    // The whole entry is in the two words we hold: nothing in the segment to read.
    if (!InlineEntry::decode(key_word, w, buf)) damaged_inline(m, key_word, w);
    return EntryList(buf, sizeof buf);
  }
  // The record's bytes were written before the CAS that published w (a full barrier); this
  // orders our reads after our read of w in the C++ model too.
  std::atomic_thread_fence(std::memory_order_acquire);
  const auto* p = static_cast<const unsigned char*>(heap.value(w, EntryList::kHeaderBytes));
  std::uint32_t bytes = 0;
  std::memcpy(&bytes, p + 4, 4);
  if (bytes < EntryList::kHeaderBytes || bytes > kMaxListBytes) damaged(m, w);
  p = static_cast<const unsigned char*>(heap.value(w, bytes));
  EntryList list(p, bytes);
  if (!list.valid()) damaged(m, w);
  return list;
}

[[noreturn]] void damaged_inline(const MapImpl& m, std::uint64_t key_word, std::uint64_t w) {
  fail(Errc::corrupt, m.name(),
       "the bucket of key word " + std::to_string(key_word) + " holds a damaged inline entry (" +
           std::to_string(w) + "); run 'shmap check " + m.name() + "'");
}

void check_entry(const MapImpl& m, std::string_view key, std::string_view value) {
  if (key.size() + value.size() > kMaxStringEntryBytes) {
    fail(Errc::invalid_argument, m.name(),
         "a key of " + std::to_string(key.size()) + " bytes and a value of " +
             std::to_string(value.size()) + " bytes take " +
             std::to_string(key.size() + value.size()) + " bytes; a string map holds up to " +
             std::to_string(kMaxStringEntryBytes) + " per entry; nothing was written");
  }
}

/// A read-only attachment's read of the entry list under hash h: copied into *copy under a
/// validated read (read_only.cpp), a valid list, or false if h is absent. A read-only pin
/// protects nothing, but a record is reused only after a reclaimer advanced the global epoch
/// past its unlink, so a copy made while the epoch stood still is of a record nobody reused.
/// Throws corrupt for a damaged record.
bool copy_list(const MapImpl& m, std::uint64_t h, std::string* copy) {
  const RecordHeap heap(m);
  std::uint64_t at = 0;
  bool found = false, outside = false, inline_damage = false;
  m.read_validated("read", [&] {
    found = outside = inline_damage = false;
    const std::optional<std::uint64_t> w = m.ro_lookup(h);
    if (!w) return;
    found = true;
    at = *w;
    if (InlineEntry::is_inline(*w)) {
      InlineEntry::Payload buf;
      if (!InlineEntry::decode(h, *w, buf)) {
        inline_damage = true;  // a stale word (read again) or damage (reported below)
        return;
      }
      copy->assign(reinterpret_cast<const char*>(buf), sizeof buf);
      return;
    }
    const auto* p = static_cast<const unsigned char*>(heap.value_or_null(*w, 8));
    std::uint32_t bytes = 0;
    if (p != nullptr) std::memcpy(&bytes, p + 4, 4);
    if (p == nullptr || bytes < 8 || bytes > kMaxListBytes ||
        (p = static_cast<const unsigned char*>(heap.value_or_null(*w, bytes))) == nullptr) {
      outside = true;  // a stale word (read again) or damage (reported below)
      return;
    }
    copy->assign(reinterpret_cast<const char*>(p), bytes);
  });
  if (!found) return false;
  if (inline_damage) damaged_inline(m, h, at);
  if (outside) damaged(m, at);
  if (!EntryList(reinterpret_cast<const unsigned char*>(copy->data()), copy->size()).valid()) {
    damaged(m, at);
  }
  return true;
}

std::uint64_t key_hash(const MapImpl& m, std::string_view key) {
  if (StringMap::hash_for_test != nullptr) return StringMap::hash_for_test(key);
  std::uint64_t w = 0;
  if (InlineEntry::key_word(key, &w)) return w;
  return InlineEntry::long_key_word(XXH3_64bits_withSeed(key.data(), key.size(), m.seed()));
}

bool inline_key(std::uint64_t h) {
  // Under the test hook a word is whatever the hook said, not the key: no entry is inline.
  return StringMap::hash_for_test == nullptr && (h & InlineEntry::kLongKey) == 0;
}

void visit_entries(const Map& table, void (*fn)(void*, std::string_view, std::string_view),
                   void* ctx) {
  const MapImpl& m = table.impl();
  if (m.read_only()) {
    // The words from a walk; a short entry is whole in the walk's copy of its two words, a
    // record is read by a validated read (see copy_list). (Looking a short entry up again by
    // its key word missed a damaged word -- not at its home any more -- as "erased since".)
    std::vector<std::pair<std::uint64_t, std::uint64_t>> words;
    table.for_each([&](std::uint64_t h, std::uint64_t w) { words.emplace_back(h, w); });
    const RecordHeap heap(m);
    std::string copy;
    auto each = [&](const EntryList& list) {
      list.each([&](std::string_view k, std::string_view v) {
        fn(ctx, k, v);
        return true;
      });
    };
    for (const auto& [h, w] : words) {
      if (InlineEntry::is_inline(w)) {
        InlineEntry::Payload buf;
        each(list_at(m, heap, h, w, buf));  // reads nothing in the segment
      } else if (copy_list(m, h, &copy)) {  // else erased since the walk
        each(EntryList(reinterpret_cast<const unsigned char*>(copy.data()), copy.size()));
      }
    }
    return;
  }
  struct Ctx {
    void (*fn)(void*, std::string_view, std::string_view);
    void* ctx;
    const MapImpl& m;
  } c{fn, ctx, m};
  // MapImpl::for_each calls back pinned: a record stays put while fn reads it.
  m.for_each(
      [](void* p, std::uint64_t h, std::uint64_t w) {
        auto& x = *static_cast<Ctx*>(p);
        InlineEntry::Payload buf;
        list_at(x.m, RecordHeap(x.m), h, w, buf).each([&](std::string_view k, std::string_view v) {
          x.fn(x.ctx, k, v);
          return true;
        });
      },
      &c);
}

}  // namespace shmap::detail
