# Fixtures for the Python binding's tests: map names of this process (shmap-test-py-<pid>-...)
# that are removed, with every map made from them, when the test ends.
import itertools
import os
import re

import pytest

import shmap

_counter = itertools.count()


@pytest.fixture
def name(request):
    """A fresh map name; names that start with it are removed after the test."""
    test = re.sub(r"[^A-Za-z0-9._-]", "_", request.node.name)[:80]
    base = f"shmap-test-py-{os.getpid()}-{next(_counter)}-{test}"
    yield base
    for n in shmap.list_maps():
        if n.startswith(base):
            shmap.remove(n)


@pytest.fixture
def names(name):
    """Makes further names under the test's one: names("a") -> '<name>-a'."""
    return lambda suffix: f"{name}-{suffix}"
