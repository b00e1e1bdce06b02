# Types and errors: what each map records and refuses, pickles of any object, the limits of
# ints and strings, bad input as TypeError/ValueError (never a crash), update()'s atomic
# read-modify-write and its exceptions, fetch_add, compare_exchange, closed and read-only
# attachments, snapshots.
import math
import os
import threading

import pytest

import shmap


def test_types_are_recorded_and_other_types_refused(name, names):
    with shmap.Map(name, create="new", key=str, value="pickle") as m:
        m["a"] = [1]
    assert (shmap.Map(name).key_type, shmap.Map(name).value_type) == ("str", "pickle")
    for key, value in [(bytes, "pickle"), (str, bytes), (int, int), (str, str)]:
        with pytest.raises(shmap.Error) as e:
            shmap.Map(name, key=key, value=value)
        assert e.value.code == "layout_mismatch"
        assert "str -> pickle" in str(e.value)
    # A C++ uint64 map opened with string types: refused, naming both.
    with shmap.Map(names("u"), create="new") as m:
        m[1] = 2
    with pytest.raises(shmap.Error, match="int -> int") as e:
        shmap.Map(names("u"), key=bytes, value=bytes)
    assert e.value.code == "layout_mismatch"
    # open_or_create on a map of other types: refused too, nothing changed.
    with pytest.raises(shmap.Error):
        shmap.Map.open_or_create(names("u"), key=str, value=str)
    assert shmap.Map(names("u"))[1] == 2


def test_open_create_and_open_or_create(name):
    with pytest.raises(shmap.Error) as e:
        shmap.Map(name)
    assert e.value.code == "not_found"
    m = shmap.Map.open_or_create(name, key=bytes, value=float)
    assert m.created
    with pytest.raises(shmap.Error) as e:
        shmap.Map.create(name, key=bytes, value=float)
    assert e.value.code == "already_exists"
    again = shmap.Map.open_or_create(name, key=bytes, value=float)
    assert not again.created
    assert shmap.open_or_create(name).value_type == "float"
    assert m.remove() is True and shmap.remove(name) is False


@pytest.mark.parametrize("key,value", [(int, int), (int, float), (str, str)])
def test_every_handle_slot_is_an_attachment(name, key, value):
    # Opening reads the types without taking a slot: max_handles = N gives N attachments.
    first = shmap.Map(name, create="new", key=key, value=value, max_handles=2)
    second = shmap.Map(name)
    with pytest.raises(shmap.Error) as e:
        shmap.Map(name)
    assert e.value.code == "handles_exhausted"
    second.close()
    third = shmap.Map(name, key=key, value=value)
    assert third.stats()["handles_in_use"] == 2
    assert shmap.Map(name, readonly=True).key_type == first.key_type  # takes no slot
    solo = shmap.Map(name + "-solo", create="new", key=str, value="pickle", max_handles=1)
    solo["k"] = 1
    assert solo["k"] == 1
    solo.remove()


def test_pickles_hold_any_picklable_object(name):
    import datetime
    import fractions

    m = shmap.Map(name, create=True, key=int, value="pickle")
    objects = [None, 0, -5, 2**200, 1.5, "text", b"\0", [1, [2]], {"a": {1, 2}}, (None,),
               fractions.Fraction(1, 3), datetime.date(2026, 1, 2), ValueError("x").args]
    for i, o in enumerate(objects):
        m[i] = o
    for i, o in enumerate(objects):
        assert m[i] == o and type(m[i]) is type(o)
    with pytest.raises(Exception):  # a lambda does not pickle; nothing written
        m[100] = lambda: 1
    assert 100 not in m


