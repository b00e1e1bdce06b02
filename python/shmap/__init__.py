"""shmap for Python: a dict shared by every process on the machine.

A ``shmap.Map`` is a lock-free hash map in a named POSIX shared-memory segment (``/dev/shm``).
Any number of processes attach to it by name and read and write it at once: no server process,
no lock that a killed worker could leave held, growth while everyone stays attached::

    import shmap
    with shmap.Map("counts", create=True, key=str, value=int) as m:
        m["apples"] = 3
        m.fetch_add("apples", 2)          # atomic, from any number of processes
        m.update("apples", lambda v: v * 10)
        print(dict(m.items()))

Types. A map holds one key type and one value type, recorded in the segment:

* keys: ``int`` (0 .. 2**64-1), ``bytes`` or ``str``;
* values: ``int`` (0 .. 2**64-1; ``fetch_add`` wraps mod 2**64), ``float``, ``bytes``, ``str``
  (stored as UTF-8) or ``"pickle"`` (any picklable object).

Opening an existing map without ``key``/``value`` reads them from the segment; giving other
types than the map holds raises ``shmap.Error`` with code ``"layout_mismatch"``. bytes and str
are stored as themselves (the ``shmap`` command-line tool and C++'s ``shmap::StringMap`` read
them); an int key of a map with string values is stored as its 8 little-endian bytes.

Sizes: in a map with bytes/str keys or bytes/str/pickle values, a key and its value take at
most ``MAX_STRING_ENTRY_BYTES`` bytes together (else ``InvalidArgument``, nothing written).

Consistency: every single operation is atomic. ``len``, iteration, ``keys()``, ``values()`` and
``items()`` are weakly consistent (each entry present for the whole walk is seen once; entries
written meanwhile may or may not be). ``update(key, fn)`` is an atomic read-modify-write: ``fn``
may run more than once (when another write came in between) and must not use the map.

Multimaps: ``shmap.Multimap`` gives each key any number of values (bytes, str or pickles), kept
in the order they were added.

Processes: pass the map (it pickles as its name and types) or its name to other processes.
After ``os.fork()`` (multiprocessing's "fork" start method) a child reopens a map it inherited
on first use, by name: the parent's attachment is never used by the child.
"""

from __future__ import annotations

import atexit as _atexit
import collections.abc as _abc
import multiprocessing.util as _mp_util
import weakref as _weakref

from . import _shmap
from ._shmap import MAX_STRING_ENTRY_BYTES, Error, InvalidArgument, list_maps, remove

__all__ = ["Map", "Multimap", "Error", "InvalidArgument", "MAX_STRING_ENTRY_BYTES", "remove", "list_maps",
           "load", "open", "create", "open_or_create"]

_MISSING = object()
_KEY_TYPES = {int: "int", bytes: "bytes", str: "str"}
_VALUE_TYPES = {int: "int", float: "float", bytes: "bytes", str: "str", "pickle": "pickle"}
_PY_TYPES = {"int": int, "float": float, "bytes": bytes, "str": str, "pickle": "pickle"}


def _type_name(t, table, what):
    if t is None:
        return None
    if isinstance(t, str) and t in _PY_TYPES:
        t = _PY_TYPES[t]
    try:
        return table[t]
    except (KeyError, TypeError):
        raise ValueError(f"{what} must be one of {', '.join(_PY_TYPES[n].__name__ if n != 'pickle' else repr(n) for n in table.values())}, not {t!r}") from None


