// Adversarial checks shared by tests/mp/adversary_test.cpp (processes) and
// tests/unit/adversary_threads_test.cpp (threads, TSan).
//
// A per-key linearizability check with single-writer keys. Each key is owned by one writer
// thread that knows its exact state. The owner's n-th operation on a key has sequence number
// s = n (1, 2, ...): an even s erases the key, an odd s leaves it holding the value s (through
// insert, insert_or_assign, compare_exchange or fetch_add, whichever fits the known state;
// every return value is checked against the known state). After the operation returns, the
// owner publishes acked[key] = s (release).
//
// A reader reads a = acked[key], then looks the key up, then reads b = acked[key]. The lookup
// overlaps exactly the operations a+1 .. b+1 (b+1 may be in flight), so its answer must be
// the state after one of the operations a .. b+1:
//   a value v:  v odd and a <= v <= b + 1            (v < a: a stale value after an ack)
//   absent:     a == 0, or some even s in [a, b + 1]  (else: a lost value)
// Any other answer -- a value never written, an old value, an erased key coming back -- is
// a bug. A walk (for_each) is checked the same way with a, b read around the whole walk, and
// a key whose a is odd and on which no operation had begun by the end of the walk (the
// owner stores started[key] = s before operation s) was present for the whole walk: it must
// be visited, once.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "shmap/detail/map_impl.hpp"
#include "shmap/shmap.hpp"

namespace shmap::test::adv {

/// Shared (or process-local) state of one checked key.
struct alignas(64) KeyState {
  std::atomic<std::uint64_t> acked{0};    // last operation that returned
  std::atomic<std::uint64_t> started{0};  // last operation begun (stored before it starts)
};

inline std::uint64_t key_of(std::uint64_t id) { return 0x5eed'0000'0000ULL + id * 0x10001ULL; }

/// The answer `got` for key with acked bounds [a, b] is possible (see above).
inline bool answer_possible(std::uint64_t a, std::uint64_t b, std::optional<std::uint64_t> got) {
  if (got) {
    const std::uint64_t v = *got;
    return (v & 1) == 1 && v >= a && v <= b + 1;
  }
  if (a == 0 || (a & 1) == 0) return true;
  return b + 1 > a;  // a+1 (even) is in [a, b+1]
}

inline std::string describe(std::uint64_t id, std::uint64_t a, std::uint64_t b,
                            std::optional<std::uint64_t> got) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "key id %llu: acked %llu before, %llu after, got %s%llu",
                (unsigned long long)id, (unsigned long long)a, (unsigned long long)b,
                got ? "" : "absent ", got ? (unsigned long long)*got : 0ULL);
  return buf;
}

/// Minimal xorshift so that this header needs nothing else.
struct Xs {
  std::uint64_t s;
  std::uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  std::uint64_t below(std::uint64_t n) { return next() % n; }
};

/// Debug aid for a failure: where k is in each table of the chain (newest first).
inline void dump_key(const Map& map, std::uint64_t k) {
  using namespace shmap::detail;
  MapImpl& m = map.impl();
  PinGuard pin(m);
  TableHeader* chain[kMaxChain];
  const std::size_t n = m.load_chain(m.table(m.top_table(false)), chain);
  for (std::size_t i = 0; i < n; ++i) {
    TableHeader* t = chain[i];
    std::size_t empty = 0;
    std::fprintf(stderr, "  table %zu @%llu cap %llu older %llu newer %llu discard %llu:", i,
                 (unsigned long long)m.offset_of(t), (unsigned long long)t->capacity,
                 (unsigned long long)t->older.load(), (unsigned long long)t->newer.load(),
                 (unsigned long long)t->discard_older);
    for (std::uint64_t j = 0; j < t->capacity; ++j) {
      const Cell c = read_cell(*m.bucket(t, j).slot);
      if (c.state() == kEmpty) ++empty;
      const std::uint64_t key = c.state() == kClaimed ? c.value : load_acquire(*m.bucket(t, j).key);
      if (c.state() != kEmpty && c.state() != kSealed && key == k) {
        const std::uint64_t h = m.home(k, t);
        std::size_t gaps = 0, seals = 0;
        for (std::uint64_t x = h; x != j; x = next_bucket(x, t->capacity)) {
          const std::uint64_t st = read_cell(*m.bucket(t, x).slot).state();
          gaps += st == kEmpty;
          seals += st == kSealed;
        }
        std::fprintf(stderr,
                     " [bucket %llu state %llu value %llu home %llu: %zu empty, %zu sealed before]",
                     (unsigned long long)j, (unsigned long long)c.state(),
                     (unsigned long long)c.value, (unsigned long long)h, gaps, seals);
      }
    }
    std::fprintf(stderr, " (%zu empty)\n", empty);
  }
}

