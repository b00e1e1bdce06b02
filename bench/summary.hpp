// shmap benchmarks — the console reporter both micro-benchmark programs share: Google
// Benchmark's own output, plus each benchmark's median Mops/s kept by name
// ("workload/peer/size") for the summary tables each program prints at the end.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace shmap_bench {

class MedianReporter : public benchmark::ConsoleReporter {
 public:
  MedianReporter() : ConsoleReporter(::isatty(1) ? OO_Defaults : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      // The median of repetitions, or the single run when there are none.
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      const bool single = r.run_type == Run::RT_Iteration && r.repetitions <= 1;
      if (r.error_occurred || !(median || single)) continue;
      const auto it = r.counters.find("items_per_second");
      if (it != r.counters.end()) mops_[r.run_name.function_name] = it->second.value / 1e6;
    }
  }

 protected:
  /// Median Mops/s of workload w on peer p at size `size`; 0 if it did not run.
  double get(const std::string& w, const std::string& p, const std::string& size) const {
    const auto it = mops_.find(w + "/" + p + "/" + size);
    return it == mops_.end() ? 0.0 : it->second;
  }
  /// A table cell: v printed with fmt, or "-" when v is 0 (not measured).
  static void print_or_dash(double v, const char* fmt) {
    if (v > 0) {
      std::printf(" ");
      std::printf(fmt, v);
      std::printf(" |");
    } else {
      std::printf(" - |");
    }
  }

 private:
  std::map<std::string, double> mops_;
};

}  // namespace shmap_bench
