# Batched calls on maps with int keys: find_many and insert_many on NumPy arrays (and any
# array-like), int and float values, absent keys, shapes refused, find_many into arrays given,
# and the GIL given up while they run (another thread's Python code advances during one long find_many).
import threading
import time

import numpy as np
import pytest

import shmap


def test_find_many_and_insert_many_on_int_maps(name):
    m = shmap.Map(name, create=True, initial_capacity=8)
    keys = np.arange(0, 200_000, 2, dtype=np.uint64)
    assert m.insert_many(keys, keys * 3) == len(keys)
    assert m.insert_many(keys[:10], keys[:10], overwrite=False) == 0
    assert m[2] == 6 and len(m) == len(keys)
    probe = np.arange(0, 200_000, dtype=np.uint64)
    values, found = m.find_many(probe)
    assert values.dtype == np.uint64 and found.dtype == np.bool_
    assert found.tolist() == [i % 2 == 0 for i in range(200_000)]
    assert (values[found] == probe[found] * 3).all() and (values[~found] == 0).all()
    big = np.array([2**64 - 1], dtype=np.uint64)
    m.insert_many(big, big)
    assert m[2**64 - 1] == 2**64 - 1
    values, found = m.find_many([4, 5])  # a list will do
    assert values.tolist() == [12, 0] and found.tolist() == [True, False]
    assert m.find_many(np.array([], dtype=np.uint64))[0].shape == (0,)


def test_find_many_into_given_arrays(name, names):
    # The results land in the arrays passed, in place (the same objects come back), on a
    # second call over what the first wrote; arrays of another type, length or layout, or
    # read-only, are refused before anything is looked up.
    m = shmap.Map(name, create=True, initial_capacity=8)
    m.insert_many(np.arange(0, 100, 2, dtype=np.uint64), np.arange(0, 100, 2, dtype=np.uint64) + 7)
    values, found = np.full(100, 99, dtype=np.uint64), np.zeros(100, dtype=bool)
    for probe in (np.arange(100, dtype=np.uint64), np.arange(1, 101, dtype=np.uint64)):
        v, f = m.find_many(probe, values, found)
        assert v is values and f is found
        hit = (probe % 2 == 0) & (probe < 100)
        assert (found == hit).all()
        assert (values[hit] == probe[hit] + 7).all() and (values[~hit] == 0).all()
    v, f = m.find_many([2, 3], found=np.zeros(2, dtype=bool))  # either one alone
    assert v.tolist() == [9, 0] and f.tolist() == [True, False]
    bad = [(np.zeros(100, dtype=np.int64), found, TypeError),      # another dtype
           (np.zeros(99, dtype=np.uint64), found, ValueError),     # another length
           (np.zeros(200, dtype=np.uint64)[::2], found, TypeError),  # not contiguous
           (values, np.zeros(100, dtype=np.uint8), TypeError),
           ([0] * 100, found, TypeError)]                           # not an array
    frozen = np.zeros(100, dtype=np.uint64)
    frozen.flags.writeable = False
    bad.append((frozen, found, ValueError))
    for v, f, error in bad:
        found[:] = False
        with pytest.raises(error):
            m.find_many(np.arange(100, dtype=np.uint64), v, f)
        assert not found.any(), "written before the refusal"
    fl = shmap.Map(names("f"), create=True, key=int, value=float)
    fl[3] = 1.5
    out = np.zeros(2)
    v, f = fl.find_many([3, 4], out)
    assert v is out and out.tolist() == [1.5, 0.0] and f.tolist() == [True, False]
    with pytest.raises(TypeError):
        fl.find_many([3], np.zeros(1, dtype=np.uint64))


def test_fetch_add_many_counts_every_delta(name):
    m = shmap.Map(name, create=True)
    keys = np.array([1, 2, 1, 3, 1], dtype=np.uint64)
    before = m.fetch_add_many(keys, np.array([1, 10, 2, 5, 4], dtype=np.uint64))
    assert before.tolist() == [0, 0, 1, 0, 3]
    assert (m[1], m[2], m[3]) == (7, 10, 5)
    m.fetch_add_many([1], np.array([-7], dtype=np.int64).astype(np.uint64))  # mod 2**64
    assert m[1] == 0
    # Negative deltas wrap as fetch_add's do, from an int64 array or from a list (also one that
    # mixes them with ints above 2**63).
    m.fetch_add_many([1, 2], [5, -3])
    m.fetch_add_many([1, 2], [-5, 2**64 - 7])
    assert (m[1], m[2]) == (0, 0)
    # A float delta is refused, never truncated, and nothing is added.
    for deltas in (np.array([1.0, 2.5]), [1, 2.5]):
        with pytest.raises(TypeError, match="delta"):
            m.fetch_add_many([1, 2], deltas)
        assert (m[1], m[2]) == (0, 0), "written before the refusal"
    with pytest.raises(ValueError):
        m.fetch_add_many([1, 2], [1])
    f = shmap.Map(name + "-f", create=True, key=int, value=float)
    with pytest.raises(TypeError):
        f.fetch_add_many([1], [1])
    f.remove()