def test_pickles_are_stored_without_their_frame_and_small_ones_in_the_bucket(name, tmp_path):
    import base64
    import json
    import pickle

    m = shmap.Map(name, create=True, key=int, value="pickle")
    # Tiny (no frame), small (one frame covering all: left out), large (several frames: kept).
    objects = {1: None, 2: 7, 3: 300, 4: 99999, 5: "text", 6: list(range(40000))}
    for k, o in objects.items():
        m[k] = o
    for k, o in objects.items():
        assert m[k] == o
    m.dump(str(tmp_path / "snap.json"), json=True)
    stored = {}
    with open(tmp_path / "snap.json") as f:
        for e in json.load(f)["entries"]:  # keys: 8 little-endian bytes, as text or base64
            kb = base64.b64decode(e["key_base64"]) if "key_base64" in e else e["key"].encode()
            stored[int.from_bytes(kb, "little")] = base64.b64decode(e["value_base64"])
    assert set(stored) == set(objects), stored.keys()
    for k, o in objects.items():
        full = pickle.dumps(o, pickle.HIGHEST_PROTOCOL)
        assert stored[k] is not None and pickle.loads(stored[k]) == o
        framed = len(full) >= 11 and full[2] == 0x95 and int.from_bytes(full[3:11], "little") == len(full) - 11
        assert stored[k] == (full[:2] + full[11:] if framed else full), k
    assert len(stored[3]) == 6 and len(stored[4]) == 8  # 300 fits a bucket; 99999 does not
    m.compact()
    records = m.check()["records"]
    # None, 7 and 300 under int keys below 2^56: inline; 99999, "text" and the list: records.
    assert records["inline_entries"] == 3 and records["live"] == 3, records


def test_strings_round_trip_exactly(name):
    m = shmap.Map(name, create=True, key=bytes, value=str)
    samples = ["", "\0", "é", "𝄞" * 100, "a\udc80"[:1]]
    for i, s in enumerate(samples):
        m[b"%d" % i] = s
        m[b""] = s  # the empty key too
        assert m[b"%d" % i] == s and m[b""] == s
    m[bytearray(b"ba")] = "x"
    assert m[b"ba"] == "x"
    with pytest.raises(UnicodeEncodeError):
        m[b"bad"] = "\udc80"  # a lone surrogate is not UTF-8: refused, nothing written
    assert b"bad" not in m


def test_the_entry_limit_is_refused_cleanly(name):
    m = shmap.Map(name, create=True, key=bytes, value=bytes)
    limit = shmap.MAX_STRING_ENTRY_BYTES
    m[b"k"] = b"v" * (limit - 1)
    assert len(m[b"k"]) == limit - 1
    with pytest.raises(shmap.InvalidArgument) as e:
        m[b"k"] = b"v" * limit
    assert isinstance(e.value, ValueError) and e.value.code == "invalid_argument"
    assert len(m[b"k"]) == limit - 1


def test_int_range_and_bad_input(name):
    m = shmap.Map(name, create=True)
    m[0] = 2**64 - 1
    m[2**64 - 1] = 0
    assert m[0] == 2**64 - 1 and m[2**64 - 1] == 0
    m[True] = 1  # bool is an int, as in a dict
    assert m[1] == 1
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            m[bad] = 1
        with pytest.raises(ValueError):
            m[1] = bad
    for bad in ("1", 1.0, None, b"1", [1]):
        with pytest.raises(TypeError):
            m[bad] = 1
        with pytest.raises(TypeError):
            m[1] = bad
        with pytest.raises(TypeError):
            m.get(bad)
    assert m[1] == 1 and len(m) == 3
    s = shmap.Map(name + "-s", create=True, key=str, value=bytes)
    for bad_key in (b"k", 1, None):
        with pytest.raises(TypeError):
            s[bad_key] = b"v"
    with pytest.raises(TypeError):
        s["k"] = "v"
    with pytest.raises(ValueError):
        shmap.Map(name + "-x", create=True, key=float)
    with pytest.raises(ValueError):
        shmap.Map(name + "-x", create=True, value=list)
    with pytest.raises(shmap.InvalidArgument):
        shmap.Map("no/slash", create=True)
    with pytest.raises(TypeError):
        shmap.Map(5)
    s.remove()


