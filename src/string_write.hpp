// shmap — what the string maps (string_map.cpp) and the multimap (string_multimap.cpp) share:
// reading a hash's entry list, and one write that replaces it. Internal to src/.
//
// A write on a hash builds the hash's new entry list from its current one (the edit callback)
// and publishes it with the bucket's one CAS (RecordWrite, record_write.hpp): a reader sees
// the whole old list or the whole new one. The write's change of the list's length beyond its
// bucket's own goes into the table's count with its CAS (WriteIntent::extra).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "record_write.hpp"
#include "shmap/detail/entry_list.hpp"
#include "shmap/detail/map_impl.hpp"
#include "shmap/detail/records.hpp"
#include "shmap/string_map.hpp"

namespace shmap::detail {

/// The largest entry list: the largest entry, the list header and the entry's lengths.
inline constexpr std::size_t kMaxListBytes = kMaxStringEntryBytes + 16;

/// Throws corrupt: the record at w is damaged.
[[noreturn]] void damaged(const MapImpl& m, std::uint64_t w);
/// Throws corrupt: the inline entry w under key_word is damaged.
[[noreturn]] void damaged_inline(const MapImpl& m, std::uint64_t key_word, std::uint64_t w);
/// The entry list of the bucket {key_word, w}: the published record at w (pinned: it is not
/// reused while we are), validated; or the inline entry w states, decoded into `buf` (which
/// the list then views: keep it alive as long as the list). Throws corrupt for damage.
EntryList list_at(const MapImpl& m, const RecordHeap& heap, std::uint64_t key_word, std::uint64_t w,
                  InlineEntry::Payload& buf);
/// invalid_argument unless a key and a value fit in one entry.
void check_entry(const MapImpl& m, std::string_view key, std::string_view value);
/// A read-only attachment's copy of the entry list under hash h (see string_write.cpp); false
/// if h is absent. Throws corrupt for a damaged record.
bool copy_list(const MapImpl& m, std::uint64_t h, std::string* copy);
/// The word a key is stored under (entry_list.hpp, "Short entries"): a key of up to 7 bytes
/// itself, else XXH3 with the segment's seed and bit 63 set (or the test hook,
/// StringMap::hash_for_test, for every key: then no key is inline).
std::uint64_t key_hash(const MapImpl& m, std::string_view key);
/// Whether the entries stored under key word h may be inline: h is a short key's own word.
bool inline_key(std::uint64_t h);
/// f(const EntryList&) on the list of hash h, read pinned (or copied under a validated read on
/// a read-only attachment); false if h is absent.
template <class F>
bool with_list(const MapImpl& m, std::uint64_t h, F&& f) {
  if (m.read_only()) {
    std::string copy;
    if (!copy_list(m, h, &copy)) return false;
    f(EntryList(reinterpret_cast<const unsigned char*>(copy.data()), copy.size()));
    return true;
  }
  InlineEntry::Payload buf;
  if (inline_key(h)) {
    // A short key's entry may be inline: look it up by the unpinned fast path (Map::find
    // pins and unpins itself). An inline word is the whole entry -- decoding it reads nothing
    // in the segment -- so the answer is the lookup's, taken at its instant, with no pin held
    // while f runs. A record's offset is not: once unpinned, the record may have been retired
    // and reused, so it is looked up again below, pinned.
    std::uint64_t w = 0;
    if (!m.find(h, &w)) return false;
    if (InlineEntry::is_inline(w)) {
      f(list_at(m, RecordHeap(m), h, w, buf));
      return true;
    }
  }
  PinGuard pin(m);  // the record cannot be reused while we read it
  std::uint64_t w = 0;
  if (!m.find(h, &w)) return false;
  f(list_at(m, RecordHeap(m), h, w, buf));
  return true;
}
/// fn(ctx, key, value) for every entry of every list (weakly consistent, as Map::for_each).
void visit_entries(const Map& table, void (*fn)(void*, std::string_view, std::string_view),
                   void* ctx);

/// One write on the entry list of hash h: edit(const EntryList* current or nullptr,
/// EntryList::Builder& next) -> bool builds the new list (false: leave it as it is; a list
/// built empty erases the hash). edit may run more than once (a retry after a conflict) and
/// may throw (nothing is written). Returns whether the write landed.
// A write's change of a list's length is counted through a lane record, which holds 24 bits of
// it (layout.hpp, kMaxRecordedDelta): every entry takes 8 bytes or more of its list.
static_assert(kMaxListBytes / 8 <= static_cast<std::uint64_t>(kMaxRecordedDelta),
              "a list's entries fit the size change a lane record can state");

template <class Edit>
bool write_list(MapImpl& m, std::uint64_t h, bool may_insert, Edit& edit) {
  RecordWrite w(m, 0);
  const bool short_key = inline_key(h);
  InlineEntry::Payload buf;  // the current list, if it is an inline entry
  run_write(m, w, h, may_insert, [&](RecordWrite& x, std::optional<std::uint64_t> cur) {
    x.set_extra(0);  // this try's, set below if it writes
    std::optional<EntryList> list;
    std::uint32_t old_count = 0;
    if (cur) {
      list.emplace(list_at(m, x.heap(), h, *cur, buf));
      old_count = list->count();
    }
    EntryList::Builder b;
    bool change = false;
    try {
      change = edit(list ? &*list : nullptr, b);
    } catch (...) {
      x.keep();  // the block of an earlier try, never published, goes back
      throw;
    }
    if (!change) return x.keep();
    const auto extra_of = [](std::uint32_t n) { return n > 1 ? std::int64_t{n} - 1 : 0; };
    x.set_extra(extra_of(b.count()) - extra_of(old_count));
    if (b.count() == 0) return x.erase();
    if (b.size() > kMaxListBytes) {
      x.keep();
      fail(Errc::out_of_space, m.name(),
           "the entries of one 64-bit hash (one key's values, or colliding keys) do not fit in "
           "one record together (" +
               std::to_string(b.size()) + " bytes, at most " + std::to_string(kMaxListBytes) +
               "); nothing was written");
    }
    if (short_key && b.count() == 1) {
      // One entry under a short key: inline if its value is short too (no record).
      std::uint64_t word = 0;
      bool fits = false;
      EntryList(reinterpret_cast<const unsigned char*>(b.data()), b.size())
          .each([&](std::string_view k, std::string_view v) {
            std::uint64_t kw = 0;
            fits = InlineEntry::key_word(k, &kw) && kw == h && InlineEntry::value_word(v, &word);
            return false;
          });
      if (fits) return x.set_inline(word);
    }
    return x.set(x.word_for(b.data(), b.size()));
  });
  return w.committed();
}

}  // namespace shmap::detail
