"""Tests of the codecs: round trips, one copy into a destination, independence of
decoded values, zero-copy views, and CodecError (never anything else) for every
object that does not encode and every block or meta that does not decode."""

from __future__ import annotations

import array
import ast
import contextlib
import doctest
import inspect
import math
import pickle
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import blockipc._core.codecs as codecs_module
from _helpers import check_each
from blockipc import CodecError, InvalidRequest
from blockipc._core.codecs import CODEC_NAMES, DEFAULT_CODEC, Codec, Encoded, get_codec

RAW = get_codec("raw")
JSON = get_codec("json")
MSGPACK = get_codec("msgpack")
NUMPY = get_codec("numpy")
PICKLE = get_codec("pickle")

GOOD = {"dtype": "<i2", "shape": [2, 2], "order": "C"}  # numpy meta for 8 bytes
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def put_and_get(codec: Codec, obj: object, *, offset: int = 3) -> tuple[Any, dict[str, Any]]:
    """Encode ``obj`` into the middle of a larger buffer, decode it from there, then
    scribble over the buffer: what was decoded must not change."""
    enc = codec.prepare(obj)
    buf = bytearray(b"\xee" * (enc.nbytes + 2 * offset))
    enc.write_into(memoryview(buf)[offset : offset + enc.nbytes])
    assert buf[:offset] == buf[offset + enc.nbytes :] == b"\xee" * offset  # nothing spilled
    meta = msgpack.unpackb(msgpack.packb(enc.meta))  # as the routing table keeps it
    assert meta == enc.meta
    value = codec.decode(memoryview(buf)[offset : offset + enc.nbytes], meta)
    snapshot = pickle.dumps(value)
    buf[:] = b"\x5a" * len(buf)
    assert pickle.dumps(value) == snapshot, "the decoded value still depends on the block"
    return value, meta


# -- the module --------------------------------------------------------------------


def test_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(codecs_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "abc", "collections", "math", "pickle", "types", "typing"}
    assert imported <= allowed | {"msgpack", "numpy", "orjson"}


def test_docstring_examples() -> None:
    result = doctest.testmod(codecs_module)
    assert result.attempted > 10
    assert result.failed == 0


def test_registry() -> None:
    assert CODEC_NAMES == ("raw", "json", "msgpack", "numpy", "pickle")
    assert DEFAULT_CODEC == "msgpack"
    for name in CODEC_NAMES:
        codec = get_codec(name)
        assert codec.name == name
        assert get_codec(name) is codec
        assert codec.trusted_only == (name == "pickle")
        assert repr(codec) == f"<{type(codec).__name__} {name!r}>"
    for name in codecs_module.__all__:
        assert getattr(codecs_module, name) is not None


def test_unknown_codec() -> None:
    def check(name: Any) -> None:
        with pytest.raises(CodecError, match="known codecs are 'raw', 'json', 'msgpack', 'numpy'"):
            get_codec(name)

    check_each(["JSON", "Pickle", "", "bson", "raw ", None, 3, ["raw"]], check)


# -- Encoded -----------------------------------------------------------------------


def test_encoded_write_into_needs_an_exact_writable_destination() -> None:
    enc = MSGPACK.prepare([1, 2, 3])
    assert enc.nbytes == 4
    for dst in (bytearray(3), bytearray(5), memoryview(bytearray(8))[::2]):
        with pytest.raises(InvalidRequest):
            enc.write_into(dst)
    with pytest.raises(InvalidRequest, match="read-only"):
        enc.write_into(memoryview(bytes(4)))
    with pytest.raises(InvalidRequest):
        enc.write_into("abcd")  # type: ignore[arg-type]
    dst = memoryview(bytearray(8)).cast("I")  # any flat writable buffer of nbytes
    enc = RAW.prepare(b"12345678")
    enc.write_into(dst)
    assert dst.tobytes() == b"12345678"


def test_encoded_buffer_tobytes_and_release() -> None:
    data = bytearray(b"abc")
    enc = RAW.prepare(data)
    assert enc.buffer.readonly
    assert enc.buffer.tobytes() == b"abc"
    data[0] = ord("X")  # zero copy: prepare keeps a view of the caller's buffer
    assert enc.tobytes() == b"Xbc"
    with pytest.raises(BufferError):
        data.extend(b"d")  # held by the export
    with enc:
        pass
    data.extend(b"d")  # released
    with pytest.raises(InvalidRequest):
        enc.write_into(bytearray(3))
    enc.release()  # idempotent
    enc = MSGPACK.prepare([1, 2])
    pinned = np.frombuffer(enc.buffer, dtype="u1")
    enc.release()  # even while someone holds an export of .buffer
    assert pinned.tobytes() == b"\x92\x01\x02"
    assert repr(MSGPACK.prepare(None)) == "<Encoded nbytes=1 meta={}>"


