# The example in examples/python runs to the end (its own asserts check the counts, the cache
# and the killed worker's acknowledged increments).
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_word_count_example_runs():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", "word_count.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "checks ok" in out.stdout
