// shmap — bulk loads of one attached map (the BulkLoad type): a table filled by one thread with
// plain stores (nobody else can see it yet), then made the map's whole content in one atomic
// step (publish_replace). A snapshot loaded into an open map (replace or merge, snapshot.cpp)
// uses it. Implemented in src/bulk_load.cpp, whose top comment has the race essay (why a
// table linked as a replacing successor loses no count and no entry, whoever dies when). MapImpl
// composes one (MapImpl::bulk_load()) and keeps shorthands (build_table(), bulk_put_many(),
// publish_replace()) so that its callers did not change.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace shmap::detail {

class MapImpl;

/// Builds a table out of sight and publishes it in place of the map's content. Holds only a
/// reference back to its map (its tables and their migration).
class BulkLoad {
 public:
  explicit BulkLoad(const MapImpl& m) : m_(m) {}
  BulkLoad(const BulkLoad&) = delete;
  BulkLoad& operator=(const BulkLoad&) = delete;

  /// A fresh, unpublished table sized for `entries`.
  std::uint64_t build_table(std::size_t entries) const;
  /// Puts k -> v into an unpublished table (single-threaded; the last value wins).
  void bulk_put(std::uint64_t table, std::uint64_t k, std::uint64_t v) const;
  /// The same for n entries at once: their buckets are prefetched first, so the cache misses
  /// of a random fill overlap.
  void bulk_put_many(std::uint64_t table, const std::pair<std::uint64_t, std::uint64_t>* kv,
                     std::size_t n) const;
  /// Makes the table the map's whole content in one atomic step; the old content is discarded
  /// (writers still in the old table are sealed out and retry in the new one).
  void publish_replace(std::uint64_t table) const;
  // (A built table that is not published is freed with Tables::discard_table.)

 private:
  const MapImpl& m_;
};

}  // namespace shmap::detail
