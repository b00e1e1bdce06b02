// shmap — growth of one attached map by a chain of tables with incremental migration (the
// Migration type): resizing (maybe_resize, fit_table, grow_stuck), linking and publishing a
// successor, moving buckets up the chain (move_bucket, settle, help_migrate), and reading the
// chain (top_table, load_chain). Implemented in src/migration.cpp, whose top comment has the race
// essay (what can race while a table is migrated, and "Successors that are too small"). What one
// table is, and probing in it, is a Tables' (table.hpp). MapImpl composes one
// (MapImpl::migration()) and keeps shorthands (top_header(), help_migrate(), ...) so that its
// callers did not change.
#pragma once

#include <cstddef>
#include <cstdint>

#include "shmap/detail/layout.hpp"
#include "shmap/detail/table.hpp"

namespace shmap::detail {

class MapImpl;

/// The chain of tables of one map and the migration along it. Holds only a reference back to
/// its map (its tables, handles and size).
class Migration {
 public:
  explicit Migration(const MapImpl& m) : m_(m) {}
  Migration(const Migration&) = delete;
  Migration& operator=(const Migration&) = delete;

  // ---- the chain ----------------------------------------------------------------------------
  /// The newest table: current_table, or past it a successor linked but not yet published
  /// (its linker stopped or died between the two steps). Writers publish what they pass.
  /// *top (if given) receives the newest table's header, validated by table().
  std::uint64_t top_table(bool publish, TableHeader** top = nullptr) const;
  TableHeader* top_header(bool publish) const {
    TableHeader* t = nullptr;
    top_table(publish, &t);
    return t;
  }
  /// The chain from t down: out[0] = t, out[i + 1] = out[i]->older. Returns its length.
  std::size_t load_chain(TableHeader* t, TableHeader** out) const;
  /// Throws corrupt if t, the newest table, has no successor although one of its buckets
  /// says its key moved on (only damage writes that; a retry would spin for ever).
  void check_forward(TableHeader* t) const;

  // ---- resizing -----------------------------------------------------------------------------
  /// Starts a resize of t if it is over its load limit (or, with shrink, far under it). With
  /// force, resizes even under the limit (t is physically full). With fit (compact()), into
  /// the smallest capacity that holds the live entries at a load of at most 0.7, if that is
  /// smaller than t (layout.hpp, "Table capacities").
  void maybe_resize(TableHeader* t, bool shrink, bool force = false, bool fit = false) const;
  /// compact()'s resize: fits the current table to its live entries (maybe_resize with fit)
  /// and finishes the migration, a few times while that still shrinks it.
  void fit_table() const;
  /// t is (or is about to be) too small for what migration and writers put into it: links a
  /// successor sized for everything the chain below t can hold, unless t has one already, and
  /// publishes it. Works whether or not t is still assimilating an older table.
  void grow_stuck(TableHeader* t) const;
  /// Links n_off as t's successor (or, if t has one already, frees n_off and adopts that one)
  /// and publishes it as the current table. Returns the successor's offset.
  std::uint64_t link_successor(TableHeader* t, std::uint64_t n_off) const;

  // ---- moving entries up the chain ----------------------------------------------------------
  /// Moves bucket i of `older` into `newer` (freeze, copy, mark MOVED); idempotent.
  void move_bucket(TableHeader* older, std::uint64_t i, TableHeader* newer) const;
  /// Makes `newer` authoritative for k: moves k's bucket in `older`, or seals its probe run.
  void settle(TableHeader* older, TableHeader* newer, std::uint64_t k) const;
  /// Migrates up to `chunks` chunks of newer->older; returns true once migration is complete.
  /// A chain of three or more finishes the oldest migration first (depth: recursion guard).
  bool help_migrate(TableHeader* newer, std::size_t chunks, std::size_t depth = 0) const;
  /// Runs migration chunks until the current table has no older table.
  void finish_migration() const;
  /// Copies the FROZEN bucket b (read as c) up the chain, then marks it MOVED.
  void copy_frozen(BucketRef b, Cell c, TableHeader* newer) const;
  /// A size-changing CAS of b from c to {value, state}, recorded in this thread's lane first
  /// (as a write is), so that `delta` is added to the size exactly once even if this process
  /// dies between the CAS and the count. Returns whether the CAS landed.
  bool counted_cas(Slot& b, const Cell& c, std::uint64_t value, std::uint64_t state,
                   std::int64_t delta) const;
  /// Adds a bulk-loaded table's entry count to the size, exactly once (TableHeader::bulk).
  void help_bulk(TableHeader* t) const;

 private:
  const MapImpl& m_;
};

}  // namespace shmap::detail
