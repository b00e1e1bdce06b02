# CPython's own mapping tests (Lib/test/mapping_tests.py, Debian's libpython3.11-testsuite)
# run against shmap.Map: the ones dict and UserDict pass, with a fresh map per mapping a test
# makes. A shmap.Map holds one key type and one value type, so each class below is one map
# type with a reference mapping of that type; a test that cannot apply to a shared map, or not
# to this class's types, is skipped here with its reason, and where a derived class's test adds
# to its base's one a part that cannot apply, the base's part runs alone (a comment says why).
# The tests themselves are unchanged.
#
#   StrPickle  str -> "pickle": TestHashMappingProtocol, the whole protocol (the reference's
#              own types: str keys, values of any type)
#   IntPickle  int -> "pickle": the tests whose keys are ints
#   the rest   BasicTestMappingProtocol on each C++ map behind shmap.Map: StringMap
#              (bytes -> bytes, str -> str, bytes -> int), shmap::Map (int -> int) and
#              DynamicMap (int -> float)
import itertools
import os
import unittest

try:
    from test import mapping_tests
except ImportError as e:  # pragma: no cover - scripts/deps.sh installs it
    raise ImportError(
        "CPython's test.mapping_tests is missing: install Debian's libpython3.11-testsuite "
        "(scripts/deps.sh does)") from e

import shmap

_counter = itertools.count()


def _skip(reason):
    """A test method that is skipped with `reason` (replaces an inherited test)."""
    @unittest.skip(reason)
    def skipped(self):
        pass  # pragma: no cover
    return skipped


ONE_KEY_TYPE = "mixes int keys and str keys in one mapping: a shmap.Map has one key type"
NEEDS_A_NAME = ("makes a mapping from nothing (dict(), dict.fromkeys, d.copy()); a shmap.Map "
                "is created with a name: shmap.Map(name, create=True, ...)")
ANY_HASHABLE_KEY = ("stores objects of a user-defined class as keys (BadEq/BadHash/BadCmp): "
                    "shmap keys are int, bytes or str")
VALUES_ARE_COPIES = ("setdefault('key', []).append(3) expects the map to change through the "
                     "returned list: a shared map's values are copies, written back only by an "
                     "assignment (test_dict.py: test_setdefault_without_a_default checks the "
                     "rest)")
REPR_IS_A_DICTS = ("expects repr(d) == '{}': a shmap.Map's repr names the map (and the deep one "
                   "would make 1,100 maps)")
POP_ORDER = ("expects two mappings filled alike to pop their items in the same order (dict's "
             "insertion order): a shmap.Map's order is its hash order, and each map hashes with a "
             "seed of its own (test_dict.py: test_popitem_drains_the_map checks the rest)")
FAILING_MAPPING_STR_KEYS = ("its failing mapping yields str keys ('a'), which this map refuses "
                            "with TypeError before the failure the test waits for")


class _MapFactory:
    """Makes the test's mappings: each a new map of this class's types under a name of its
    own, closed and removed when the test ends."""

    key = str
    value = "pickle"
    type2test = shmap.Map

    def _empty_mapping(self):
        name = f"shmap-test-py-{os.getpid()}-mapping-{next(_counter)}"
        m = shmap.Map(name, create="new", key=self.key, value=self.value, initial_capacity=8)
        self.addCleanup(_drop, m)
        return m


def _drop(m):
    m.close()
    shmap.remove(m.name)


class StrPickleMappingTests(_MapFactory, mapping_tests.TestHashMappingProtocol):
    key, value = str, "pickle"

    test_constructor = _skip(NEEDS_A_NAME)
    test_fromkeys = _skip(NEEDS_A_NAME)
    test_copy = _skip(NEEDS_A_NAME)
    test_values = _skip(ONE_KEY_TYPE + " (int keys: IntPickleMappingTests runs it)")
    test_items = _skip(ONE_KEY_TYPE + " (int keys: IntPickleMappingTests runs it)")
    test_clear = _skip(ONE_KEY_TYPE + " (int keys: IntPickleMappingTests runs it)")
    test_mutatingiteration = _skip(ONE_KEY_TYPE + " (int keys: IntPickleMappingTests runs it)")
    test_eq = _skip(ANY_HASHABLE_KEY)
    test_popitem = _skip(POP_ORDER)
    test_repr = _skip(REPR_IS_A_DICTS)
    test_repr_deep = _skip(REPR_IS_A_DICTS)

    def test_update(self):
        # TestMappingProtocol's part mixes int keys ({1: 100}) and str keys (update(x=100)).
        mapping_tests.BasicTestMappingProtocol.test_update(self)

    def test_getitem(self):
        # TestHashMappingProtocol's part: ANY_HASHABLE_KEY.
        mapping_tests.TestMappingProtocol.test_getitem(self)

    def test_pop(self):
        # TestHashMappingProtocol's part: ANY_HASHABLE_KEY.
        mapping_tests.TestMappingProtocol.test_pop(self)

    def test_setdefault(self):
        # TestMappingProtocol's part: VALUES_ARE_COPIES; TestHashMappingProtocol's:
        # ANY_HASHABLE_KEY.
        mapping_tests.BasicTestMappingProtocol.test_setdefault(self)


class IntPickleMappingTests(_MapFactory, mapping_tests.BasicTestMappingProtocol):
    """BasicTestMappingProtocol with int keys, and the tests of the derived classes whose keys
    are all ints."""

    key, value = int, "pickle"

    def _reference(self):
        return {1: "2", 10: "value1", 100: (1, 2, 3)}

    test_update = _skip(FAILING_MAPPING_STR_KEYS)
    test_values = mapping_tests.TestMappingProtocol.test_values
    test_items = mapping_tests.TestMappingProtocol.test_items
    test_clear = mapping_tests.TestMappingProtocol.test_clear
    test_mutatingiteration = mapping_tests.TestHashMappingProtocol.test_mutatingiteration


def _basic(key, value, reference, skips=()):
    """A BasicTestMappingProtocol run on a key -> value map with this reference mapping."""
    body = {"key": key, "value": value, "_reference": lambda self: dict(reference)}
    body.update(skips)
    tname = lambda t: t if isinstance(t, str) else t.__name__  # noqa: E731
    name = f"Basic_{tname(key)}_{tname(value)}_MappingTests"
    return type(name, (_MapFactory, mapping_tests.BasicTestMappingProtocol), body)


Basic_bytes_bytes = _basic(bytes, bytes, {b"1": b"2", b"key1": b"value1", b"key2": b"\0\xff"},
                           {"test_update": _skip(FAILING_MAPPING_STR_KEYS)})
Basic_str_str = _basic(str, str, {"1": "2", "key1": "value1", "ключ": "значение €"})
Basic_bytes_int = _basic(bytes, int, {b"1": 2, b"key1": 2**64 - 1, b"key2": 0},
                         {"test_update": _skip(FAILING_MAPPING_STR_KEYS)})
Basic_int_int = _basic(int, int, {1: 2, 10: 20, 2**64 - 1: 300},
                       {"test_update": _skip(FAILING_MAPPING_STR_KEYS)})
Basic_int_float = _basic(int, float, {1: 0.5, 10: -2.25, 100: 1e300},
                         {"test_update": _skip(FAILING_MAPPING_STR_KEYS)})