def test_encoded_from_bytes_is_not_copied() -> None:
    payload = b"x" * 100
    assert Encoded(payload).tobytes() is payload
    assert Encoded(bytearray(b"ab"), {"k": 1}).meta == {"k": 1}


# -- raw ---------------------------------------------------------------------------


RAW_CASES = [
    (b"", b""),
    (b"hello", b"hello"),
    (bytearray(b"\x00\xff"), b"\x00\xff"),
    (memoryview(b"abcdef")[1:4], b"bcd"),
    (memoryview(b"abcdef")[::2], b"ace"),  # not contiguous: copied
    (array.array("H", [1, 2]), array.array("H", [1, 2]).tobytes()),
    (
        np.arange(6, dtype="<u2").reshape(2, 3).T,
        np.arange(6, dtype="<u2").reshape(2, 3).T.tobytes(),
    ),
]


def test_raw_round_trip() -> None:
    def check(case: tuple[Any, bytes]) -> None:
        value, meta = put_and_get(RAW, case[0])
        assert value == case[1]
        assert type(value) is bytes
        assert meta == {}

    check_each(RAW_CASES, check)


def test_raw_view_is_the_memory_itself() -> None:
    block = bytearray(b"abcd")
    view = RAW.view(memoryview(block))
    assert isinstance(view, memoryview)
    block[0] = ord("Z")
    assert view.tobytes() == b"Zbcd"
    src = memoryview(block)
    assert RAW.view(src) is src
    assert RAW.view(src[1:3]).tobytes() == b"bc"
    with pytest.raises(CodecError):
        RAW.view(src[::2])
    assert RAW.view(src.cast("H")).tobytes() == b"Zbcd"  # flattened to bytes


# -- json and msgpack --------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
msgpack_values = st.recursive(
    scalars | st.binary(max_size=20) | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**64 - 1), inner, max_size=5)
    ),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equality that also compares types (1 is not 1.0 or True), tells 0.0 from -0.0
    and matches nan with nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@FAST
@given(value=json_values, offset=st.integers(0, 9))
def test_json_round_trip(value: object, offset: int) -> None:
    decoded, meta = put_and_get(JSON, value, offset=offset)
    assert same(decoded, value)
    assert meta == {}


@FAST
@given(value=msgpack_values, offset=st.integers(0, 9))
def test_msgpack_round_trip(value: object, offset: int) -> None:
    decoded, meta = put_and_get(MSGPACK, value, offset=offset)
    assert same(decoded, value)
    assert meta == {}


def test_json_and_msgpack_details() -> None:
    assert JSON.prepare(float("nan")).tobytes() == b"null"  # orjson writes NaN as null
    assert MSGPACK.decode(MSGPACK.prepare((1, (2,))).tobytes()) == [1, [2]]
    assert MSGPACK.decode(MSGPACK.prepare({1: "int key"}).tobytes()) == {1: "int key"}
    assert JSON.decode(bytearray(b' {"a": [1]} '), None) == {"a": [1]}
    assert JSON.view(b"[1]", {}) == [1]  # no zero-copy form: decodes
    assert MSGPACK.view(memoryview(b"\x01").toreadonly()) == 1