/// The owner of keys [first, first + n): performs `ops` operations (or until *stop), checking
/// each return value. Also churns private scratch keys in bursts (inserted, found, erased) so
/// that tiny tables grow and shrink all the time. Returns false (after printing) on a wrong
/// answer. `start` holds the known state of each key when the owner takes over (acked value).
inline bool run_owner(Map& m, KeyState* keys, std::uint64_t first, std::uint64_t n,
                      std::uint64_t scratch_base, std::uint64_t seed, const std::atomic<bool>* stop,
                      std::uint64_t max_ops, std::atomic<std::uint64_t>* ops_done,
                      std::uint64_t burst_every = 16) {
  Xs rng{seed | 1};
  std::vector<std::uint64_t> seq(n);
  for (std::uint64_t i = 0; i < n; ++i) seq[i] = keys[first + i].acked.load();
  auto fail = [&](std::uint64_t id, const char* what, std::uint64_t s) {
    std::fprintf(stderr, "owner pid %d: key id %llu op %llu: %s\n", (int)::getpid(),
                 (unsigned long long)id, (unsigned long long)s, what);
    return false;
  };
  for (std::uint64_t op = 0; op < max_ops && !stop->load(std::memory_order_relaxed); ++op) {
    const std::uint64_t i = rng.below(n);
    const std::uint64_t id = first + i;
    const std::uint64_t k = key_of(id);
    const std::uint64_t prev = seq[i];
    const bool present = (prev & 1) == 1;
    const std::uint64_t s = prev + 1;
    const unsigned how = static_cast<unsigned>(rng.below(4));
    keys[id].started.store(s, std::memory_order_release);
    if ((s & 1) == 0) {  // erase
      if (!m.erase(k)) return fail(id, "erase of a present key returned false", s);
    } else if (!present) {
      switch (how) {
        case 0:
          if (!m.insert(k, s)) return fail(id, "insert of an absent key returned false", s);
          break;
        case 1:
          if (!m.insert_or_assign(k, s)) return fail(id, "insert_or_assign: not absent", s);
          break;
        case 2:
          if (m.fetch_add(k, s) != 0) return fail(id, "fetch_add on absent key: not 0", s);
          break;
        default:
          if (m.compare_exchange(k, s - 2, s)) return fail(id, "CAS on absent key succeeded", s);
          if (m.erase(k)) return fail(id, "erase of an absent key returned true", s);
          if (!m.insert(k, s)) return fail(id, "insert of an absent key returned false", s);
          break;
      }
    } else {
      switch (how) {
        case 0:
          if (m.insert(k, s)) return fail(id, "insert of a present key returned true", s);
          if (m.insert_or_assign(k, s)) return fail(id, "insert_or_assign: absent", s);
          break;
        case 1:
          if (m.compare_exchange(k, prev + 7, s)) return fail(id, "CAS with a wrong expected", s);
          if (!m.compare_exchange(k, prev, s)) return fail(id, "CAS with the right expected", s);
          break;
        case 2:
          if (m.fetch_add(k, s - prev) != prev) return fail(id, "fetch_add: wrong previous", s);
          break;
        default: {
          const auto v = m.find(k);
          if (v != prev) return fail(id, "owner's own find: not its last value", s);
          if (m.insert_or_assign(k, s)) return fail(id, "insert_or_assign: absent", s);
          break;
        }
      }
    }
    seq[i] = s;
    keys[id].acked.store(s, std::memory_order_release);
    if (ops_done != nullptr) ops_done->fetch_add(1, std::memory_order_relaxed);
    // A burst of scratch keys now and then: the tiny map grows, then shrinks again.
    if (rng.below(burst_every) == 0) {
      // Fresh keys each time: every burst claims new buckets, so tombstones pile up and
      // tables are replaced (grown, shrunk, or renewed at the same size) all the time.
      const std::uint64_t burst = 8 + rng.below(40);
      const std::uint64_t sb = scratch_base + (op << 6);
      for (std::uint64_t j = 0; j < burst; ++j) {
        if (!m.insert(sb + j, j)) return fail(id, "scratch insert found it present", j);
      }
      for (std::uint64_t j = 0; j < burst; ++j) {
        const auto got = m.find(sb + j);
        if (got != j) {
          static std::atomic<bool> dumped{false};
          if (dumped.exchange(true)) return false;
          std::fprintf(stderr, "owner pid %d: scratch key %llu (j %llu of %llu): find gave %s%llu",
                       (int)::getpid(), (unsigned long long)(sb + j), (unsigned long long)j,
                       (unsigned long long)burst, got ? "" : "absent ",
                       got ? (unsigned long long)*got : 0ULL);
          for (std::uint64_t x = 0; x < burst; ++x) {
            if (m.find(sb + x) != x) std::fprintf(stderr, " [j %llu wrong]", (unsigned long long)x);
          }
          const auto again = m.find(sb + j);
          std::fprintf(stderr, "; again: %s%llu; tables %zu\n", again ? "" : "absent ",
                       again ? (unsigned long long)*again : 0ULL, m.stats().tables);
          dump_key(m, sb + j);
          return fail(id, "scratch find: wrong", j);
        }
      }
      for (std::uint64_t j = 0; j < burst; ++j) {
        if (!m.erase(sb + j)) return fail(id, "scratch erase found it absent", j);
      }
    }
  }
  return true;
}

