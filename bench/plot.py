#!/usr/bin/python3
"""Renders shmap's main ratio table (shmap / flat and shmap / bipc per workload) as a PNG.

    bench/plot.py [-o docs/bench-ratios.png] [LABEL=]results-micro.txt ...

Reads the "## Summary: median Mops/s" tables that shmap_micro prints at the end of its output
(the files bench.sh writes to bench/results/). Each file may hold several sizes; several files
are merged (a later file's size replaces an earlier one's of the same label). Give a LABEL to
compare runs, e.g. before=bench/results/run8-...-micro.txt after=bench/results/run9-...-micro.txt:
each label and size is one bar. Needs Debian's python3-matplotlib (scripts/deps.sh bench).
"""
import argparse
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (row label, shmap's workload, the peer's workload, issue 7's target vs flat, vs bipc)
ROWS = [
    ("find hit", "find_hit", "find_hit", 0.8, 10.0),
    ("find hit, Zipf", "find_hit_zipf", "find_hit_zipf", None, None),
    ("find miss", "find_miss", "find_miss", 0.5, None),
    ("find miss, Zipf", "find_miss_zipf", "find_miss_zipf", None, None),
    ("90/10 mix", "mixed", "mixed", 0.7, None),
    ("90/10 mix, Zipf", "mixed_zipf", "mixed_zipf", None, None),
    ("insert (growing)", "insert", "insert", 0.5, None),
    ("find_many vs one-at-a-time", "find_hit_many", "find_hit", 2.0, None),
]


def parse(path):
    """{size: {peer: {workload: Mops/s}}} from one shmap_micro output."""
    out = {}
    size = None
    peers = None
    in_summary = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("## Summary"):
            in_summary = True
            continue
        if not in_summary:
            continue
        m = re.match(r"### (\S+) keys", line)
        if m:
            size, peers = m.group(1), None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| workload |"):
            # The first table of a size holds Mops/s; the second ("vs ...") ratios.
            peers = cells[1:] if not any(c.startswith("vs ") for c in cells) else None
            continue
        if peers and size and line.startswith("| ") and not line.startswith("|---"):
            for peer, v in zip(peers, cells[1:]):
                try:
                    out.setdefault(size, {}).setdefault(peer, {})[cells[0]] = float(v)
                except ValueError:
                    pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("files", nargs="+", help="[LABEL=]path of a shmap_micro output")
    ap.add_argument("-o", "--out", default="docs/bench-ratios.png")
    ap.add_argument("--title", default="shmap / peer, single thread, median Mops/s ratio")
    args = ap.parse_args()

    series = {}  # (label, size) -> {peer: {workload: mops}}
    for spec in args.files:
        label, _, path = spec.rpartition("=")
        for size, peers in parse(path).items():
            series[(label, size)] = peers
    if not series:
        sys.exit("plot.py: no summary table found in " + ", ".join(args.files))

    def size_key(s):
        n = float(re.sub(r"[KMG]$", "", s))
        return n * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)

    labels = list(dict.fromkeys(k[0] for k in series))
    keys = sorted(series, key=lambda k: (size_key(k[1]), labels.index(k[0])))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5), sharey=True)
    height = 0.8 / len(keys)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, peer, tcol in ((axes[0], "flat", 3), (axes[1], "bipc", 4)):
        for j, key in enumerate(keys):
            data = series[key]
            name = f"{key[0]} {key[1]}".strip() + " keys"
            for i, row in enumerate(ROWS):
                s = data.get("shmap", {}).get(row[1])
                p = data.get(peer, {}).get(row[2])
                if not s or not p:
                    continue
                y = i + (j - (len(keys) - 1) / 2) * height
                ratio = s / p
                ax.barh(y, ratio, height=height * 0.9, color=colors[j % len(colors)],
                        label=name if i == 0 or not ax.get_legend_handles_labels()[1].count(name)
                        else None)
                ax.text(ratio * 1.03, y, f"{ratio:.2f}", va="center", fontsize=7)
        for i, row in enumerate(ROWS):
            if row[tcol]:
                ax.plot([row[tcol]] * 2, [i - 0.45, i + 0.45], color="black", lw=2)
        ax.axvline(1.0, color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"shmap / {peer}" + (" (in-process, the ceiling)" if peer == "flat" else
                                          " (Boost.IPC map + sharable mutex)"))
        ax.set_xlabel("ratio of Mops/s (>1: shmap faster); black tick: issue 7's target")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(range(len(ROWS)))
    axes[0].set_yticklabels([r[0] for r in ROWS])
    axes[0].invert_yaxis()
    handles, names = axes[0].get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=9)
    sources = sorted({os.path.basename(p.rpartition("=")[2]) for p in args.files})
    fig.suptitle(args.title + "\n" + ", ".join(sources), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"plot.py: wrote {args.out}")


if __name__ == "__main__":
    main()