def _deep(n: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(n):
        value = [value]
    return value


def _local_object() -> object:
    class Local:
        pass

    return Local()


def _cyclic() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


CANNOT_ENCODE: list[tuple[Codec, object]] = [
    (RAW, "text"),
    (RAW, 5),
    (RAW, None),
    (RAW, [1, 2]),
    (RAW, np.zeros(2, "M8[s]")),
    (JSON, {1, 2}),
    (JSON, b"bytes"),
    (JSON, 2**64),
    (JSON, {1: "non-str key"}),
    (JSON, "\ud800"),
    (JSON, object()),
    (JSON, _cyclic()),
    (JSON, _deep(2000)),
    (MSGPACK, {1, 2}),
    (MSGPACK, 2**64),
    (MSGPACK, -(2**63) - 1),
    (MSGPACK, "\ud800"),
    (MSGPACK, object()),
    (MSGPACK, _cyclic()),
    (PICKLE, lambda: None),
    (PICKLE, threading.Lock()),
    (PICKLE, _local_object()),
    (NUMPY, [1, 2, 3]),
    (NUMPY, 3.5),
    (NUMPY, b"bytes"),
    (NUMPY, np.array([1, "a", None], dtype=object)),
    (NUMPY, np.zeros(2, dtype=[("a", "<i4"), ("b", "O")])),
    (NUMPY, np.ma.masked_array([1, 2], mask=[False, True])),
]


def test_cannot_encode() -> None:
    def check(case: tuple[Codec, object]) -> None:
        codec, obj = case
        with pytest.raises(CodecError, match=f"{codec.name} codec cannot encode") as info:
            codec.prepare(obj)
        if codec is not NUMPY:  # numpy refuses by itself; the others chain the library's error
            assert info.value.__cause__ is not None

    check_each(CANNOT_ENCODE, check)


CANNOT_DECODE: list[tuple[Codec, Any]] = [
    (JSON, b""),
    (JSON, b"{"),
    (JSON, b"[1,"),
    (JSON, b"\xff"),
    (JSON, b"1 2"),
    (JSON, b"[" * 2000 + b"]" * 2000),
    (MSGPACK, b""),
    (MSGPACK, b"\xc1"),  # never used
    (MSGPACK, b"\x92\x01"),  # truncated
    (MSGPACK, b"\x01\x02"),  # extra data
    (MSGPACK, b"\xa1\xff"),  # invalid UTF-8
    (MSGPACK, b"\x81\x90\x00"),  # a list as a map key
    (MSGPACK, b"\xdd\xff\xff\xff\xff"),  # an array claiming 4G items
    (MSGPACK, b"\x91" * 5000 + b"\x00"),  # too deep
    (PICKLE, b""),
    (PICKLE, b"not a pickle"),
    (PICKLE, b"\x80\x05garbage"),
    (PICKLE, pickle.dumps([1, 2, 3])[:-3]),
    (PICKLE, b"cno_such_module\nthing\n."),
    (PICKLE, b"\x80\x04N\x85R."),  # calls None()
    (RAW, None),
    (JSON, "text"),
    (MSGPACK, 12),
    (PICKLE, memoryview(b"abcd")[::2]),
    (NUMPY, "text"),
]


def test_cannot_decode() -> None:
    def check(case: tuple[Codec, Any]) -> None:
        codec, data = case
        with pytest.raises(CodecError, match=f"{codec.name} codec cannot decode") as info:
            codec.decode(data, GOOD if codec is NUMPY else {})
        assert info.value.__cause__ is not None

    check_each(CANNOT_DECODE, check)


def test_meta_must_be_a_dict() -> None:
    def check(case: tuple[str, Any]) -> None:
        with pytest.raises(CodecError, match="meta must be a dict"):
            get_codec(case[0]).decode(b"\x00", case[1])

    metas: list[Any] = [[], "dtype", 5]
    check_each([(name, meta) for name in CODEC_NAMES for meta in metas], check)


# -- pickle ------------------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


def test_pickle_round_trip() -> None:
    def check(obj: object) -> None:
        value, meta = put_and_get(PICKLE, obj)
        assert value == obj
        assert meta == {}

    check_each(
        [{1, 2}, (1, "a", b"b"), Point(3), {"k": [Point(1), frozenset({2})]}, 10**100], check
    )


# -- numpy -------------------------------------------------------------------------

dtypes = st.one_of(
    hnp.scalar_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
    hnp.array_dtypes(hnp.scalar_dtypes(), max_size=3, allow_subarrays=True),
)
LAYOUTS: dict[str, Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]] = {
    "as is": lambda a: a,
    "fortran": np.asfortranarray,
    "transposed": lambda a: a.T,
    "reversed": lambda a: a[::-1] if a.ndim else a,
    "strided": lambda a: a[..., ::2] if a.ndim else a,
}


@FAST
@given(
    arr=hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
    layout=st.sampled_from(sorted(LAYOUTS)),
    offset=st.integers(0, 9),
)
def test_numpy_round_trip(arr: np.ndarray[Any, Any], layout: str, offset: int) -> None:
    arr = LAYOUTS[layout](arr)
    value, meta = put_and_get(NUMPY, arr, offset=offset)
    assert type(value) is np.ndarray
    assert value.dtype == arr.dtype
    assert value.shape == arr.shape
    assert value.tobytes() == arr.tobytes()  # bitwise: NaNs and -0.0 included
    assert not value.flags.writeable
    assert meta["shape"] == list(arr.shape)
    if arr.flags.c_contiguous:
        assert meta["order"] == "C"
    elif arr.flags.f_contiguous:
        assert meta["order"] == "F"
        assert value.flags.f_contiguous
    else:  # copied into C order first
        assert meta["order"] == "C"
        assert value.flags.c_contiguous


