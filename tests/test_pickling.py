"""What workers cannot import travels by value, in large chunks too (they are not searched for names)."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import cloudpickle

from glimpse.pools.contract import pickling

MIB = 1 << 20

_MAIN_SCRIPT = """
import pickle, sys
from glimpse.pools.contract import pickling
class Image:
    def __init__(self, data):
        self.data = data
def double(x):
    return 2 * x
big = b"x" * (1 << 20)
chunks = {
    "instance": [Image(big)],
    "function": [big, double],
    "class": [big, Image],
    "in a dict": [{"image": big, "function": double}],
    "outcome": ([big, Image(b"y")], None, 0.5),
}
sys.stdout.buffer.write(pickle.dumps({name: pickling.dumps(chunk) for name, chunk in chunks.items()}))
"""


def test_large_chunks_holding_what_main_defines_are_pickled_by_value():
    output = subprocess.run([sys.executable, "-c", _MAIN_SCRIPT], capture_output=True, check=True).stdout
    blobs = pickle.loads(output)
    # This process's __main__ (pytest) defines none of them: only a pickle by value loads here.
    loaded = {name: cloudpickle.loads(blob) for name, blob in blobs.items()}
    assert loaded["instance"][0].data == b"x" * MIB
    assert loaded["function"][1](21) == 42
    assert loaded["class"][1](b"z").data == b"z"
    assert loaded["in a dict"][0]["function"](2) == 4
    assert loaded["outcome"][0][1].data == b"y"


def test_large_chunks_holding_a_module_registered_by_value_are_pickled_by_value(tmp_path, monkeypatch):
    (tmp_path / "glimpse_by_value_probe.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("glimpse_by_value_probe")
    cloudpickle.register_pickle_by_value(module)
    try:
        blob = pickling.dumps([b"x" * MIB, module.triple])
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules["glimpse_by_value_probe"]
    assert not pickling.by_reference(blob), "the function was pickled by reference"


def test_large_chunks_of_plain_data_use_the_standard_pickle():
    for chunk in ([b"x" * MIB, b"y" * MIB], [bytearray(MIB)], ([b"r" * MIB], None, 0.1), list(range(100_000))):
        blob = pickling.dumps(chunk)
        assert pickling.by_reference(blob) and pickle.loads(blob) == chunk


_SENDER_SCRIPT = """
import enum, sys
import cloudpickle
class Color(enum.Enum):
    RED = 1
class Counter:
    count = 0
Counter.count = 7
sys.stdout.buffer.write(cloudpickle.dumps([Counter, Color.RED]))
"""


def test_loads_leaves_a_class_it_has_as_it_is_and_makes_one_it_lacks():
    # cloudpickle.loads would set the class it already has to the sender's copy (cloudpipe/cloudpickle#439).
    sent = subprocess.run([sys.executable, "-c", _SENDER_SCRIPT], capture_output=True, check=True).stdout
    counter, red = pickling.loads(sent)
    assert counter.count == 7 and red.value == 1 and type(red).__name__ == "Color"
    counter.count = 8
    for data in (sent, memoryview(sent), bytearray(sent)):
        again, red_again = pickling.loads(data)
        assert again is counter and counter.count == 8 and red_again is red
    cloudpickle.loads(sent)
    assert counter.count == 7
