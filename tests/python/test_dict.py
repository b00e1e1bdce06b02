# dict semantics, for every key and value type: the operations of collections.abc
# MutableMapping against a plain dict driven with the same random operations, and the corners
# CPython's own mapping tests check (KeyError, defaults, views, equality).
import collections.abc
import pickle
import random

import pytest

import shmap

KEYS = {
    int: lambda i: i * 7919 % 100003,
    bytes: lambda i: b"k%d" % i,
    str: lambda i: f"ключ-{i}",
}
VALUES = {
    int: lambda i: i * 3,
    float: lambda i: i / 4,
    bytes: lambda i: bytes([i % 256]) * (i % 5),
    str: lambda i: "v" * (i % 3) + f"{i}€",
    "pickle": lambda i: {"i": i, "l": [i, (i, None)], "s": {i}},
}
TYPES = [(k, v) for k in KEYS for v in VALUES]


def tname(t):
    return t if isinstance(t, str) else t.__name__


@pytest.fixture(params=TYPES, ids=[f"{tname(k)}-{tname(v)}" for k, v in TYPES])
def pair(request, name):
    key, value = request.param
    m = shmap.Map(name, create="new", key=key, value=value, initial_capacity=8)
    yield m, KEYS[key], VALUES[value]
    m.close()


def test_is_a_mutable_mapping(pair):
    m, _, _ = pair
    assert isinstance(m, collections.abc.MutableMapping)
    assert isinstance(m.keys(), collections.abc.KeysView)
    assert isinstance(m.items(), collections.abc.ItemsView)


def test_basic_operations(pair):
    m, k, v = pair
    assert len(m) == 0 and list(m) == [] and k(1) not in m
    with pytest.raises(KeyError) as e:
        m[k(1)]
    assert e.value.args == (k(1),)
    m[k(1)] = v(1)
    assert m[k(1)] == v(1) and k(1) in m and len(m) == 1
    m[k(1)] = v(2)
    assert m[k(1)] == v(2) and len(m) == 1
    assert m.get(k(1)) == v(2) and m.get(k(2)) is None and m.get(k(2), "d") == "d"
    assert m.insert(k(2), v(3)) is True
    assert m.insert(k(2), v(4)) is False and m[k(2)] == v(3)
    del m[k(2)]
    assert k(2) not in m
    with pytest.raises(KeyError):
        del m[k(2)]
    assert m.discard(k(1)) is True and m.discard(k(1)) is False
    assert len(m) == 0


def test_setdefault_pop_popitem_clear(pair):
    m, k, v = pair
    assert m.setdefault(k(1), v(1)) == v(1)
    assert m.setdefault(k(1), v(2)) == v(1)
    assert m.pop(k(1)) == v(1)
    assert m.pop(k(1), "gone") == "gone"
    with pytest.raises(KeyError):
        m.pop(k(1))
    for i in range(20):
        m[k(i)] = v(i)
    key, value = m.popitem()
    assert value == v([i for i in range(20) if k(i) == key][0]) and key not in m
    assert len(m) == 19
    m.clear()
    assert len(m) == 0
    with pytest.raises(KeyError):
        m.popitem()


def test_views_update_and_equality(pair):
    m, k, v = pair
    ref = {k(i): v(i) for i in range(300)}  # grows from capacity 8
    m.update(ref)
    assert len(m) == 300
    assert sorted(m.keys(), key=repr) == sorted(ref, key=repr)
    assert sorted(map(repr, m.values())) == sorted(map(repr, ref.values()))
    assert dict(m.items()) == ref
    assert m == ref and ref == dict(m)
    assert (k(1), v(1)) in m.items() and k(299) in m.keys()
    m.update([(k(1), v(2))])
    assert m[k(1)] == v(2) and m != ref


def test_random_operations_match_a_dict(pair):
    m, k, v = pair
    rng = random.Random(1)
    ref = {}
    for step in range(3000):
        i = rng.randrange(200)
        op = rng.randrange(6)
        if op <= 1:
            m[k(i)] = v(step)
            ref[k(i)] = v(step)
        elif op == 2:
            assert m.pop(k(i), None) == ref.pop(k(i), None)
        elif op == 3:
            assert m.setdefault(k(i), v(step)) == ref.setdefault(k(i), v(step))
        elif op == 4:
            assert m.insert(k(i), v(step)) == (k(i) not in ref)
            ref.setdefault(k(i), v(step))
        else:
            assert m.get(k(i)) == ref.get(k(i))
    assert len(m) == len(ref)
    assert dict(m.items()) == ref
    assert m.check()["ok"]


def test_reopen_reads_back_types_and_values(pair, name):
    m, k, v = pair
    for i in range(50):
        m[k(i)] = v(i)
    again = shmap.Map(name)
    assert (again.key_type, again.value_type) == (m.key_type, m.value_type)
    assert dict(again.items()) == dict(m.items())
    # A map pickles as its name and types: another process reopens it.
    clone = pickle.loads(pickle.dumps(m))
    assert clone.name == name and clone[k(3)] == v(3)


def test_setdefault_without_a_default(name):
    # dict.setdefault(key) inserts None: so does a map whose values can be None (pickles);
    # another map refuses None as it refuses any value of the wrong type, writing nothing.
    m = shmap.Map(name + "-p", create="new", key=str, value="pickle")
    assert m.setdefault("a") is None
    assert "a" in m and m["a"] is None
    assert m.setdefault("a", [1]) is None
    m["b"] = [1]
    assert m.setdefault("b") == [1]
    ints = shmap.Map(name + "-i", create="new", key=str, value=int)
    with pytest.raises(TypeError):
        ints.setdefault("a")
    assert "a" not in ints
    assert ints.setdefault("a", 5) == 5 and ints.setdefault("a") == 5


@pytest.mark.parametrize("key", [int, str])
def test_popitem_drains_the_map(name, key):
    # Each pair popped is one that was stored, each once, until KeyError; a walk per popitem
    # stops at its first entry, so 2048 of them are quick.
    m = shmap.Map(name, create="new", key=key, value=int, initial_capacity=8)
    ref = {KEYS[key](i): i for i in range(2048)}
    m.update(ref)
    seen = {}
    while m:
        k, v = m.popitem()
        assert k not in seen and ref[k] == v and k not in m
        seen[k] = v
    assert seen == ref and len(m) == 0
    with pytest.raises(KeyError):
        m.popitem()
