#!/usr/bin/env python3
"""Issue 10's benchmark: shmap.Map from Python against the shared dicts Python users have.

    PYTHONPATH=build/python python3 bench/python_bench.py [--keys 100000] [--ops 200000]

Contenders, each holding int keys -> int values (LMDB and the bytes map: the keys' and values'
decimal text; a value is written as its key):
  dict          a plain dict in one process: the in-process ceiling (1 process only)
  shmap         shmap.Map int -> int (C++'s shmap::Map)
  shmap-bytes   shmap.Map bytes -> bytes (a StringMap), the like of LMDB's bytes
  shmap-pickle  shmap.Map int -> "pickle", a drop-in shared dict for any object
  lmdb          python3-lmdb, one transaction per operation (writemap, no sync), as a shared
                map must be used for each process to see the others' writes
  manager       multiprocessing.Manager().dict() (a server process; fewer operations)
Workloads: get (hits), set (overwrites), mixed (90% get, 10% set), with uniform random keys,
as `m[k]` and `m[k] = v` on the mappings and a function call per operation on LMDB,
from 1 process and from 2 processes at once on one map (throughput summed over both; the
workers start together at a barrier and each times its own loop). Then find_many: a 1M-key
int map looked up in batches of 1M random keys from one process (GIL released), against a
loop of m[k] and a dict.

Prints one table; figures are operations per second (median of --reps runs).
"""
import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time

import numpy as np

import shmap

CTX = multiprocessing.get_context("fork")


# ---- contenders: open(prefix) -> (get, set, close) in the calling process ------------------

class Contender:
    per_process_setup = True  # open its own handle in each worker (after fork)
    ops_scale = 1.0

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


class ManagerC(Contender):
    name = "manager"
    single_process_only = False
    ops_scale = 0.05  # about 20K operations/s: fewer of them

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


CONTENDERS = [DictC, ShmapC, ShmapBytesC, ShmapPickleC, LmdbC, ManagerC]


# ---- the workloads -------------------------------------------------------------------------

def run_loop(contender, workload, ops, seed):
    """Times `ops` operations on uniform random keys: m[k] / m[k] = v on a mapping, else the
    contender's get/put functions. Keys and values are made before the clock starts."""
    m, get, put, close = contender.handle()
    rng = random.Random(seed)
    keys = [contender.item(rng.randrange(contender.keys)) for _ in range(ops)]
    writes = [workload == "set" or (workload == "mixed" and rng.random() < 0.1)
              for _ in range(ops)]
    t0 = time.perf_counter()
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
    elapsed = time.perf_counter() - t0
    close()
    return elapsed


def _worker(contender, workload, ops, seed, barrier, out):
    barrier.wait()
    out.put(run_loop(contender, workload, ops, seed))


def measure(contender, workload, procs, ops):
    if procs == 1:
        return ops / run_loop(contender, workload, ops, 1)
    barrier = CTX.Barrier(procs)
    out = CTX.Queue()
    ps = [CTX.Process(target=_worker, args=(contender, workload, ops, 7 + i, barrier, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    times = [out.get() for _ in ps]
    for p in ps:
        p.join()
        assert p.exitcode == 0
    return procs * ops / max(times)


def fmt(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}K"
    return f"{x:.0f}"


def bench_find_many(n, reps):
    name = f"shmap-bench-py-{os.getpid()}-batch"
    shmap.remove(name)
    m = shmap.Map.create(name, initial_capacity=2 * n)
    try:
        keys = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        m.insert_many(keys, keys)
        probe = keys.copy()
        np.random.default_rng(1).shuffle(probe)
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            values, found = m.find_many(probe)
            rates.append(n / (time.perf_counter() - t0))
        assert found.all() and (values == probe).all()
        loop_keys = [int(k) for k in probe[:200000]]
        getitem = m.__getitem__
        t0 = time.perf_counter()
        for k in loop_keys:
            getitem(k)
        loop = len(loop_keys) / (time.perf_counter() - t0)
        d = {int(k): int(k) for k in keys}
        t0 = time.perf_counter()
        for k in loop_keys:
            d[k]
        dict_rate = len(loop_keys) / (time.perf_counter() - t0)
        return statistics.median(rates), loop, dict_rate
    finally:
        m.remove()
        m.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--ops", type=int, default=200_000, help="operations per process and run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-keys", type=int, default=1_000_000)
    ap.add_argument("--only", default="", help="comma-separated contenders")
    args = ap.parse_args()

    print(f"# python_bench: {args.keys} keys, {args.ops} ops per process and run "
          f"(manager: {int(args.ops * ManagerC.ops_scale)}), median of {args.reps}; "
          f"{os.cpu_count()} CPUs; ops/s")
    header = f"{'contender':14}" + "".join(f"{w + '/' + str(p) + 'p':>12}"
                                            for p in (1, 2) for w in ("get", "set", "mixed"))
    print(header)
    for cls in CONTENDERS:
        if args.only and cls.name not in args.only.split(","):
            continue
        c = cls(args.keys)
        try:
            c.fill()
            row = f"{c.name:14}"
            for procs in (1, 2):
                for workload in ("get", "set", "mixed"):
                    if procs > 1 and cls.single_process_only:
                        row += f"{'-':>12}"
                        continue
                    ops = max(1000, int(args.ops * cls.ops_scale))
                    rate = statistics.median(measure(c, workload, procs, ops)
                                             for _ in range(args.reps))
                    row += f"{fmt(rate):>12}"
            print(row, flush=True)
        finally:
            c.remove()

    batch, loop, dict_rate = bench_find_many(args.batch_keys, args.reps)
    print(f"\n# {args.batch_keys} int keys, one process: find_many {fmt(batch)} keys/s; "
          f"a loop of m[k] {fmt(loop)}/s; a dict's d[k] loop {fmt(dict_rate)}/s")


if __name__ == "__main__":
    main()