/// A reader of keys [0, nkeys): `rounds` lookups (find, or find_many of a few keys), each
/// checked against the acked bounds. Returns false (after printing) on an impossible answer.
inline bool run_reader(const Map& m, const KeyState* keys, std::uint64_t nkeys, std::uint64_t seed,
                       const std::atomic<bool>* stop, std::atomic<std::uint64_t>* reads) {
  Xs rng{seed | 1};
  constexpr std::size_t kBatch = 12;
  std::uint64_t ids[kBatch], ks[kBatch], a[kBatch];
  std::optional<std::uint64_t> out[kBatch];
  while (!stop->load(std::memory_order_relaxed)) {
    const std::size_t n = rng.below(4) == 0 ? kBatch : 1;
    for (std::size_t j = 0; j < n; ++j) {
      ids[j] = rng.below(nkeys);
      ks[j] = key_of(ids[j]);
      a[j] = keys[ids[j]].acked.load(std::memory_order_acquire);
    }
    if (n == 1) {
      out[0] = m.find(ks[0]);
    } else {
      m.find_many(std::span<const std::uint64_t>(ks, n),
                  std::span<std::optional<std::uint64_t>>(out, n));
    }
    for (std::size_t j = 0; j < n; ++j) {
      const std::uint64_t b = keys[ids[j]].acked.load(std::memory_order_acquire);
      if (!answer_possible(a[j], b, out[j])) {
        std::fprintf(stderr, "reader pid %d (%s): %s\n", (int)::getpid(),
                     n == 1 ? "find" : "find_many", describe(ids[j], a[j], b, out[j]).c_str());
        return false;
      }
    }
    if (reads != nullptr) reads->fetch_add(n, std::memory_order_relaxed);
  }
  return true;
}

/// As run_reader, through Map::Session: each session lasts a random 1..4000 lookups, so its
/// view of the current table goes stale inside it (the table is grown, shrunk, replaced and
/// migrated away meanwhile: layout.hpp, "Fingerprints"), and every answer is checked against
/// the acked bounds like Map::find's.
inline bool run_session_reader(const Map& m, const KeyState* keys, std::uint64_t nkeys,
                               std::uint64_t seed, const std::atomic<bool>* stop,
                               std::atomic<std::uint64_t>* reads) {
  Xs rng{seed | 1};
  while (!stop->load(std::memory_order_relaxed)) {
    Map::Session s(m);
    const std::uint64_t n = 1 + rng.below(4000);
    for (std::uint64_t r = 0; r < n; ++r) {
      const std::uint64_t id = rng.below(nkeys);
      const std::uint64_t a = keys[id].acked.load(std::memory_order_acquire);
      const std::optional<std::uint64_t> got = s.find(key_of(id));
      const std::uint64_t b = keys[id].acked.load(std::memory_order_acquire);
      if (!answer_possible(a, b, got)) {
        std::fprintf(stderr, "reader pid %d (Session::find, lookup %llu of its session): %s\n",
                     (int)::getpid(), (unsigned long long)r, describe(id, a, b, got).c_str());
        dump_key(m, key_of(id));
        return false;
      }
    }
    if (reads != nullptr) reads->fetch_add(n, std::memory_order_relaxed);
  }
  return true;
}

