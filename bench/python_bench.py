#!/usr/bin/env python3
"""Issue 10's benchmark: shmap.Map from Python against the shared dicts Python users have.

    PYTHONPATH=build/python python3 bench/python_bench.py [--keys 100000] [--ops 200000]
        [--find-many-probe build/bench/shmap_find_many_probe]

Contenders, each holding int keys -> int values (LMDB and the bytes map: the keys' and values'
decimal text; a value is written as its key):
  dict          a plain dict in one process: the in-process ceiling (1 process only)
  shmap         shmap.Map int -> int (C++'s shmap::Map)
  shmap-bytes   shmap.Map bytes -> bytes (a StringMap), the like of LMDB's bytes
  shmap-pickle  shmap.Map int -> "pickle", a drop-in shared dict for any object
  lmdb          python3-lmdb, one transaction per operation (writemap, no sync), as a shared
                map must be used for each process to see the others' writes
  lmdb-pickle   the same LMDB storing pickled values (pickle.dumps on put, pickle.loads on
                get): the like of shmap-pickle (its keys stay the decimal bytes, made before the
                clock starts: no key conversion is timed, which favours LMDB)
  manager       multiprocessing.Manager().dict() (a server process; fewer operations)
Workloads: get (hits), set (overwrites), mixed (90% get, 10% set), with uniform random keys,
as `m[k]` and `m[k] = v` on the mappings and a function call per operation on LMDB,
from 1 process and from 2 processes at once on one map (throughput summed over both). Each
measurement runs in forked worker processes (1 too) that open the map, make their keys, do
their operations once untimed (so that their first touches of the map's memory, page faults
in a fresh process, are not timed), wait at a barrier, and time the same operations again
(--cold: python-run1/2's way, 1 process the benchmark's own, 2 forked, no warm-up). Then find_many: a 1M-key
int map looked up in batches of 1M random keys from one process (GIL released; into new
result arrays, and into the same arrays again), against C++'s Map::find_many on the same keys
(--find-many-probe), a loop of m[k] and a dict.

Prints two tables, operations per second (median of --reps runs): by CPU time (each
process's own, time.process_time: what an operation costs, whatever else runs on the machine)
and by wall time (time.perf_counter: the throughput this machine gave). The Manager dict's
rows are wall time in both: its work is done in its server process, not in the timed one.
"""
import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np

import shmap

CTX = multiprocessing.get_context("fork")


# ---- contenders: open(prefix) -> (get, set, close) in the calling process ------------------

class Contender:
    per_process_setup = True  # open its own handle in each worker (after fork)
    ops_scale = 1.0
    wall_only = False

    def __init__(self, keys):
        self.keys = keys

    conv = None  # keys and values as this contender stores them (None: the ints)

    def fill(self):
        m, get, put, close = self.handle()
        for k in range(self.keys):
            if m is not None:
                m[self.item(k)] = self.item(k)
            else:
                put(self.item(k), self.item(k))
        close()

    def item(self, i):
        return i if self.conv is None else self.conv[i]

    def remove(self):
        pass


class DictC(Contender):
    name = "dict"
    single_process_only = True

    def __init__(self, keys):
        super().__init__(keys)
        self.d = {}

    def handle(self):
        return self.d, None, None, lambda: None


class ShmapC(Contender):
    name = "shmap"
    single_process_only = False
    key, value = int, int

    def __init__(self, keys):
        super().__init__(keys)
        self.map_name = f"shmap-bench-py-{os.getpid()}-{self.name}"
        shmap.remove(self.map_name)
        self.m = shmap.Map.create(self.map_name, self.key, self.value,
                                  initial_capacity=2 * keys)

    def handle(self):
        m = shmap.Map.open(self.map_name)
        return m, None, None, m.close

    def remove(self):
        self.m.remove()
        self.m.close()


class ShmapBytesC(ShmapC):
    name = "shmap-bytes"
    key, value = bytes, bytes

    def __init__(self, keys):
        super().__init__(keys)
        self.conv = [b"%d" % i for i in range(keys)]


class ShmapPickleC(ShmapC):
    name = "shmap-pickle"
    key, value = int, "pickle"