def test_float_maps_and_refusals(name, names):
    f = shmap.Map(name, create=True, key=int, value=float)
    assert f.insert_many([1, 2, 3], [0.5, 1.5, 2.5]) == 3
    values, found = f.find_many([1, 3, 9])
    assert values.dtype == np.float64 and values.tolist() == [0.5, 2.5, 0.0]
    assert found.tolist() == [True, True, False]
    with pytest.raises(ValueError):
        f.insert_many([1, 2], [1.0])
    with pytest.raises(ValueError):
        f.find_many(np.zeros((2, 2), dtype=np.uint64))
    s = shmap.Map(names("s"), create=True, key=str, value=int)
    with pytest.raises(TypeError):
        s.find_many([1])
    with pytest.raises(TypeError):
        s.insert_many([1], [1])


def test_find_many_releases_the_gil(name):
    m = shmap.Map(name, create=True)
    keys = np.arange(1_000_000, dtype=np.uint64)
    m.insert_many(keys, keys)
    probe = np.tile(keys, 8)
    # Another thread notes the time at every step of a Python loop while the main thread is
    # inside one long find_many. Holding the GIL, find_many would let it run at most at the
    # edges of the call (a switch interval after the call started, or before it returned);
    # with the GIL given up, the other thread runs through the middle of the call.
    started, done = threading.Event(), threading.Event()
    stamps = []

    def spin():
        started.set()
        while not done.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    t0 = time.perf_counter()
    values, found = m.find_many(probe)
    t1 = time.perf_counter()
    done.set()
    t.join()
    assert found.all()
    third = (t1 - t0) / 3
    assert any(t0 + third < s < t1 - third for s in stamps), (t1 - t0, len(stamps))


def test_negative_keys_are_refused_as_m_k_refuses_them(name):
    # m[-1] is a ValueError (an int map holds 0 .. 2**64-1); the batched calls agree instead
    # of reading -1 as 2**64-1 (another key, which is here to be found or overwritten).
    m = shmap.Map(name, create=True)
    m[2**64 - 1] = 5
    with pytest.raises(ValueError):
        m[-1]
    with pytest.raises(ValueError):
        m[-1] = 7
    for keys in (np.array([3, -1], dtype=np.int64), np.array([-1], dtype=np.int32),
                 np.array([-1], dtype=np.int8), [3, -1], [2**64 - 1, -1]):
        with pytest.raises(ValueError, match=r"keys\[1\]|keys\[0\]"):
            m.find_many(keys)
        with pytest.raises(ValueError, match=r"keys\["):
            m.insert_many(keys, np.full(len(keys), 9, dtype=np.uint64))
        with pytest.raises(ValueError, match=r"keys\["):
            m.fetch_add_many(keys, np.ones(len(keys), dtype=np.uint64))
    assert dict(m.items()) == {2**64 - 1: 5}, "written before the refusal"
    # What the message says to do: the bits as uint64, on purpose.
    values, found = m.find_many(np.array([-1], dtype=np.int64).view(np.uint64))
    assert found.tolist() == [True] and values.tolist() == [5]
    # Signed arrays without a negative element, lists of ints up to 2**64-1 and bools are keys.
    assert m.insert_many(np.arange(4), np.arange(4) * 10) == 4
    assert m.find_many(np.arange(5, dtype=np.int16))[0].tolist() == [0, 10, 20, 30, 0]
    assert m.find_many([2**63, 2**64 - 1, 1])[1].tolist() == [False, True, True]
    assert m.find_many(np.array([2**63, 1], dtype=object))[1].tolist() == [False, True]
    assert m.find_many(np.array([True]))[0].tolist() == [10]
    assert m.find_many([])[0].shape == (0,)


def test_negative_values_of_int_maps_are_refused_and_negative_deltas_wrap(name, names):
    m = shmap.Map(name, create=True)
    with pytest.raises(ValueError):
        m[1] = -1
    for values in (np.array([1, -5], dtype=np.int64), [1, -5]):
        with pytest.raises(ValueError, match=r"values\[1\]"):
            m.insert_many(np.array([1, 2], dtype=np.uint64), values)
    assert len(m) == 0, "written before the refusal"
    assert m.insert_many([1, 2], np.array([1, 5], dtype=np.int64)) == 2
    assert (m[1], m[2]) == (1, 5)
    # fetch_add's delta may be negative (mod 2**64), one or many.
    m.fetch_add(1, -1)
    m.fetch_add_many([2], np.array([-5], dtype=np.int64))
    assert (m[1], m[2]) == (0, 0)
    # A float map's values are floats: negative ones are values like any other.
    f = shmap.Map(names("f"), create=True, key=int, value=float)
    assert f.insert_many([1], np.array([-2], dtype=np.int64)) == 1 and f[1] == -2.0
    with pytest.raises(ValueError, match=r"keys\[0\]"):
        f.insert_many(np.array([-1]), [1.0])
    with pytest.raises(ValueError, match=r"keys\[0\]"):
        f.find_many(np.array([-1]))


def test_float_keys_are_refused_as_m_k_refuses_them(name):
    # m[1.5] is a TypeError; a float array was cast (1.5 -> 1) and found key 1.
    m = shmap.Map(name, create=True)
    m[1] = 10
    with pytest.raises(TypeError):
        m[1.5]
    for keys in (np.array([1.5]), np.array([1.0]), [1.5], ["1"]):
        with pytest.raises(TypeError, match="keys"):
            m.find_many(keys)
        with pytest.raises(TypeError, match="keys"):
            m.insert_many(keys, [2])
    with pytest.raises(TypeError, match="values"):
        m.insert_many([2], np.array([2.5]))
    assert dict(m.items()) == {1: 10}