class Sub(np.ndarray):
    pass


NUMPY_EXAMPLES = [
    np.float64(2.5),
    np.array(7, dtype=">i4"),
    np.zeros((0,), "<f8"),
    np.zeros((2, 0, 3), "<c16", order="F"),
    np.arange(24, dtype="<f4").reshape(2, 3, 4, order="F"),
    np.array(["2024-01-01", "NaT"], dtype="<M8[ns]"),
    np.array([b"ab", b"c"], dtype="S3"),
    np.array([(1, [2.0, 3.0])], dtype=[(("title", "a"), "<i4"), ("b", ">f8", (2,))]),
    np.zeros(3, dtype={"names": ["a"], "formats": ["u1"], "offsets": [2], "itemsize": 5}),
    np.zeros(3, dtype=[]),
    np.arange(4).view(Sub),  # a subclass: stored as a plain ndarray
]


def test_numpy_examples() -> None:
    def check(arr: Any) -> None:
        value, _ = put_and_get(NUMPY, arr)
        expected = np.asarray(arr)
        assert type(value) is np.ndarray
        assert value.dtype == expected.dtype
        assert value.shape == expected.shape
        assert value.tobytes() == expected.tobytes()  # padding bytes included

    check_each(NUMPY_EXAMPLES, check)


def test_numpy_meta_is_plain_data() -> None:
    enc = NUMPY.prepare(np.zeros((2, 3), dtype=[("a", "<i2", (2,)), ("b", "|S2")], order="F"))
    assert enc.meta == {
        "dtype": [["a", "<i2", [2]], ["b", "|S2"]],
        "shape": [2, 3],
        "order": "F",
    }


def test_numpy_decode_is_a_read_only_copy() -> None:
    block = bytearray(NUMPY.prepare(np.arange(4, dtype="<i4")).tobytes())
    meta = {"dtype": "<i4", "shape": [2, 2], "order": "C"}
    arr = NUMPY.decode(memoryview(block), meta)
    assert not arr.flags.writeable
    assert not np.shares_memory(arr, np.frombuffer(block, dtype="<u1"))
    with pytest.raises(ValueError, match="read-only"):
        arr[0, 0] = 5
    block[:] = bytes(len(block))
    assert arr.tolist() == [[0, 1], [2, 3]]


def test_numpy_view_is_zero_copy() -> None:
    src = np.arange(6, dtype="<f8").reshape(2, 3, order="F")
    enc = NUMPY.prepare(src)
    assert np.shares_memory(np.frombuffer(enc.buffer, dtype="u1"), src)  # prepare: no copy
    block = bytearray(enc.nbytes)
    enc.write_into(block)

    view = NUMPY.view(memoryview(block), enc.meta)
    assert np.array_equal(view, src)
    assert view.flags.writeable
    assert view.flags.f_contiguous
    block[:8] = np.float64(42).tobytes()  # the source shows through
    assert view[0, 0] == 42
    view[1, 2] = -1.0  # and the view writes into the block
    assert np.frombuffer(block, dtype="<f8")[-1] == -1.0

    frozen = NUMPY.view(memoryview(block).toreadonly(), enc.meta)
    assert not frozen.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        frozen[0, 0] = 1.0
    assert NUMPY.view(bytes(block), enc.meta)[0, 0] == 42

    with pytest.raises(BufferError):  # documented: a view pins the memory under it
        block.extend(b"x")
    del view, frozen
    block.extend(b"x")


def test_numpy_cannot_encode_string_dtype() -> None:
    string_dtype = getattr(np.dtypes, "StringDType", None)
    if string_dtype is None:
        pytest.skip("numpy < 2 has no StringDType")
    with pytest.raises(CodecError, match="Python objects"):
        NUMPY.prepare(np.array(["a", "bc"], dtype=string_dtype()))