class Map(_shmap._Core):
    """A shared-memory hash map, attached by name (a ``collections.abc.MutableMapping``).

    ``Map(name, create=False, key=None, value=None, readonly=False, initial_capacity=1024,
    max_handles=128, mode=0o600, max_bytes=64 << 30)``

    * ``create=False``: open map ``name`` (``Error`` with code ``"not_found"`` if absent);
      ``create=True``: open it, or create it if absent; ``create="new"``: create it
      (``"already_exists"`` if present). ``Map.open``, ``Map.open_or_create`` and
      ``Map.create`` say the same.
    * ``key``: ``int``, ``bytes`` or ``str``; ``value``: ``int``, ``float``, ``bytes``, ``str``
      or ``"pickle"``. A new map defaults to ``int -> int``; an existing one to what it holds.
    * ``readonly=True``: attach for reading only (read permission on the segment is enough;
      writes raise ``Error`` with code ``"permission_denied"``).
    * the other arguments are a new map's creation options (ignored when the map exists).
    """

    def __init__(self, name, create=False, key=None, value=None, *, readonly=False,
                 initial_capacity=1024, max_handles=128, mode=0o600, max_bytes=64 << 30):
        if create is False:
            how = "open"
        elif create is True:
            how = "open_or_create"
        elif create == "new":
            how = "create"
        else:
            raise ValueError(f"create must be False, True or 'new', not {create!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        super().__init__(name, how, _type_name(key, _KEY_TYPES, "key"),
                         _type_name(value, _VALUE_TYPES, "value"), readonly,
                         initial_capacity, max_handles, mode, max_bytes)
        _live[id(self)] = self

    # -- constructors like the C++ API

    @classmethod
    def open(cls, name, key=None, value=None, *, readonly=False):
        """Opens the existing map ``name`` (with the types it holds, or these)."""
        return cls(name, False, key, value, readonly=readonly)

    @classmethod
    def create(cls, name, key=int, value=int, **options):
        """Creates map ``name``; ``Error`` with code ``"already_exists"`` if there is one."""
        return cls(name, "new", key, value, **options)

    @classmethod
    def open_or_create(cls, name, key=None, value=None, **options):
        """Opens map ``name``, creating it (``key -> value``, default ``int -> int``) if absent."""
        return cls(name, True, key, value, **options)

    # -- MutableMapping

    def __iter__(self):
        """Iterates over the keys present at the start of the walk (weakly consistent)."""
        return iter(self._keys())

    def keys(self):
        """A KeysView (weakly consistent, like every walk)."""
        return _abc.KeysView(self)

    def values(self):
        """A ValuesView; each iteration walks the map once."""
        return _ValuesView(self)

    def items(self):
        """An ItemsView; each iteration walks the map once."""
        return _ItemsView(self)

    def pop(self, key, default=_MISSING):
        """Removes key and returns its value (default, or KeyError, if absent). Two steps: a
        write between the read and the erase is erased unseen."""
        return self._pop(key, default, default is not _MISSING)

    def popitem(self):
        """Removes and returns some (key, value) pair; KeyError when empty."""
        while (key := self._first_key()) is not None:
            value = self._pop(key, _MISSING, True)
            if value is not _MISSING:  # else another process took it first: the next one
                return key, value
        raise KeyError("popitem(): shmap.Map is empty")

    def clear(self):
        """Removes every key (each one atomically; the whole is not one step)."""
        for key in self._keys():
            self.discard(key)

    def update(self, *args, **kwargs):
        """Two forms:

        * ``update(key, fn, default=...)``: atomic read-modify-write. The value becomes
          ``fn(value)``, unless another write came in between; then ``fn`` runs again on the
          newer value. Returns the value written. An absent key raises KeyError, or, with a
          ``default``, is inserted as ``fn(default)``. An exception from ``fn`` propagates and
          changes nothing. ``fn`` must not use this map.
        * ``update(other)`` / ``update(**kw)``: ``dict.update`` (each key set on its own).
        """
        if len(args) == 2 and callable(args[1]) and set(kwargs) <= {"default"}:
            default = kwargs.get("default", _MISSING)
            return self._update(args[0], args[1], default, default is not _MISSING)
        if len(args) > 1:
            raise TypeError(f"update expected (key, fn) or one mapping, got {len(args)} arguments")
        return _abc.MutableMapping.update(self, *args, **kwargs)

    __eq__ = _abc.Mapping.__eq__
    __hash__ = None

    # -- the rest

    def remove(self):
        """Unlinks this map's segment (attached processes keep using it until they close).
        Returns False if it was already gone."""
        return remove(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        # To another process (multiprocessing's "spawn", a Pool's arguments): reopen by name.
        return (_reopen, (self.name, self.key_type, self.value_type, self.readonly))

    def __repr__(self):
        if self.closed:
            return f"<shmap.Map {self.name!r} (closed)>"
        return f"<shmap.Map {self.name!r} {self.key_type} -> {self.value_type}>"


class Multimap(_shmap._MultiCore):
    """A shared-memory multimap: each key has any number of values, in the order they were
    added (C++'s ``shmap::StringMultimap``).

    ``Multimap(name, create=False, key=None, value=None, readonly=False, ...)`` as ``Map``;
    keys ``int``, ``bytes`` or ``str``, values ``bytes``, ``str`` or ``"pickle"`` (a new one
    defaults to ``bytes -> bytes``). Every change to a key's values is atomic: a reader sees
    all of a key's values before a write or all after it. ``len(mm)`` counts values; iteration
    gives each key once; ``mm[key]`` is key's list of values (KeyError when it has none).
    """

    def __init__(self, name, create=False, key=None, value=None, *, readonly=False,
                 initial_capacity=1024, max_handles=128, mode=0o600, max_bytes=64 << 30):
        how = {False: "open", True: "open_or_create", "new": "create"}.get(create)
        if how is None or isinstance(create, int) and not isinstance(create, bool):
            raise ValueError(f"create must be False, True or 'new', not {create!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        super().__init__(name, how, _type_name(key, _KEY_TYPES, "key"),
                         _type_name(value, _VALUE_TYPES, "value"), readonly,
                         initial_capacity, max_handles, mode, max_bytes)
        _live[id(self)] = self

    @classmethod
    def open(cls, name, key=None, value=None, *, readonly=False):
        """Opens the existing multimap ``name``."""
        return cls(name, False, key, value, readonly=readonly)

    @classmethod
    def create(cls, name, key=bytes, value=bytes, **options):
        """Creates multimap ``name``; ``Error`` with code ``"already_exists"`` if there is one."""
        return cls(name, "new", key, value, **options)

    @classmethod
    def open_or_create(cls, name, key=None, value=None, **options):
        """Opens multimap ``name``, creating it if absent."""
        return cls(name, True, key, value, **options)

    def __getitem__(self, key):
        values = self.get(key)
        if not values:
            raise KeyError(key)
        return values

    def __delitem__(self, key):
        if not self.discard_all(key):
            raise KeyError(key)

    def __iter__(self):
        """Each key once (weakly consistent)."""
        return iter(self._keys())

    def keys(self):
        return self._keys()

    def items(self):
        """(key, value) pairs, a key's values together and in order (weakly consistent)."""
        return self._items()

    def remove(self):
        """Unlinks this multimap's segment."""
        return remove(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        return (_reopen_multimap, (self.name, self.key_type, self.value_type, self.readonly))

    def __repr__(self):
        if self.closed:
            return f"<shmap.Multimap {self.name!r} (closed)>"
        return f"<shmap.Multimap {self.name!r} {self.key_type} -> [{self.value_type}]>"


def _reopen_multimap(name, key, value, readonly):
    return Multimap(name, False, key, value, readonly=readonly)


class _ValuesView(_abc.ValuesView):
    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping._values())


class _ItemsView(_abc.ItemsView):
    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping._items())


