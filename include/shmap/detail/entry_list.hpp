// shmap — the value record of a string map (StringMap): the entries whose keys share one
// 64-bit hash, one record per bucket. Almost always one entry; two or more only when two keys
// hash alike (about 1 in 2^64 per pair), and then they sit together.
//
//   offset 0   u32 count         entries in the record (>= 1)
//   offset 4   u32 bytes         bytes of the whole payload, this header included (mult. of 8)
//   offset 8   entries, each:    u32 key_len, u32 value_len, the key's bytes, the value's
//                                bytes, zero padding to a multiple of 8
//
// The payload is written once, before the CAS that publishes it (records.hpp), and never
// changed: a reader parses it in place, pinned. Every length is checked against `bytes`, and
// `bytes` against the largest record, before it is used: a damaged record is reported, never
// read past its end.
//
// Short entries live in the bucket (format 8). A string map's bucket holds a key word and a
// value word (InlineEntry below):
//   key word    a short key -- up to 7 bytes, or 8 whose last byte is 0 (an integer below
//               2^56 stored little-endian, as the Python binding stores int keys) -- is its
//               own word: its first 7 bytes, the first one lowest, and its length (0..8) in
//               bits 56-59; bits 60-63 clear. Any other key's word is its 64-bit hash with
//               bit 63 set. Two keys share a word only if both are long and hash alike.
//   value word  the offset of the entry list record (a multiple of 8), or -- when the list is
//               one entry under a short key whose value has up to 7 bytes -- the entry itself:
//               bit 0 set, the value's length in bits 1-3, bits 4-7 clear, the value's bytes
//               in bits 8-63, the first one lowest. Its key is the key word.
// Such an entry costs no record: a lookup reads its bucket and nothing else, and a write
// allocates, publishes and retires nothing (one CAS replaces the whole entry, as it replaces
// a record's offset). Readers decode it into an EntryList payload of their own
// (InlineEntry::decode), so everything that reads lists reads both alike.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace shmap::detail {

class EntryList {
 public:
  static constexpr std::size_t kHeaderBytes = 8;
  /// Bytes one entry takes in a record.
  static constexpr std::size_t entry_bytes(std::size_t key_len, std::size_t value_len) {
    return (8 + key_len + value_len + 7) / 8 * 8;
  }

  /// A view of a payload of `avail` readable bytes at p; valid() false if it is damaged.
  EntryList(const unsigned char* p, std::size_t avail) : p_(p) {
    if (avail < kHeaderBytes) return;
    count_ = get32(p);
    bytes_ = get32(p + 4);
    if (count_ == 0 || bytes_ < kHeaderBytes + 8 || bytes_ > avail || bytes_ % 8 != 0 ||
        count_ > (bytes_ - kHeaderBytes) / 8) {
      count_ = 0;
      return;
    }
    // Every entry inside `bytes`, and exactly filling it.
    std::size_t at = kHeaderBytes;
    for (std::uint32_t i = 0; i < count_; ++i) {
      if (bytes_ - at < 8) return;
      const std::uint64_t kl = get32(p + at), vl = get32(p + at + 4);
      if (kl + vl > bytes_ - at - 8) return;
      at += entry_bytes(kl, vl);
    }
    if (at != bytes_) return;
    valid_ = true;
  }
  bool valid() const { return valid_; }
  /// Entries (0 if damaged).
  std::uint32_t count() const { return valid_ ? count_ : 0; }
  std::uint32_t bytes() const { return bytes_; }

  /// Calls f(key, value) for each entry, in order, until f returns false.
  template <class F>
  void each(F&& f) const {
    std::size_t at = kHeaderBytes;
    for (std::uint32_t i = 0; i < count(); ++i) {
      const std::uint32_t kl = get32(p_ + at), vl = get32(p_ + at + 4);
      const auto* k = reinterpret_cast<const char*>(p_ + at + 8);
      if (!f(std::string_view(k, kl), std::string_view(k + kl, vl))) return;
      at += entry_bytes(kl, vl);
    }
  }
  /// The value of `key`, if an entry has it.
  bool find(std::string_view key, std::string_view* value) const {
    bool found = false;
    each([&](std::string_view k, std::string_view v) {
      if (k != key) return true;
      *value = v;
      found = true;
      return false;
    });
    return found;
  }