def test_floats(name):
    m = shmap.Map(name, create=True, key=int, value=float)
    m[1] = 3  # an int is taken as a float
    assert m[1] == 3.0 and isinstance(m[1], float)
    m[2] = math.inf
    m[3] = -0.0
    assert m[2] == math.inf and math.copysign(1, m[3]) == -1
    m[4] = math.nan
    assert math.isnan(m[4])
    assert m.fetch_add(1, 0.5) == 3.0 and m[1] == 3.5
    assert m.fetch_add(9, 2) == 0.0 and m[9] == 2.0
    with pytest.raises(TypeError):
        m[5] = "1.0"


def test_fetch_add_and_compare_exchange(name, names):
    m = shmap.Map(name, create=True)
    assert m.fetch_add(1) == 0 and m.fetch_add(1, 5) == 1 and m[1] == 6
    assert m.fetch_add(1, -7) == 6 and m[1] == 2**64 - 1  # mod 2**64
    assert m.fetch_add(1) == 2**64 - 1 and m[1] == 0
    assert m.compare_exchange(1, 0, 10) and m[1] == 10
    assert not m.compare_exchange(1, 0, 11) and m[1] == 10
    assert not m.compare_exchange(2, 0, 1) and 2 not in m
    w = shmap.Map(names("words"), create=True, key=str, value=int)
    assert w.fetch_add("x", 3) == 0 and w.fetch_add("x") == 3 and w["x"] == 4
    b = shmap.Map(names("b"), create=True, key=str, value="pickle")
    b["k"] = [1]
    assert b.compare_exchange("k", [1], [2]) and b["k"] == [2]
    assert not b.compare_exchange("k", [1], [3]) and b["k"] == [2]
    with pytest.raises(TypeError):
        b.fetch_add("k")


@pytest.mark.parametrize("value", [int, float, str, "pickle"])
def test_update_is_a_read_modify_write(name, value):
    m = shmap.Map(name, create=True, key=str, value=value)
    one = {int: 1, float: 1.0, str: "1", "pickle": [1]}[value]
    m["k"] = one
    assert m.update("k", lambda v: v + v) == one + one
    assert m["k"] == one + one
    with pytest.raises(KeyError):
        m.update("absent", lambda v: v)
    assert "absent" not in m
    assert m.update("new", lambda v: v + one, default=one) == one + one
    assert m["new"] == one + one

    # An exception in fn propagates and changes nothing.
    class Boom(Exception):
        pass

    def boom(v):
        raise Boom()

    with pytest.raises(Boom):
        m.update("k", boom)
    assert m["k"] == one + one
    with pytest.raises(Boom):
        m.update("other", boom, default=one)
    assert "other" not in m
    # A result of the wrong type (one that does not pickle): an error, nothing written.
    with pytest.raises(TypeError if value != "pickle" else (AttributeError, TypeError,
                                                            __import__("pickle").PicklingError)):
        m.update("k", lambda v: object() if value != "pickle" else (lambda: 0))
    assert m["k"] == one + one
    # fn must not use the map: a clear error, not a hang.
    with pytest.raises(ValueError, match="must not use the map"):
        m.update("k", lambda v: m["new"])
    assert m["k"] == one + one
    # ... in this thread: another thread may use it meanwhile (the refusal is per thread).
    seen = []

    def read_in_a_thread(v):
        t = threading.Thread(target=lambda: seen.append(m.get("k")))
        t.start()
        t.join()
        return v

    m.update("k", read_in_a_thread)
    assert seen == [one + one]
    m["k"] = one  # usable afterwards


def test_update_on_int_maps(name):
    m = shmap.Map(name, create=True)
    m[1] = 5
    assert m.update(1, lambda v: v * 3) == 15 and m[1] == 15
    assert m.update(2, lambda v: v + 1, default=41) == 42
    with pytest.raises(ZeroDivisionError):
        m.update(1, lambda v: v / 0)
    assert m[1] == 15
    with pytest.raises(ValueError):
        m.update(1, lambda v: -1)
    assert m[1] == 15


