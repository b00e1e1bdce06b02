// A scripted writer for crash tests: a deterministic sequence of operations on one key range,
// chosen from a model of that range. The child that runs the script and the parent that checks
// it build the same sequence from the same seed, so after a SIGKILL the parent knows every
// acknowledged operation (and the one that may have been in flight) without any log.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mp_util.hpp"

namespace shmap::test::mp {

struct Op {
  enum Kind : int { kInsert, kAssign, kErase, kAdd, kCas } kind = kInsert;
  std::uint64_t index = 0;  // key index in the range
  std::uint64_t key = 0;
  std::uint64_t value = 0;      // insert/assign value, add delta, cas desired
  std::uint64_t expected = 0;   // cas expected
  bool want_bool = false;       // the return value the model predicts (insert/assign/erase/cas)
  std::uint64_t want_prev = 0;  // fetch_add's predicted previous value
};

class Script {
 public:
  /// universe: the range has this many keys. period: operations per phase; phases alternate
  /// between growing (absent keys are mostly written) and shrinking (present keys are mostly
  /// erased), so the range fills and empties again. period 0: always growing.
  Script(std::uint64_t seed, std::uint64_t base, std::uint64_t period, std::uint64_t universe)
      : rng_(seed), base_(base), period_(period), universe_(universe) {}

  /// The next operation, chosen from the model; apply() it once it is acknowledged.
  Op next() {
    Op op;
    const bool shrinking = period_ != 0 && (done_ / period_) % 2 == 1;
    op.index = rng_.below(universe_);
    op.key = key(op.index);
    const auto cur = get_index(op.index);
    const std::uint64_t s = rng_.below(100);
    if (!cur) {
      if (s < (shrinking ? 15u : 85u)) {
        op.kind = rng_.chance(50) ? Op::kInsert : Op::kAssign;
      } else if (s < (shrinking ? 40u : 90u)) {
        op.kind = Op::kAdd;
      } else if (s < (shrinking ? 70u : 95u)) {
        op.kind = Op::kErase;  // of an absent key
      } else {
        op.kind = Op::kCas;  // on an absent key
      }
    } else {
      if (s < (shrinking ? 75u : 10u)) {
        op.kind = Op::kErase;
      } else if (s < (shrinking ? 80u : 25u)) {
        op.kind = Op::kInsert;  // of a present key
      } else if (s < (shrinking ? 87u : 50u)) {
        op.kind = Op::kAssign;
      } else if (s < (shrinking ? 94u : 75u)) {
        op.kind = Op::kAdd;
      } else {
        op.kind = Op::kCas;
      }
    }
    switch (op.kind) {
      case Op::kInsert:
      case Op::kAssign:
        op.value = rng_.next();
        op.want_bool = !cur.has_value();
        break;
      case Op::kErase:
        op.want_bool = cur.has_value();
        break;
      case Op::kAdd:
        op.value = 1 + rng_.below(1u << 20);
        op.want_prev = cur.value_or(0);
        break;
      case Op::kCas:
        // Matching when present (usually); a stale expectation otherwise.
        op.want_bool = cur.has_value() && rng_.chance(80);
        op.expected = op.want_bool ? *cur : (cur ? *cur + 1 : rng_.next());
        op.value = rng_.next();
        break;
    }
    return op;
  }

  void apply(const Op& op) {
    if (op.index >= used_) {
      used_ = op.index + 1;
      has_.resize(used_, 0);
      val_.resize(used_, 0);
    }
    auto& h = has_[op.index];
    auto& v = val_[op.index];
    switch (op.kind) {
      case Op::kInsert:
        if (!h) h = 1, v = op.value;
        break;
      case Op::kAssign:
        h = 1, v = op.value;
        break;
      case Op::kErase:
        h = 0;
        break;
      case Op::kAdd:
        v = (h ? v : 0) + op.value, h = 1;
        break;
      case Op::kCas:
        if (op.want_bool) v = op.value;
        break;
    }
    ++done_;
  }

  /// Runs op on m; false (with a message in *why) if the result differs from the model's.
  static bool execute(Map& m, const Op& op, std::string* why) {
    bool got_bool = false;
    switch (op.kind) {
      case Op::kInsert:
        got_bool = m.insert(op.key, op.value);
        break;
      case Op::kAssign:
        got_bool = m.insert_or_assign(op.key, op.value);
        break;
      case Op::kErase:
        got_bool = m.erase(op.key);
        break;
      case Op::kCas:
        got_bool = m.compare_exchange(op.key, op.expected, op.value);
        break;
      case Op::kAdd: {
        const std::uint64_t prev = m.fetch_add(op.key, op.value);
        if (prev != op.want_prev) {
          *why = "fetch_add(" + std::to_string(op.key) + ") returned " + std::to_string(prev) +
                 ", model says " + std::to_string(op.want_prev);
          return false;
        }
        return true;
      }
    }
    if (got_bool != op.want_bool) {
      static const char* names[] = {"insert", "insert_or_assign", "erase", "fetch_add",
                                    "compare_exchange"};
      *why = std::string(names[op.kind]) + "(" + std::to_string(op.key) + ") returned " +
             (got_bool ? "true" : "false") + ", model says " + (op.want_bool ? "true" : "false");
      return false;
    }
    return true;
  }

  std::uint64_t key(std::uint64_t index) const { return base_ + index; }
  std::uint64_t used() const { return used_; }
  std::uint64_t done() const { return done_; }
  std::optional<std::uint64_t> get_index(std::uint64_t index) const {
    if (index >= used_ || !has_[index]) return std::nullopt;
    return val_[index];
  }
  std::uint64_t live() const {
    std::uint64_t n = 0;
    for (const auto h : has_) n += h;
    return n;
  }

 private:
  Rng rng_;
  std::uint64_t base_;
  std::uint64_t period_;
  std::uint64_t universe_;
  std::uint64_t used_ = 0;  // key indices [0, used_) may have been touched
  std::uint64_t done_ = 0;  // operations applied
  std::vector<std::uint8_t> has_;
  std::vector<std::uint64_t> val_;
};

/// Checks m against the script after `acked` acknowledged operations. With in_flight, the
/// next operation may or may not have taken effect (its process was killed during it).
/// Returns "" when m matches; else the first difference. *present counts the keys found.
inline std::string verify_script(const Map& m, std::uint64_t seed, std::uint64_t base,
                                 std::uint64_t period, std::uint64_t universe, std::uint64_t acked,
                                 bool in_flight, std::uint64_t* present) {
  Script before(seed, base, period, universe);
  for (std::uint64_t j = 0; j < acked; ++j) before.apply(before.next());
  Script after = before;
  std::optional<Op> pending;
  if (in_flight) {
    pending = after.next();
    after.apply(*pending);
  }
  *present = 0;
  for (std::uint64_t i = 0; i < after.used(); ++i) {
    const std::uint64_t k = before.key(i);
    const auto got = m.find(k);
    *present += got.has_value() ? 1 : 0;
    const auto want = before.get_index(i);
    if (got == want) continue;
    if (pending && pending->index == i && got == after.get_index(i)) continue;
    auto show = [](const std::optional<std::uint64_t>& v) {
      return v ? std::to_string(*v) : std::string("absent");
    };
    return "key " + std::to_string(k) + " (index " + std::to_string(i) + ") is " + show(got) +
           ", acknowledged state is " + show(want) + " after " + std::to_string(acked) +
           " acknowledged operations" +
           (pending && pending->index == i
                ? " (in-flight op would give " + show(after.get_index(i)) + ")"
                : std::string());
  }
  return {};
}

}  // namespace shmap::test::mp