BAD_META: list[tuple[dict[str, Any], str]] = [
    ({"dtype": None}, "not a dtype"),
    ({"dtype": 5}, "not a dtype"),
    ({"dtype": "bogus"}, "not a dtype"),
    ({"dtype": "O"}, "Python objects"),
    ({"dtype": [["a", "O"]]}, "Python objects"),
    ({"dtype": "(2,)i2"}, "sub-array"),
    ({"dtype": "S0"}, "no size"),
    ({"dtype": [["a"]]}, "not a dtype"),
    ({"dtype": [["a", "<i2", 3]]}, "not a dtype"),
    ({"dtype": "<i4"}, "the data is 8 bytes"),
    ({"shape": None}, "shape"),
    ({"shape": "2,2"}, "shape"),
    ({"shape": [2, -2]}, "shape"),
    ({"shape": [2, 2.0]}, "shape"),
    ({"shape": [True, 8]}, "shape"),
    ({"shape": [1] * 65}, "shape"),
    ({"shape": [3, 3]}, "the data is 8 bytes"),
    ({"shape": [2**64, 2**64]}, "the data is 8 bytes"),
    ({"order": "A"}, "order"),
    ({"order": None}, "order"),
    ({"order": "c"}, "order"),
]


def test_numpy_bad_meta() -> None:
    def check(case: tuple[dict[str, Any], str]) -> None:
        meta = {**GOOD, **case[0]}
        for method in (NUMPY.decode, NUMPY.view):
            with pytest.raises(CodecError, match=case[1]):
                method(bytearray(8), meta)

    check_each(BAD_META, check)


def test_numpy_missing_meta() -> None:
    assert NUMPY.decode(bytes(8), GOOD).tolist() == [[0, 0], [0, 0]]
    for key in GOOD:
        with pytest.raises(CodecError):
            NUMPY.decode(bytes(8), {k: v for k, v in GOOD.items() if k != key})
    with pytest.raises(CodecError):
        NUMPY.decode(bytes(8))
    with pytest.raises(CodecError):
        NUMPY.decode(b"", {**GOOD, "shape": [0, 2**70]})  # 0 bytes, but too many items


# -- optional libraries ------------------------------------------------------------


def test_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` fail
    for call in (
        lambda: NUMPY.prepare([1]),
        lambda: NUMPY.decode(bytes(8), GOOD),
        lambda: NUMPY.view(bytes(8), GOOD),
    ):
        with pytest.raises(CodecError, match=r"needs numpy: pip install 'blockipc\[numpy\]'"):
            call()
    assert MSGPACK.decode(MSGPACK.prepare([1]).tobytes()) == [1]  # the others still work


def test_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)
    with pytest.raises(CodecError, match=r"needs orjson: pip install 'blockipc\[json\]'"):
        JSON.prepare([1])
    with pytest.raises(CodecError, match=r"needs orjson: pip install 'blockipc\[json\]'"):
        JSON.decode(b"[1]")


# -- fuzz --------------------------------------------------------------------------

meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**65) | st.text(max_size=6) | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
numpy_meta = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(
            ["<f8", "u1", ">i2", "|S2", "<U1", "<M8[s]", "V3", "O", "b1", "c8", "i2,u1"]
        )
        | meta_values
        | st.lists(st.tuples(st.text(max_size=2), st.sampled_from(["<i2", "u1", "O"])), max_size=3),
        "shape": st.lists(st.integers(-1, 9), max_size=4) | meta_values,
        "order": st.sampled_from(["C", "F", "K"]) | meta_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(CODEC_NAMES),
    data=st.binary(max_size=40),
    meta=st.none() | numpy_meta | meta_values,
    zero_copy=st.booleans(),
)
def test_fuzz_decode_gives_a_value_or_codec_error(
    name: str, data: bytes, meta: Any, zero_copy: bool
) -> None:
    codec = get_codec(name)
    src = memoryview(bytearray(data))
    with contextlib.suppress(CodecError):
        (codec.view if zero_copy else codec.decode)(src, meta)


FUZZ_DTYPES = ["<f8", "u1", ">i2", "|S3", "<U1", "<M8[s]", "V3", "?", "c8", "i2,u1", "<m8[D]"]


@settings(max_examples=100, deadline=None)
@given(
    dtype=st.sampled_from(FUZZ_DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=3),
    order=st.sampled_from(["C", "F"]),
    data=st.data(),
)
def test_fuzz_numpy_any_bytes_of_the_right_size_decode(
    dtype: str, shape: list[int], order: str, data: st.DataObject
) -> None:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    block = bytearray(data.draw(st.binary(min_size=nbytes, max_size=nbytes)))
    meta = {"dtype": dtype, "shape": shape, "order": order}
    value = NUMPY.decode(block, meta)
    view = NUMPY.view(block, meta)
    assert value.shape == view.shape == tuple(shape)
    assert value.tobytes(order="A") == view.tobytes(order="A") == bytes(block)