/// What a writer killed (SIGKILL) between its claim CAS and its fingerprint store leaves, made
/// on purpose and often: like a write, it helps the migration under way and settles its key in
/// the older tables, then walks its key's run in the newest table as probe() does (writing the
/// fingerprints of claims it passes that read 0) and claims the first EMPTY bucket -- and then
/// writes no fingerprint. Its keys are fresh ([key_base, ...)) and never written by anyone
/// else. Every other claim "resumes" after a pause (a SIGSTOPped claimer continued): it writes
/// the fingerprint and completes the insert through Map::insert, which must report the key
/// absent; then a Session made *before* the claim, and Map::find, must find it.
/// Returns false (after printing) on a wrong answer.
inline bool run_dead_claimer(Map& map, const std::atomic<bool>* stop, std::uint64_t key_base,
                             std::uint64_t seed, std::atomic<std::uint64_t>* dead,
                             std::atomic<std::uint64_t>* resumed) {
  using namespace shmap::detail;
  MapImpl& m = map.impl();
  Xs rng{seed | 1};
  std::vector<std::uint64_t> done;  // resumed keys, value = key ^ 0x5a5a
  for (std::uint64_t next = 0; !stop->load(std::memory_order_relaxed); ++next) {
    const std::uint64_t k = key_base + next;
    // Paced: a dead claim takes a bucket for good (until its table is migrated away).
    std::this_thread::sleep_for(std::chrono::microseconds(20 + rng.below(100)));
    Map::Session view(map);
    (void)view.find(k);  // takes the view of the current table now
    std::uint8_t* fp_byte = nullptr;
    std::uint8_t want = 0;
    {
      PinGuard pin(m);
      TableHeader* t = m.table(m.top_table(true));
      if (t->older.load(std::memory_order_acquire) != 0) {
        m.help_migrate(t, kChunksPerWrite);
        TableHeader* chain[kMaxChain];
        for (std::size_t i = m.load_chain(t, chain) - 1; i > 0; --i) {
          m.settle(chain[i], chain[i - 1], k);
        }
      }
      // Now and then a slow claimer: its table may be superseded before it claims.
      if (rng.below(8) == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng.below(300)));
      std::uint8_t* fps = m.fingerprints(t);
      const std::uint64_t cap = t->capacity;
      const std::uint64_t h = hash_key(k, m.seed());
      want = fingerprint(h);
      std::uint64_t i = home_of(h, cap);
      for (std::uint64_t n = 0; n < cap;) {
        const std::uint8_t f =
            std::atomic_ref<std::uint8_t>(fps[i]).load(std::memory_order_acquire);
        if (f != want && f != kFpFree && f != kFpSealing) {
          i = next_bucket(i, cap);
          ++n;
          continue;
        }
        const Cell c = read_cell(*m.bucket(t, i).slot);
        if (c.state() == kEmpty) {
          if (cas128(&m.bucket(t, i).slot->value, c.value, c.meta, k,
                     next_meta(c.meta, kClaimed))) {
            fp_byte = &fps[i];  // claimed -- and "killed" before the fingerprint
            break;
          }
          continue;
        }
        if (c.state() == kSealed) break;  // superseded: no claim this time
        const std::uint64_t key =
            c.state() == kClaimed ? c.value : load_acquire(*m.bucket(t, i).key);
        if (f == kFpFree) {
          std::atomic_ref<std::uint8_t>(fps[i]).store(fingerprint(hash_key(key, m.seed())),
                                                      std::memory_order_release);
        }
        i = next_bucket(i, cap);
        ++n;
      }
      if (fp_byte != nullptr && dead != nullptr) dead->fetch_add(1, std::memory_order_relaxed);
      if (fp_byte != nullptr && rng.below(2) == 0) {
        // Resumes: the claimer finishes its write (its table is pinned, so still mapped).
        std::this_thread::sleep_for(std::chrono::microseconds(rng.below(500)));
        std::atomic_ref<std::uint8_t>(*fp_byte).store(want, std::memory_order_release);
      } else {
        continue;  // stays dead
      }
    }
    if (!map.insert(k, k ^ 0x5a5a)) {
      std::fprintf(stderr, "dead claimer pid %d: insert of resumed key %llu found it present\n",
                   (int)::getpid(), (unsigned long long)k);
      return false;
    }
    done.push_back(k);
    if (resumed != nullptr) resumed->fetch_add(1, std::memory_order_relaxed);
    // The session made before the claim still holds its old view.
    for (int r = 0; r < 4; ++r) {
      const std::uint64_t x = r == 0 ? k : done[rng.below(done.size())];
      const auto s = view.find(x);
      const auto f = map.find(x);
      if (s != (x ^ 0x5a5a) || f != (x ^ 0x5a5a)) {
        std::fprintf(stderr,
                     "dead claimer pid %d: acknowledged key %llu: Session::find %s, Map::find %s\n",
                     (int)::getpid(), (unsigned long long)x, s ? "present" : "ABSENT",
                     f ? "present" : "ABSENT");
        dump_key(map, x);
        return false;
      }
    }
  }
  return true;
}