def test_closed_and_context_manager(name):
    with shmap.Map(name, create=True) as m:
        m[1] = 1
    assert m.closed and "closed" in repr(m)
    for op in (lambda: m[1], lambda: len(m), lambda: m.stats(), lambda: list(m)):
        with pytest.raises(ValueError, match="closed"):
            op()
    m.close()  # twice is fine
    assert shmap.Map(name)[1] == 1


def test_read_only_attachment(name):
    m = shmap.Map(name, create=True, key=str, value=str)
    m["a"] = "b"
    r = shmap.Map(name, readonly=True)
    assert r.readonly and r["a"] == "b" and dict(r.items()) == {"a": "b"}
    with pytest.raises(shmap.Error) as e:
        r["a"] = "c"
    assert e.value.code == "permission_denied"
    assert m["a"] == "b"
    with pytest.raises(ValueError):
        shmap.Map(name + "-x", create=True, readonly=True)


def test_stats_readers_check_compact(name):
    m = shmap.Map(name, create=True, initial_capacity=8)
    for i in range(1000):
        m[i] = i
    s = m.stats()
    assert s["size"] == 1000 and s["capacity"] >= 1000 and s["initial_capacity"] == 8
    (me,) = [r for r in m.readers() if r["self"]]
    assert me["pid"] == os.getpid() and me["alive"]
    m.compact()
    report = m.check()
    assert report["ok"], report["problems"]
    assert report["live_entries"] == 1000


def test_dump_and_load(name, names, tmp_path):
    m = shmap.Map(name, create=True)
    m.insert_many(list(range(100)), [i * i for i in range(100)])
    m.dump(str(tmp_path / "snap"))
    m.dump(str(tmp_path / "snap.json"), json=True)
    loaded = shmap.load(str(tmp_path / "snap"), names("copy"))
    assert dict(loaded.items()) == dict(m.items())
    assert shmap.load(str(tmp_path / "snap.json"), names("json"))[9] == 81
    f = shmap.Map(names("f"), create=True, key=int, value=float)
    f[1] = 0.5
    f.dump(str(tmp_path / "f"))
    assert shmap.load(str(tmp_path / "f"), names("f2"))[1] == 0.5
    with pytest.raises(shmap.Error) as e:
        shmap.load(str(tmp_path / "snap"), names("copy"))
    assert e.value.code == "already_exists"
    with pytest.raises(shmap.Error) as e:
        shmap.load(str(tmp_path / "missing"), names("none"))
    assert e.value.code == "not_found"
    # String maps: binary snapshots keep the Python types (the names the segment records).
    s = shmap.Map(names("s"), create=True, key=str, value="pickle")
    s["é"] = {"a": [1, 2]}
    s["x" * 1000] = None
    s.dump(str(tmp_path / "s"))
    back = shmap.load(str(tmp_path / "s"), names("s2"))
    assert (back.key_type, back.value_type) == ("str", "pickle")
    assert dict(back.items()) == dict(s.items())
    b = shmap.Map(names("b"), create=True, key=bytes, value=float)
    b[b"\0"] = 2.5
    b.dump(str(tmp_path / "b"))
    assert dict(shmap.load(str(tmp_path / "b"), names("b2")).items()) == {b"\0": 2.5}
    # The JSON form of a string map round-trips too.
    s.dump(str(tmp_path / "s.json"), json=True)
    back = shmap.load(str(tmp_path / "s.json"), names("s3"))
    assert dict(back.items()) == dict(s.items())
    # A library error surfaces as shmap.Error: a load never overwrites a map.
    with pytest.raises(shmap.Error):
        shmap.load(str(tmp_path / "s.json"), names("s3"))