  /// Builds a payload: add() each entry, then data() / size().
  class Builder {
   public:
    Builder() { buf_.assign(kHeaderBytes, '\0'); }
    void add(std::string_view key, std::string_view value) {
      const std::size_t at = buf_.size();
      buf_.resize(at + entry_bytes(key.size(), value.size()), '\0');
      put32(&buf_[at], static_cast<std::uint32_t>(key.size()));
      put32(&buf_[at + 4], static_cast<std::uint32_t>(value.size()));
      std::memcpy(&buf_[at + 8], key.data(), key.size());
      std::memcpy(&buf_[at + 8 + key.size()], value.data(), value.size());
      ++count_;
      put32(&buf_[0], count_);
      put32(&buf_[4], static_cast<std::uint32_t>(buf_.size()));
    }
    std::uint32_t count() const { return count_; }
    const char* data() const { return buf_.data(); }
    std::size_t size() const { return buf_.size(); }

   private:
    std::string buf_;
    std::uint32_t count_ = 0;
  };

 private:
  static std::uint32_t get32(const unsigned char* p) {
    std::uint32_t x;
    std::memcpy(&x, p, 4);
    return x;
  }
  static void put32(char* p, std::uint32_t x) { std::memcpy(p, &x, 4); }

  const unsigned char* p_;
  std::uint32_t count_ = 0;
  std::uint32_t bytes_ = 0;
  bool valid_ = false;
};

/// The bucket words of short entries (see the top of this file). Pure functions of the words:
/// decode() validates what it reads, so a damaged word is reported, never trusted.
struct InlineEntry {
  static constexpr std::size_t kMaxKeyBytes = 8;    // the 8th byte 0
  static constexpr std::size_t kMaxValueBytes = 7;  // bits 8-63 of the value word
  static constexpr std::uint64_t kLongKey = std::uint64_t{1} << 63;
  /// Bytes of a decoded payload: the header and the largest inline entry.
  static constexpr std::size_t kPayloadBytes =
      EntryList::kHeaderBytes + EntryList::entry_bytes(kMaxKeyBytes, kMaxValueBytes);
  using Payload = unsigned char[kPayloadBytes];

  /// The word of a short key (else false).
  static bool key_word(std::string_view key, std::uint64_t* w) {
    const std::size_t n = key.size();
    if (n > kMaxKeyBytes || (n == kMaxKeyBytes && key[7] != 0)) return false;
    std::uint64_t x = 0;
    std::memcpy(&x, key.data(), n < 7 ? n : 7);  // little-endian: the first byte lowest
    *w = x | std::uint64_t{n} << 56;
    return true;
  }
  /// The word of any other key, from its hash.
  static constexpr std::uint64_t long_key_word(std::uint64_t hash) { return hash | kLongKey; }
  /// Whether a value word is an inline entry (else a record's offset).
  static constexpr bool is_inline(std::uint64_t value_word) { return (value_word & 1) != 0; }
  /// The value word of an entry whose value has up to 7 bytes (else false).
  static bool value_word(std::string_view value, std::uint64_t* w) {
    if (value.size() > kMaxValueBytes) return false;
    std::uint64_t x = 0;
    std::memcpy(&x, value.data(), value.size());
    *w = x << 8 | std::uint64_t{value.size()} << 1 | 1;
    return true;
  }
  /// The entry list of one entry that an inline value word and its key word state, written
  /// into `out`; false if the words are damaged (not a short key's word, a length past its
  /// limit, a byte set past a length, a reserved bit set).
  static bool decode(std::uint64_t key_word, std::uint64_t value_word, Payload& out) {
    if ((key_word >> 60) != 0 || !is_inline(value_word)) return false;
    const std::uint64_t kl = key_word >> 56, vl = value_word >> 1 & 7;
    const std::uint64_t key = key_word & ((std::uint64_t{1} << 56) - 1);
    const std::uint64_t value = value_word >> 8;
    if (kl > kMaxKeyBytes || (value_word & 0xf0) != 0 || (kl < 7 && key >> (8 * kl) != 0) ||
        (vl < 7 && value >> (8 * vl) != 0)) {
      return false;
    }
    const std::uint32_t bytes =
        static_cast<std::uint32_t>(EntryList::kHeaderBytes + EntryList::entry_bytes(kl, vl));
    std::memset(out, 0, kPayloadBytes);
    const std::uint32_t words[4] = {1, bytes, static_cast<std::uint32_t>(kl),
                                    static_cast<std::uint32_t>(vl)};
    std::memcpy(out, words, sizeof words);
    std::memcpy(out + 16, &key, kl < 7 ? kl : 7);  // an 8th byte is 0, as memset left it
    std::memcpy(out + 16 + kl, &value, vl);
    return true;
  }
};
static_assert(InlineEntry::kPayloadBytes == 32, "a header and an entry of 8 + 8 + 7 bytes, padded");
static_assert(std::endian::native == std::endian::little, "words hold bytes first-lowest");

}  // namespace shmap::detail