/// One walk checked against [a, b] read around it: values possible, each key at most once, and
/// every key present for the whole walk (a == b, odd) visited. Keys outside [key_of(0),
/// key_of(nkeys)) are counted in *others. Returns an empty string or what went wrong.
inline std::string check_walk(const Map& m, const KeyState* keys, std::uint64_t nkeys,
                              std::size_t* others = nullptr) {
  std::vector<std::uint64_t> a(nkeys), b(nkeys);
  std::vector<std::optional<std::uint64_t>> seen(nkeys);
  std::vector<std::uint8_t> times(nkeys, 0);
  for (std::uint64_t i = 0; i < nkeys; ++i) a[i] = keys[i].acked.load(std::memory_order_acquire);
  std::size_t other = 0;
  m.for_each([&](std::uint64_t k, std::uint64_t v) {
    const std::uint64_t rel = k - key_of(0);
    if (k >= key_of(0) && rel % 0x10001ULL == 0 && rel / 0x10001ULL < nkeys) {
      const std::uint64_t id = rel / 0x10001ULL;
      ++times[id];
      seen[id] = v;
    } else {
      ++other;
    }
  });
  std::vector<std::uint64_t> started(nkeys);
  for (std::uint64_t i = 0; i < nkeys; ++i) {
    b[i] = keys[i].acked.load(std::memory_order_acquire);
    started[i] = keys[i].started.load(std::memory_order_acquire);
  }
  if (others != nullptr) *others = other;
  for (std::uint64_t i = 0; i < nkeys; ++i) {
    if (times[i] > 1) return "for_each visited " + describe(i, a[i], b[i], seen[i]) + " twice";
    if (times[i] == 1 && !answer_possible(a[i], b[i], seen[i])) {
      return "for_each: " + describe(i, a[i], b[i], seen[i]);
    }
    // Present for the whole walk: odd before it, and no operation on it begun by its end.
    if (times[i] == 0 && started[i] == a[i] && (a[i] & 1) == 1) {
      return "for_each missed a key present for the whole walk: " +
             describe(i, a[i], b[i], std::nullopt);
    }
  }
  return {};
}

/// Makes successors that are too small on purpose, as a racy count can (DESIGN.md §4,
/// "Successors that turn out too small"): whenever the newest table has no migration under
/// way, links and publishes a capacity-8 successor for it (or one between powers of two, or
/// compact()'s fit), whatever it holds. Migration then
/// finds that successor full, copies follow its own successor (grow_stuck), writers settle
/// keys through chains of three. Paced (`every` between attempts) so the map makes progress.
/// Counts the successors it linked in *linked, and the chains of 3+ it saw in *chains3.
inline void run_saboteur(Map& map, const std::atomic<bool>* stop, std::chrono::microseconds every,
                         std::atomic<std::uint64_t>* linked, std::atomic<std::uint64_t>* chains3) {
  using namespace shmap::detail;
  MapImpl& m = map.impl();
  std::uint64_t strikes = 0;
  while (!stop->load(std::memory_order_relaxed)) {
    {
      PinGuard pin(m);
      TableHeader* t = m.table(m.top_table(true));
      TableHeader* chain[kMaxChain];
      const std::size_t n = m.load_chain(t, chain);
      if (n >= 3) chains3->fetch_add(1, std::memory_order_relaxed);
      // Help the migration under way to its end (as for_each does), then strike at once.
      if (n > 1) m.finish_migration();
      t = m.table(m.top_table(true));
      // Only on tables of up to 16384 buckets: the replacement of a too-small successor is sized
      // from the capacities of the chain (4x the older table), so striking at every size would grow
      // the map without bound (it reached 28 GB of segment for ~100 live keys).
      if (t->capacity <= 16384 && t->older.load() == 0 && t->newer.load() == 0) {
        // Every other strike, a capacity between powers of two (format 6: what compact() and
        // bulk loads make), too small or not for what t holds; every 8th, compact()'s own fit.
        static constexpr std::uint64_t kBetween[] = {192, 320, 384, 448, 640, 768, 896, 1280};
        ++strikes;
        if (strikes % 8 == 0) {
          m.fit_table();
        } else {
          const std::uint64_t cap = strikes % 2 != 0 ? kBetween[(strikes / 2) % 8] : kMinCapacity;
          const std::uint64_t off = m.create_table(cap, m.offset_of(t));
          if (m.link_successor(t, off) == off) linked->fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    std::this_thread::sleep_for(every);
  }
}

}  // namespace shmap::test::adv
