#!/usr/bin/env python3
"""multiprocessing workers sharing a word count and a cache through shmap, one worker killed.

    PYTHONPATH=build/python python3 examples/python/word_count.py

1. A multiprocessing.Pool counts the words of some texts into one shared map (str -> int,
   fetch_add from every worker) and memoises an "expensive" function of each word in a second
   map (str -> pickle, setdefault: the first worker to compute a word's entry wins).
2. A worker writing counts is killed with SIGKILL in the middle of its writes. The map carries
   on: every increment the worker acknowledged (through a pipe) is there, check() finds the map
   sound, and the dead worker's handle slot is given back.
"""
import multiprocessing
import os
import signal
import struct
import sys
from collections import Counter

import shmap

TEXTS = ["the quick brown fox jumps over the lazy dog",
         "the dog barks and the fox runs",
         "a lazy afternoon for a quick brown dog"] * 200


def expensive(word):
    return {"length": len(word), "vowels": sum(c in "aeiou" for c in word), "by": os.getpid()}


def count(args):
    counts, cache, text = args  # the maps arrive pickled as their names and types
    for word in text.split():
        counts.fetch_add(word, 1)
        cache.setdefault(word, expensive(word))  # computed here, kept only if first
    return len(text.split())


def doomed_worker(counts, ack):
    # Increments "doomed" forever, acknowledging each increment, until it is killed.
    i = 0
    while True:
        counts.fetch_add("doomed", 1)
        i += 1
        os.write(ack, struct.pack("<Q", i))


def main():
    name = f"shmap-example-words-{os.getpid()}"
    counts = shmap.Map.create(name, key=str, value=int)
    cache = shmap.Map.create(name + "-cache", key=str, value="pickle")
    try:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            words = sum(pool.map(count, [(counts, cache, t) for t in TEXTS], chunksize=20))
        expected = Counter(w for t in TEXTS for w in t.split())
        assert dict(counts.items()) == expected and sum(counts.values()) == words
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
        print(f"{len(TEXTS)} texts, {words} words counted by 4 workers; top 3: {top}")
        print(f"cache: {len(cache)} entries, e.g. 'quick' -> {cache['quick']}")

        # A worker killed mid-write (the fork start method: it inherits `counts` and reopens it).
        r, w = os.pipe()
        worker = multiprocessing.get_context("fork").Process(target=doomed_worker,
                                                             args=(counts, w))
        worker.start()
        os.close(w)
        with os.fdopen(r, "rb", buffering=0) as acks:
            for _ in range(10000):           # wait for 10000 acknowledged increments
                acks.read(8)
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            rest = acks.read()               # the acknowledgements written before it died
        last = struct.unpack("<Q", rest[-8:])[0] if rest else 10000
        assert counts["doomed"] in (last, last + 1), (counts["doomed"], last)
        counts.compact()
        report = counts.check()
        assert report["ok"], report["problems"]
        print(f"killed worker {worker.pid} after {last} acknowledged increments; the map holds "
              f"{counts['doomed']}, checks {'ok' if report['ok'] else 'BAD'}, and its readers are "
              f"{[r['pid'] for r in counts.readers()]} (the killed one's slot is free)")
    finally:
        counts.remove()
        cache.remove()


if __name__ == "__main__":
    sys.exit(main())