class LmdbC(Contender):
    name = "lmdb"
    single_process_only = False

    def __init__(self, keys):
        super().__init__(keys)
        import lmdb  # noqa: F401 (python3-lmdb)
        self.dir = tempfile.mkdtemp(prefix="shmap-bench-lmdb-")
        self.conv = [b"%d" % i for i in range(keys)]

    def handle(self):
        import lmdb
        env = lmdb.open(self.dir, map_size=1 << 30, writemap=True, sync=False, metasync=False,
                        max_readers=16, lock=True)

        def get(k):
            with env.begin(buffers=False) as txn:
                v = txn.get(k)
                if v is None:
                    raise KeyError(k)
                return v

        def put(k, v):
            with env.begin(write=True) as txn:
                txn.put(k, v)

        return None, get, put, env.close

    def fill(self):
        import lmdb
        env = lmdb.open(self.dir, map_size=1 << 30, writemap=True, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            for k in range(self.keys):
                txn.put(self.conv[k], self.conv[k])
        env.close()

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class LmdbPickleC(LmdbC):
    name = "lmdb-pickle"

    def handle(self):
        import pickle

        import lmdb
        env = lmdb.open(self.dir, map_size=1 << 30, writemap=True, sync=False, metasync=False,
                        max_readers=16, lock=True)
        dumps, loads, protocol = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL

        def get(k):
            with env.begin(buffers=False) as txn:
                v = txn.get(k)
                if v is None:
                    raise KeyError(k)
                return loads(v)

        def put(k, v):
            with env.begin(write=True) as txn:
                txn.put(k, dumps(v, protocol))

        return None, get, put, env.close

    def fill(self):
        import pickle

        import lmdb
        env = lmdb.open(self.dir, map_size=1 << 30, writemap=True, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            for k in range(self.keys):
                txn.put(self.conv[k], pickle.dumps(self.conv[k], pickle.HIGHEST_PROTOCOL))
        env.close()


class ManagerC(Contender):
    name = "manager"
    single_process_only = False
    ops_scale = 0.05  # about 20K operations/s: fewer of them
    wall_only = True  # the work is in the server process

    def __init__(self, keys):
        super().__init__(keys)
        self.manager = CTX.Manager()
        self.d = self.manager.dict()

    def handle(self):
        return self.d, None, None, lambda: None

    def fill(self):
        self.d.update({k: k for k in range(self.keys)})

    def remove(self):
        self.manager.shutdown()


CONTENDERS = [DictC, ShmapC, ShmapBytesC, ShmapPickleC, LmdbC, LmdbPickleC, ManagerC]


# ---- the workloads -------------------------------------------------------------------------

def run_loop(contender, workload, ops, seed, barrier=None, warmup=False):
    """Times `ops` operations on uniform random keys: m[k] / m[k] = v on a mapping, else the
    contender's get/put functions. Keys and values are made before the clock starts; warmup:
    the same operations once, untimed, first (this process's first touches of the map's
    memory are then not in the figure); barrier: waited for just before the clock starts.
    Returns (CPU seconds of this process, wall seconds)."""
    m, get, put, close = contender.handle()
    rng = random.Random(seed)
    keys = [contender.item(rng.randrange(contender.keys)) for _ in range(ops)]
    writes = [workload == "set" or (workload == "mixed" and rng.random() < 0.1)
              for _ in range(ops)]

    def loop():
        if m is not None:
            if workload == "get":
                for k in keys:
                    m[k]
            elif workload == "set":
                for k in keys:
                    m[k] = k
            else:
                for k, w in zip(keys, writes):
                    if w:
                        m[k] = k
                    else:
                        m[k]
        else:
            if workload == "get":
                for k in keys:
                    get(k)
            elif workload == "set":
                for k in keys:
                    put(k, k)
            else:
                for k, w in zip(keys, writes):
                    if w:
                        put(k, k)
                    else:
                        get(k)

    if warmup:
        loop()
    if barrier is not None:
        barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    loop()
    elapsed = time.process_time() - c0, time.perf_counter() - t0
    close()
    return elapsed


def _worker(contender, workload, ops, seed, barrier, warmup, out):
    out.put(run_loop(contender, workload, ops, seed, barrier, warmup))


def measure(contender, workload, procs, ops, workers):
    """(ops/s by CPU time, ops/s by wall time), summed over the processes: procs * ops over
    the slowest process's time. workers: in `procs` forked processes that warm up first (1
    process too); else 1 process is this one, cold, and 2 are forked, cold (python-run1/2)."""
    if procs == 1 and not workers:
        cpu, wall = run_loop(contender, workload, ops, 1)
        return ops / cpu, ops / wall
    barrier = CTX.Barrier(procs)
    out = CTX.Queue()
    ps = [CTX.Process(target=_worker,
                      args=(contender, workload, ops, 7 + i, barrier, workers, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    times = [out.get() for _ in ps]
    for p in ps:
        p.join()
        assert p.exitcode == 0
    return (procs * ops / max(t[0] for t in times), procs * ops / max(t[1] for t in times))


def fmt(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}K"
    return f"{x:.0f}"


def bench_find_many(n, reps, probe):
    """find_many on a 1M-key int map, CPU and wall time; then, given `probe` (the path of
    shmap_find_many_probe), C++'s Map::find_many on the same map and keys in this run."""
    name = f"shmap-bench-py-{os.getpid()}-batch"
    shmap.remove(name)
    m = shmap.Map.create(name, initial_capacity=2 * n)
    lines = []
    try:
        keys = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        m.insert_many(keys, keys)
        probe_keys = keys.copy()
        np.random.default_rng(1).shuffle(probe_keys)
        cpu, wall = [], []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            values, found = m.find_many(probe_keys)
            cpu.append(n / (time.process_time() - c0))
            wall.append(n / (time.perf_counter() - t0))
        assert found.all() and (values == probe_keys).all()
        lines.append(f"Python find_many, {n} keys per call, new result arrays: "
                     f"{fmt(statistics.median(cpu))} keys/s CPU, {fmt(statistics.median(wall))} wall")
        cpu, wall = [], []
        values[:], found[:] = 0, False
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            m.find_many(probe_keys, values, found)
            cpu.append(n / (time.process_time() - c0))
            wall.append(n / (time.perf_counter() - t0))
        assert found.all() and (values == probe_keys).all()
        lines.append(f"Python find_many, {n} keys per call, into the same arrays: "
                     f"{fmt(statistics.median(cpu))} keys/s CPU, {fmt(statistics.median(wall))} wall")
        if probe:
            with tempfile.NamedTemporaryFile(prefix="shmap-bench-keys-") as f:
                probe_keys.tofile(f.name)
                out = subprocess.run([probe, name, f.name, str(reps)], check=True,
                                     capture_output=True, text=True).stdout
            lines += out.strip().splitlines()
        loop_keys = [int(k) for k in probe_keys[:200000]]
        getitem = m.__getitem__
        c0 = time.process_time()
        for k in loop_keys:
            getitem(k)
        loop = len(loop_keys) / (time.process_time() - c0)
        d = {int(k): int(k) for k in keys}
        c0 = time.process_time()
        for k in loop_keys:
            d[k]
        dict_rate = len(loop_keys) / (time.process_time() - c0)
        lines.append(f"a loop of m[k] {fmt(loop)}/s CPU; a dict's d[k] loop {fmt(dict_rate)}/s CPU")
        return lines
    finally:
        m.remove()
        m.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--ops", type=int, default=200_000, help="operations per process and run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--batch-keys", type=int, default=1_000_000,
                    help="keys of the find_many part (0: skip it)")
    ap.add_argument("--workloads", default="get,set,mixed", help="comma-separated workloads")
    ap.add_argument("--find-many-probe", default="",
                    help="path of shmap_find_many_probe (bench/find_many_probe.cpp): C++'s "
                         "Map::find_many on the same keys, for comparison")
    ap.add_argument("--only", default="", help="comma-separated contenders")
    ap.add_argument("--cold", action="store_true",
                    help="python-run1/2's way: 1 process is this one, 2 are forked, neither "
                         "warms up (the forked ones then pay their first touches of the map "
                         "in the timed loop, the 1-process figure does not)")
    args = ap.parse_args()
    procs_list = [int(p) for p in args.procs.split(",")]
    workloads = tuple(args.workloads.split(","))

    print(f"# python_bench: {args.keys} keys, {args.ops} ops per process and run "
          f"(manager: {int(args.ops * ManagerC.ops_scale)}), median of {args.reps}; "
          f"{'cold: 1p in this process, 2p forked' if args.cold else 'forked workers, warmed up'}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start; ops/s")
    rows = []  # (name, {(procs, workload): (cpu rate, wall rate)}, wall_only)
    for cls in CONTENDERS:
        if args.only and cls.name not in args.only.split(","):
            continue
        c = cls(args.keys)
        try:
            c.fill()
            got = {}
            for procs in procs_list:
                for workload in workloads:
                    if procs > 1 and cls.single_process_only:
                        continue
                    ops = max(1000, int(args.ops * cls.ops_scale))
                    runs = [measure(c, workload, procs, ops, not args.cold)
                            for _ in range(args.reps)]
                    got[procs, workload] = (statistics.median(r[0] for r in runs),
                                            statistics.median(r[1] for r in runs))
            rows.append((c.name, got, cls.wall_only))
            print(f"#   {c.name} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            c.remove()

    header = f"{'contender':14}" + "".join(f"{w + '/' + str(p) + 'p':>12}"
                                            for p in procs_list for w in workloads)
    for title, which in (("CPU time (each process's own)", 0), ("wall time", 1)):
        print(f"\n## ops/s by {title}")
        print(header)
        for name, got, wall_only in rows:
            row = f"{name + ('*' if wall_only and which == 0 else ''):14}"
            for p in procs_list:
                for w in workloads:
                    r = got.get((p, w))
                    row += f"{'-' if r is None else fmt(r[1 if wall_only else which]):>12}"
            print(row)
    print("(* wall time: the Manager dict's work is done in its server process)")

    if args.batch_keys > 0:
        print(f"\n## {args.batch_keys} int keys, one process")
        for line in bench_find_many(args.batch_keys, args.reps, args.find_many_probe):
            print(line)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