_abc.MutableMapping.register(Map)

# Every open Map of this process, closed at exit so that its handle slot is given back at once
# (not when some later open() finds the process dead). multiprocessing's forked workers leave
# through os._exit, which skips atexit, after running multiprocessing's finalizers: each of
# them registers one (a worker clears the registry it inherited, then runs the after-fork
# hooks). A child of a bare os.fork() must close its maps itself.
_live = _weakref.WeakValueDictionary()  # id -> Map (a Map is unhashable, like a dict)


def _close_all():
    for m in list(_live.values()):
        try:
            m.close()
        except Exception:  # noqa: BLE001 - closing at exit must not fail the exit
            pass


class _AfterFork:
    """A weak-referenceable anchor for multiprocessing.util.register_after_fork."""

    @staticmethod
    def hook(_):
        _mp_util.Finalize(None, _close_all, exitpriority=-100)


_after_fork_anchor = _AfterFork()
_mp_util.register_after_fork(_after_fork_anchor, _AfterFork.hook)
_atexit.register(_close_all)


def _reopen(name, key, value, readonly):
    return Map(name, False, key, value, readonly=readonly)


def open(name, key=None, value=None, *, readonly=False):  # noqa: A001 - like Map.open
    """``Map.open``."""
    return Map.open(name, key, value, readonly=readonly)


def create(name, key=int, value=int, **options):
    """``Map.create``."""
    return Map.create(name, key, value, **options)


def open_or_create(name, key=None, value=None, **options):
    """``Map.open_or_create``."""
    return Map.open_or_create(name, key, value, **options)


def load(path, name):
    """Creates map ``name`` from the snapshot at ``path`` (written by ``Map.dump`` or
    ``shmap dump``) and opens it."""
    _shmap.load(path, name)
    return Map.open(name)
