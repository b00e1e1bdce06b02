# shmap.Multimap: several values per key, in order; types recorded and refused; a forked
# worker adding values; Map and Multimap refuse each other's segments.
import multiprocessing
import pickle

import pytest

import shmap


@pytest.mark.parametrize("key,value", [(bytes, bytes), (str, str), (int, "pickle")])
def test_values_per_key_in_order(name, key, value):
    k = {bytes: lambda i: b"k%d" % i, str: lambda i: f"ключ{i}", int: lambda i: i}[key]
    v = {bytes: lambda i: b"v%d" % i, str: lambda i: f"v{i}€", "pickle": lambda i: {"v": [i]}}[value]
    mm = shmap.Multimap(name, create="new", key=key, value=value)
    assert len(mm) == 0 and k(1) not in mm and mm.get(k(1)) == []
    with pytest.raises(KeyError):
        mm[k(1)]
    for i in range(5):
        mm.add(k(1), v(i))
    mm.add(k(1), v(0))  # a value may occur twice
    assert mm[k(1)] == [v(0), v(1), v(2), v(3), v(4), v(0)]
    assert mm.count(k(1)) == 6 and len(mm) == 6 and k(1) in mm
    assert mm.has(k(1), v(3)) and not mm.has(k(1), v(9))
    assert not mm.add_unique(k(1), v(3)) and mm.add_unique(k(1), v(9))
    assert mm.discard(k(1), v(0)) and mm[k(1)][0] == v(1) and mm[k(1)][-2:] == [v(0), v(9)]
    assert not mm.discard(k(1), v(42))
    mm.add(k(2), v(7))
    assert sorted(map(repr, mm)) == sorted(map(repr, [k(1), k(2)]))
    assert mm.items().count((k(2), v(7))) == 1 and len(mm.items()) == len(mm)
    again = shmap.Multimap(name)
    assert (again.key_type, again.value_type) == (mm.key_type, mm.value_type)
    assert again[k(1)] == mm[k(1)]
    assert mm.discard_all(k(1)) == 6 and k(1) not in again
    del mm[k(2)]
    with pytest.raises(KeyError):
        del mm[k(2)]
    assert len(mm) == 0 and mm.check()["ok"]


def test_types_and_kinds_are_refused(name, names):
    mm = shmap.Multimap(name, create=True, key=str, value="pickle")
    with pytest.raises(shmap.Error) as e:
        shmap.Multimap(name, key=bytes)
    assert e.value.code == "layout_mismatch"
    with pytest.raises(shmap.Error, match="multimap") as e:
        shmap.Map(name)  # a Map does not open a multimap
    assert e.value.code == "layout_mismatch"
    with shmap.Map(names("m"), create=True, key=str, value=str):
        pass
    with pytest.raises(shmap.Error, match="not a multimap"):
        shmap.Multimap(names("m"))
    with pytest.raises(ValueError):
        shmap.Multimap(names("x"), create=True, value=int)
    with pytest.raises(TypeError):
        mm.add(b"bytes key", 1)
    mm.close()
    with pytest.raises(ValueError, match="closed"):
        mm.add("k", 1)


def _add_values(mm, worker, n):
    for i in range(n):
        mm.add("shared", (worker, i))


def test_forked_workers_add_values(name):
    mm = shmap.Multimap(name, create=True, key=str, value="pickle")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_values, args=(mm, w, 200)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    values = mm["shared"]
    assert len(values) == 600
    for w in range(3):  # each worker's values in its own order
        assert [i for (x, i) in values if x == w] == list(range(200))
    clone = pickle.loads(pickle.dumps(mm))  # pickles as its name and types
    assert clone.count("shared") == 600 and clone.value_type == "pickle"
