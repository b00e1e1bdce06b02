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
#pragma once

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

}  // namespace shmap::detail
