# Several processes on one map: multiprocessing workers with the "fork" and "spawn" start
# methods whose counters must add up exactly (fetch_add, and update() calling Python inside
# the C++ read-modify-write), a Pool sharing a word count, a child of os.fork() reusing the
# parent's Map (it reopens; the parent's attachment is left alone), and a writer SIGKILLed
# mid-stream: every write it acknowledged is there, whole, and the map checks clean.
#
# Synchronisation is by join() and by pipes (a reader blocks until the writer has written),
# never by sleeping.
import multiprocessing
import os
import signal
import struct

import pytest

import shmap

WORKERS = 4
ROUNDS = 1500


def _count(m, worker, rounds):
    # m arrives inherited (fork) or pickled as its name (spawn): both must work.
    for i in range(rounds):
        m.fetch_add("total", 1)
        m.update("by-update", lambda v: v + 2, default=0)
        m[f"w{worker}-{i % 50}"] = i
    m.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_add_up_exactly(name, method):
    ctx = multiprocessing.get_context(method)
    m = shmap.Map(name, create=True, key=str, value=int, initial_capacity=8)
    procs = [ctx.Process(target=_count, args=(m, w, ROUNDS)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert m["total"] == WORKERS * ROUNDS
    assert m["by-update"] == 2 * WORKERS * ROUNDS
    assert len(m) == 2 + WORKERS * 50
    assert all(m[f"w{w}-{j}"] == ROUNDS - 50 + j for w in range(WORKERS) for j in range(50))
    assert m.check()["ok"]
    # Every worker closed its attachment: only ours is left.
    assert [r["pid"] for r in m.readers()] == [os.getpid()]


def _write_and_leave(m, i):
    m[i] = i  # no close(): the worker's exit must give its handle slot back


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_that_do_not_close_give_their_slots_back(name, method):
    ctx = multiprocessing.get_context(method)
    m = shmap.Map(name, create=True)
    for i in range(3):
        p = ctx.Process(target=_write_and_leave, args=(m, i))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        # Read without opening anything (an open would free dead processes' slots itself).
        assert [r["pid"] for r in m.readers()] == [os.getpid()]
    assert sorted(m.items()) == [(0, 0), (1, 1), (2, 2)]


def _count_words(args):
    m, text = args
    for word in text.split():
        m.fetch_add(word, 1)
    return len(text.split())


def test_pool_shares_a_word_count(name):
    text = ["the cat sat on the mat", "the dog", "a cat and a dog and the end"] * 40
    with shmap.Map(name, create=True, key=str, value=int) as counts:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            total = sum(pool.map(_count_words, [(counts, t) for t in text]))
        expected = {}
        for t in text:
            for w in t.split():
                expected[w] = expected.get(w, 0) + 1
        assert dict(counts.items()) == expected
        assert sum(counts.values()) == total


def _wait_child(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_reopens_and_leaves_the_parent_attachment_alone(name):
    m = shmap.Map(name, create=True)
    m[1] = 1
    parent_slot = [r["slot"] for r in m.readers() if r["self"]]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            m[2] = 2
            m.fetch_add(1, 1)
            mine = [r for r in m.readers() if r["self"]]
            # The child has its own slot, under its own pid; the parent's is still there.
            if (len(mine) == 1 and mine[0]["pid"] == os.getpid()
                    and mine[0]["slot"] not in parent_slot
                    and any(r["pid"] == os.getppid() for r in m.readers())):
                code = 0
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    assert m[1] == 2 and m[2] == 2
    mine = [r for r in m.readers() if r["self"]]
    assert [r["slot"] for r in mine] == parent_slot and mine[0]["pid"] == os.getpid()
    m[3] = 3  # the parent's attachment works on
    assert m.check()["ok"]


def test_a_forked_child_gets_a_clear_error_when_the_map_is_gone(name):
    m = shmap.Map(name, create=True)
    m[1] = 1
    m.remove()  # the parent keeps its attachment; a child cannot reopen by name
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        msg = b"no error"
        try:
            m[1]
        except shmap.Error as e:
            msg = f"{e.code}: {e}".encode()
        finally:
            os.write(w, msg)
            os._exit(0)
    os.close(w)
    assert _wait_child(pid) == 0
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    assert msg.startswith("not_found:") and "fork" in msg, msg
    assert m[1] == 1


def _value(kind, i):
    if kind == "pickle":
        return {"i": i, "pad": "x" * (i % 300)}
    if kind == "str":
        return f"{i}:" + "y" * (i % 200)
    return i * 3 + 1


@pytest.mark.parametrize("kind", ["int", "str", "pickle"])
def test_a_writer_killed_mid_stream_loses_no_acknowledged_write(name, kind):
    key = int if kind == "int" else str
    m = shmap.Map(name, create=True, key=key, value=kind, initial_capacity=8)
    k = (lambda i: i) if key is int else (lambda i: f"k{i}")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            i = 0
            while True:  # until killed
                m[k(i)] = _value(kind, i)
                if i % 3 == 0:
                    m.discard(k(i // 2))  # erases too, for the tables' tombstones
                os.write(w, struct.pack("<Q", i))  # acknowledged
                i += 1
        finally:
            os._exit(3)
    os.close(w)
    acked = []
    with os.fdopen(r, "rb", buffering=0) as f:
        while len(acked) < 20000:
            acked.append(struct.unpack("<Q", f.read(8))[0])
        os.kill(pid, signal.SIGKILL)
        assert _wait_child(pid) == -signal.SIGKILL
        rest = f.read()
    acked += [x for (x,) in struct.iter_unpack("<Q", rest)]
    last = acked[-1]
    # Erased by acknowledged steps, and perhaps by the step after the last acknowledgement.
    erased = {i // 2 for i in range(last + 2) if i % 3 == 0}
    for i in range(last + 1):
        if i in erased:
            assert k(i) not in m or m[k(i)] == _value(kind, i)  # erased, unless rewritten
        else:
            assert m[k(i)] == _value(kind, i)
    # The write after the last acknowledgement is there whole, or not at all.
    if k(last + 1) in m:
        assert m[k(last + 1)] == _value(kind, last + 1)
    m.compact()  # gives back what the killed writer held
    report = m.check()
    assert report["ok"], report["problems"]
    assert all(r["pid"] != pid for r in m.readers())
