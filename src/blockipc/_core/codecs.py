"""Codecs: how an object becomes the bytes of a block, and how those bytes become an
object again. No I/O: a codec only reads and writes buffers it is given.

Theory of operation
-------------------

Encoding is split in two so that large values cross memory once. ``prepare(obj)``
validates the object and returns an :class:`Encoded`: its exact size ``nbytes``, a
small ``meta`` dict that the routing table keeps beside the block (plain str, int
and list values only, so it survives msgpack unchanged), and a read-only byte view
of the encoded form. The caller allocates a block of ``nbytes``, leases it, and
calls ``write_into(view)``: one ``memcpy``. For ``"raw"`` and ``"numpy"`` the byte
view is the caller's own buffer (no intermediate copy at all); for ``"json"``,
``"msgpack"`` and ``"pickle"`` the encoder has to produce bytes first, and the view
is over those. A caller that must not hold the GIL for one long copy can copy
``Encoded.buffer`` in slices instead.

Decoding has two forms. ``decode(src, meta)`` returns an object that owns its memory,
valid after the lease on ``src`` has ended and whatever later happens to the block;
numpy arrays are returned read-only because a decoded value may be shared through
a cache. ``view(src, meta)`` is for use *under* a lease: ``"numpy"`` gives an array
over the block's own memory, ``"raw"`` the memoryview itself, the others decode
(a parsed tree cannot live inside the block).

Bytes in a block come from other processes, so decoding trusts neither them nor the
meta: every failure, whatever the library raised, becomes a
:class:`~blockipc.CodecError` chained to the original, and numpy meta is checked
(a parseable, sized, non-object dtype; integer dimensions >= 0; ``order`` ``"C"`` or
``"F"``; exactly ``nbytes`` of data) before a single byte is interpreted. The one
codec that can run code while decoding is ``"pickle"``: it is used only when named
(:data:`DEFAULT_CODEC` is ``"msgpack"``) and is marked ``trusted_only``.

numpy and orjson are imported when first used, so blockipc works without them (they
are the extras ``blockipc[numpy]`` and ``blockipc[json]``); the codec that needs a
missing library raises ``CodecError`` at the point of use, naming the extra to install.
"""

from __future__ import annotations

import abc
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Self, final

import msgpack

from .._exceptions import CodecError, InvalidRequest

if TYPE_CHECKING:
    from types import TracebackType

    import numpy as np
    import numpy.typing as npt

__all__ = (
    "CODEC_NAMES",
    "DEFAULT_CODEC",
    "BytesLike",
    "Codec",
    "Encoded",
    "JsonCodec",
    "MsgpackCodec",
    "NumpyCodec",
    "PickleCodec",
    "RawCodec",
    "get_codec",
)

BytesLike = bytes | bytearray | memoryview
"""What the codecs read from (any C-contiguous buffer of these types)."""

DEFAULT_CODEC: Final = "msgpack"
"""The codec used when none is named. Never ``"pickle"``."""

_MAX_DIMS: Final = 64  # numpy 2's NPY_MAXDIMS; numpy 1 allows 32 and says so itself
_EMPTY: Final[Mapping[str, Any]] = {}


def _flat_bytes(obj: object) -> memoryview:
    """``obj`` as a flat memoryview of unsigned bytes, without copying.

    :raises TypeError: if ``obj`` is not a C-contiguous buffer.
    :raises ValueError: if ``obj`` is a released memoryview.
    """
    view = memoryview(obj)  # type: ignore[arg-type]  # checked here, at run time
    if view.ndim == 1 and view.format == "B" and view.c_contiguous:
        return view
    if not view.c_contiguous:
        raise TypeError("the buffer is not C-contiguous")
    return view.cast("B")


def _source(src: object, codec: str) -> memoryview:
    """What a codec decodes from, as flat bytes."""
    try:
        return _flat_bytes(src)
    except (TypeError, ValueError) as exc:
        raise CodecError(
            f"{codec} codec cannot decode from {type(src).__name__}: "
            f"expected a contiguous bytes-like object ({exc})"
        ) from exc


def _check_meta(meta: object, codec: str) -> Mapping[str, Any]:
    if meta is None:
        return _EMPTY
    if not isinstance(meta, Mapping):
        raise CodecError(f"{codec} codec: meta must be a dict, got {type(meta).__name__}")
    return meta


def _missing(module: str, codec: str) -> CodecError:
    """The error for a codec whose optional library cannot be imported. Each such codec
    has an extra of its own name in pyproject.toml that installs the library."""
    return CodecError(f"codec {codec!r} needs {module}: pip install 'blockipc[{codec}]'")


def _require_numpy() -> None:
    """Raise ``CodecError`` unless numpy can be imported (it is imported lazily)."""
    try:
        import numpy  # noqa: F401  # imported again, typed, where it is used
    except ImportError as exc:
        raise _missing("numpy", "numpy") from exc


def _encode_failed(codec: str, obj: object, exc: BaseException) -> CodecError:
    return CodecError(f"{codec} codec cannot encode {type(obj).__name__}: {exc}")


def _decode_failed(codec: str, exc: BaseException) -> CodecError:
    return CodecError(f"{codec} codec cannot decode the data: {type(exc).__name__}: {exc}")


@final
class Encoded:
    """An object encoded by a codec, ready to be written into a block.

    ``nbytes`` is the exact size the block needs, ``meta`` what to keep beside it
    for decoding, ``buffer`` a read-only flat byte view of the encoded form (over the
    original object for ``"raw"`` and ``"numpy"``), and :meth:`write_into` copies it
    into a destination of exactly ``nbytes`` bytes::

        >>> enc = get_codec("msgpack").prepare({"a": 1})
        >>> enc.nbytes, enc.meta
        (4, {})
        >>> dst = bytearray(8)
        >>> enc.write_into(memoryview(dst)[2:6])
        >>> get_codec("msgpack").decode(memoryview(dst)[2:6])
        {'a': 1}

    While an ``Encoded`` lives it holds a buffer export on the original object (a
    ``bytearray`` cannot be resized meanwhile); ``release()``, or a ``with`` block,
    gives it back early. Changes made to the original object before
    :meth:`write_into` show up in what is written.
    """

    __slots__ = ("_buffer", "_data", "meta", "nbytes")

    meta: dict[str, Any]
    """What decoding needs besides the bytes: ``{}`` except for ``"numpy"``."""
    nbytes: int
    """The encoded size in bytes."""

    def __init__(self, data: BytesLike, meta: dict[str, Any] | None = None) -> None:
        """Wrap encoded ``data`` (kept without copying) and its ``meta``.

        :raises TypeError: if ``data`` is not a C-contiguous buffer.
        """
        self._data = data if isinstance(data, bytes) else None
        self._buffer = _flat_bytes(data).toreadonly()
        self.nbytes = self._buffer.nbytes
        self.meta = {} if meta is None else meta

    @property
    def buffer(self) -> memoryview:
        """The encoded bytes, a read-only flat memoryview (no copy)."""
        return self._buffer[:]  # a view of its own: release() works whoever holds this

    def write_into(self, dst: bytearray | memoryview) -> None:
        """Copy the encoded bytes into ``dst``, a writable buffer of exactly ``nbytes``
        bytes (typically the memoryview of a write lease).

        :raises InvalidRequest: if ``dst`` is not a writable contiguous buffer of
            ``nbytes`` bytes, or this ``Encoded`` was released.
        """
        try:
            target = _flat_bytes(dst)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"cannot write into {type(dst).__name__}: {exc}") from exc
        with target:
            if target.readonly:
                raise InvalidRequest("cannot write into a read-only buffer")
            if target.nbytes != self.nbytes:
                raise InvalidRequest(
                    f"destination holds {target.nbytes} bytes, the encoded value {self.nbytes}"
                )
            try:
                target[:] = self._buffer
            except ValueError as exc:  # released
                raise InvalidRequest(f"cannot write: {exc}") from exc

    def tobytes(self) -> bytes:
        """The encoded bytes as ``bytes`` (no copy when the encoder made bytes), e.g.
        to send a small value inline."""
        return self._data if self._data is not None else self._buffer.tobytes()

    def release(self) -> None:
        """Give back the buffer export on the original object; idempotent."""
        self._buffer.release()
        self._data = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Encoded nbytes={self.nbytes} meta={self.meta!r}>"


class Codec(abc.ABC):
    """Turns objects into block bytes and back; get one with :func:`get_codec`.

    >>> codec = get_codec("json")
    >>> enc = codec.prepare({"k": [1, 2.5, None]})
    >>> block = bytearray(enc.nbytes)          # stands for a leased block
    >>> enc.write_into(block)
    >>> codec.decode(block, enc.meta)
    {'k': [1, 2.5, None]}
    """

    name: ClassVar[str]
    """The name the routing table records."""
    trusted_only: ClassVar[bool] = False
    """``True`` when decoding can run arbitrary code (``"pickle"``): decode only data
    written by processes you trust."""
    in_place: ClassVar[bool] = False
    """``True`` when :meth:`view` is the block's own memory (``"raw"``, ``"numpy"``): a
    write lease may hand it out, and what is written through it is the block's."""

    @abc.abstractmethod
    def prepare(self, obj: object) -> Encoded:
        """Encode ``obj``, or validate it and keep a view of its buffer.

        :raises CodecError: if this codec cannot encode ``obj``.
        """

    @abc.abstractmethod
    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> Any:
        """Return the object encoded in ``src``, owning its memory (``src`` may be
        released or overwritten afterwards). ``meta`` is ``Encoded.meta`` as stored.

        :raises CodecError: if ``src`` or ``meta`` does not decode.
        """

    def view(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> Any:
        """Return the object in ``src`` without copying where the codec can (valid
        only while ``src`` is, i.e. under the lease); by default, :meth:`decode`.

        :raises CodecError: if ``src`` or ``meta`` does not decode.
        """
        return self.decode(src, meta)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


@final
class RawCodec(Codec):
    """``"raw"``: the bytes of any bytes-like object, as they are.

    ``prepare`` keeps a view of the object's buffer (a non-contiguous one is copied
    in C order first); ``decode`` returns ``bytes``; ``view`` the flat memoryview::

        >>> raw = get_codec("raw")
        >>> enc = raw.prepare(bytearray(b"abc"))
        >>> enc.nbytes, enc.meta, raw.decode(b"abc")
        (3, {}, b'abc')
    """

    name = "raw"
    in_place = True

    def prepare(self, obj: object) -> Encoded:
        try:
            view = memoryview(obj)  # type: ignore[arg-type]  # checked here, at run time
        except (TypeError, ValueError) as exc:
            raise CodecError(
                f"raw codec cannot encode {type(obj).__name__}: expected a bytes-like "
                "object (bytes, bytearray, memoryview, array, ...)"
            ) from exc
        if view.c_contiguous:
            return Encoded(view)
        return Encoded(view.tobytes())

    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> bytes:
        _check_meta(meta, self.name)
        return _source(src, self.name).tobytes()

    def view(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> memoryview:
        _check_meta(meta, self.name)
        flat = _source(src, self.name)
        if isinstance(src, memoryview) and src.ndim == 1 and src.format == "B":
            return src  # already flat bytes (and contiguous, or _source would have failed)
        return flat


@final
class JsonCodec(Codec):
    """``"json"``: JSON through orjson (UTF-8, compact, str keys only).

    What orjson can write it accepts (dataclasses, datetimes and UUIDs become JSON
    strings or objects and decode as such); NaN and infinities become ``null``, as
    orjson writes them. Integers must fit in 64 bits::

        >>> get_codec("json").prepare([1, "é"]).tobytes()
        b'[1,"\\xc3\\xa9"]'
    """

    name = "json"

    def prepare(self, obj: object) -> Encoded:
        try:
            import orjson
        except ImportError as exc:
            raise _missing("orjson", self.name) from exc
        try:
            data = orjson.dumps(obj)
        except Exception as exc:  # orjson.JSONEncodeError is a TypeError
            raise _encode_failed(self.name, obj, exc) from exc
        return Encoded(data)

    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> Any:
        try:
            import orjson
        except ImportError as exc:
            raise _missing("orjson", self.name) from exc
        _check_meta(meta, self.name)
        view = _source(src, self.name)
        try:
            return orjson.loads(view)
        except Exception as exc:  # JSONDecodeError (a ValueError), RecursionError
            raise _decode_failed(self.name, exc) from exc


@final
class MsgpackCodec(Codec):
    """``"msgpack"`` (the default): compact binary, with ``bytes`` kept apart from
    ``str`` and int map keys allowed. Tuples decode as lists::

        >>> codec = get_codec("msgpack")
        >>> codec.decode(codec.prepare({"a": (1, b"\\x00"), 2: None}).tobytes())
        {'a': [1, b'\\x00'], 2: None}
    """

    name = "msgpack"

    def prepare(self, obj: object) -> Encoded:
        try:
            data = msgpack.packb(obj)
        except Exception as exc:  # TypeError, OverflowError, ValueError (depth)
            raise _encode_failed(self.name, obj, exc) from exc
        return Encoded(data)

    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> Any:
        _check_meta(meta, self.name)
        view = _source(src, self.name)
        try:
            # strict_map_key=False: int keys that packb wrote must come back. The
            # data is from processes of the same user, not the network.
            return msgpack.unpackb(view, raw=False, strict_map_key=False)
        except Exception as exc:  # ExtraData, FormatError, StackError, TypeError, ...
            raise _decode_failed(self.name, exc) from exc


@final
class PickleCodec(Codec):
    """``"pickle"`` (protocol 5): any picklable object. Only ever used when asked for
    by name, and ``trusted_only``: unpickling runs code chosen by whoever wrote the
    bytes::

        >>> codec = get_codec("pickle")
        >>> codec.decode(codec.prepare({1, 2}).tobytes())
        {1, 2}
    """

    name = "pickle"
    trusted_only = True

    def prepare(self, obj: object) -> Encoded:
        try:
            data = pickle.dumps(obj, protocol=5)
        except Exception as exc:  # PicklingError, TypeError, AttributeError, ...
            raise _encode_failed(self.name, obj, exc) from exc
        return Encoded(data)

    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> Any:
        _check_meta(meta, self.name)
        view = _source(src, self.name)
        try:
            return pickle.loads(view)
        except Exception as exc:  # garbage can raise almost anything
            raise _decode_failed(self.name, exc) from exc


@final
class NumpyCodec(Codec):
    """``"numpy"``: an array's raw data, with its dtype, shape and order in ``meta``.

    ``prepare`` takes an ``ndarray`` (a subclass is stored as a plain ``ndarray``; a
    masked array is refused) or a numpy scalar (stored as a 0-d array). A C- or
    F-contiguous array is written straight from its own memory and keeps its order;
    any other array is first copied into C order. Object dtypes cannot be encoded.
    The dtype is kept as the ``.npy`` format's description, so structured dtypes
    survive. ``decode`` returns a read-only copy; ``view`` an array over ``src``
    itself, writable only if ``src`` is::

        >>> import numpy as np
        >>> codec = get_codec("numpy")
        >>> enc = codec.prepare(np.arange(6, dtype="<i2").reshape(2, 3))
        >>> enc.nbytes, enc.meta
        (12, {'dtype': '<i2', 'shape': [2, 3], 'order': 'C'})
        >>> block = bytearray(enc.nbytes)
        >>> enc.write_into(block)
        >>> arr = codec.view(block, enc.meta)
        >>> block[0] = 9
        >>> int(arr[0, 0]), int(codec.decode(block, enc.meta)[0, 0])
        (9, 9)

    An array from ``view`` holds a buffer export on the memory under ``src`` for as
    long as it (or anything derived from it) is alive: an ``mmap`` under it cannot be
    closed (``BufferError``) until then, and it must not be used after the lease ends.
    """

    name = "numpy"
    in_place = True

    def describe(
        self, shape: int | Sequence[int], dtype: npt.DTypeLike, order: str = "C"
    ) -> tuple[int, dict[str, Any]]:
        """The size and ``meta`` of an array of ``shape`` and ``dtype`` (anything
        ``numpy.dtype`` takes), as :meth:`prepare` would record them, with no array:
        what :meth:`view` needs to make one over a block of that many bytes.

            >>> get_codec("numpy").describe((2, 3), "<i2")
            (12, {'dtype': '<i2', 'shape': [2, 3], 'order': 'C'})

        A sub-array dtype adds its shape to the array's, as in ``numpy.empty``.

        :raises CodecError: for what ``view`` would refuse (see :meth:`_check`): not a
            dtype, an object dtype, a shape of other than ints >= 0, an order other
            than ``"C"`` or ``"F"``.
        """
        _require_numpy()
        import numpy as np

        try:
            dims = [_index(n) for n in (shape if isinstance(shape, Sequence) else [shape])]
        except TypeError as exc:
            raise CodecError(
                f"numpy codec: a shape is an int or a sequence of ints, not {shape!r}"
            ) from exc
        try:
            dt = np.dtype(dtype)
            if dt.subdtype is not None:  # as numpy.empty: its shape is the array's last axes
                dt, sub = dt.subdtype
                dims += sub
            descr = _descr_to_meta(np.lib.format.dtype_to_descr(dt))
        except Exception as exc:  # TypeError, ValueError, ...
            raise CodecError(f"numpy codec: {dtype!r} is not a dtype ({exc})") from exc
        meta: dict[str, Any] = {"dtype": descr, "shape": dims, "order": order}
        item = self._check(meta)[0].itemsize
        return math.prod(dims) * item, meta

    def prepare(self, obj: object) -> Encoded:
        _require_numpy()
        import numpy as np

        if isinstance(obj, np.ma.MaskedArray):
            raise CodecError("numpy codec cannot encode a masked array (its mask would be lost)")
        if not isinstance(obj, np.ndarray | np.generic):
            raise CodecError(
                f"numpy codec cannot encode {type(obj).__name__}: expected a numpy.ndarray"
            )
        arr: npt.NDArray[Any] = np.asarray(obj)
        if arr.dtype.hasobject:
            raise CodecError(
                f"numpy codec cannot encode dtype {arr.dtype}: it holds references to Python "
                "objects, not data (use the 'pickle' codec)"
            )
        if arr.flags.c_contiguous:
            order = "C"
        elif arr.flags.f_contiguous:
            order = "F"
        else:
            arr = arr.copy(order="C")
            order = "C"
        try:
            descr = _descr_to_meta(np.lib.format.dtype_to_descr(arr.dtype))
        except Exception as exc:
            raise _encode_failed(self.name, obj, exc) from exc
        meta: dict[str, Any] = {"dtype": descr, "shape": list(arr.shape), "order": order}
        if arr.nbytes == 0:
            return Encoded(b"", meta)
        flat = (arr.T if order == "F" else arr).reshape(-1)  # a view: memory order
        return Encoded(flat.view(np.uint8).data, meta)

    def decode(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> npt.NDArray[Any]:
        _require_numpy()
        import numpy as np

        data, dtype, shape, order = self._parse(src, meta)
        try:
            if dtype.itemsize == 0:  # an empty structured dtype: there is no data
                arr = np.zeros(shape, dtype=dtype, order=order)
            else:
                # One copy, of bytes (padding included, no field-by-field copy), into
                # memory numpy allocates and aligns; then a read-only view of it.
                raw = np.frombuffer(data, dtype=np.uint8).copy()
                raw.flags.writeable = False
                arr = raw.view(dtype).reshape(shape, order=order)
        except Exception as exc:
            raise _decode_failed(self.name, exc) from exc
        arr.flags.writeable = False
        return arr

    def view(self, src: BytesLike, meta: Mapping[str, Any] | None = None) -> npt.NDArray[Any]:
        _require_numpy()
        import numpy as np

        data, dtype, shape, order = self._parse(src, meta)
        try:
            if dtype.itemsize == 0:
                return np.zeros(shape, dtype=dtype, order=order)
            flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
            return flat.reshape(shape, order=order)
        except Exception as exc:
            raise _decode_failed(self.name, exc) from exc

    def _parse(
        self, src: BytesLike, meta: Mapping[str, Any] | None
    ) -> tuple[memoryview, np.dtype[Any], list[int], Literal["C", "F"]]:
        """Check ``src`` and ``meta`` against each other; return what they describe."""
        meta = _check_meta(meta, self.name)
        data = _source(src, self.name)
        dtype, shape, order = self._check(meta)
        count = math.prod(shape)
        if count * dtype.itemsize != data.nbytes:
            raise CodecError(
                f"numpy codec: meta describes {count} items of {dtype.itemsize} bytes, "
                f"the data is {data.nbytes} bytes"
            )
        return data, dtype, shape, order

    @staticmethod
    def _check(
        meta: Mapping[str, Any],
    ) -> tuple[np.dtype[Any], list[int], Literal["C", "F"]]:
        """The dtype, shape and order ``meta`` records, checked."""
        if "dtype" not in meta and "shape" not in meta:
            raise CodecError(
                "numpy codec: no dtype or shape is recorded with these bytes (raw bytes, or "
                "not encoded with codec='numpy'): put the array with codec='numpy', or take "
                "the bytes raw (a lease without codec) and use numpy.frombuffer(view, dtype)"
            )
        dtype = _dtype_from_meta(meta.get("dtype"))
        shape = meta.get("shape")
        if (
            not isinstance(shape, list | tuple)
            or len(shape) > _MAX_DIMS
            or not all(type(n) is int and n >= 0 for n in shape)
        ):
            raise CodecError(
                f"numpy codec: meta 'shape' must be a list of at most {_MAX_DIMS} ints >= 0, "
                f"got {shape!r}"
            )
        order = meta.get("order")
        if order not in ("C", "F"):
            raise CodecError(f"numpy codec: meta 'order' must be 'C' or 'F', got {order!r}")
        return dtype, list(shape), order


def _index(n: object) -> int:
    """``n`` as an int if it is one (an int, a numpy integer: ``operator.index``)."""
    index = getattr(type(n), "__index__", None)
    if index is None:
        raise TypeError(f"{type(n).__name__} is not an integer")
    return int(index(n))


def _descr_to_meta(descr: Any) -> Any:
    """The ``.npy`` dtype description with tuples as lists, as msgpack gives it back."""
    if isinstance(descr, tuple | list):
        return [_descr_to_meta(item) for item in descr]
    return descr


def _descr_from_meta(descr: Any) -> Any:
    """Undo :func:`_descr_to_meta`: fields, titled names and sub-shapes are tuples."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list | tuple):
        raise TypeError(f"a dtype description is a str or a list, not {type(descr).__name__}")
    fields = []
    for field in descr:
        if not isinstance(field, list | tuple) or len(field) not in (2, 3):
            raise TypeError(f"a field description is [name, dtype(, shape)], not {field!r}")
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        sub = _descr_from_meta(field[1])
        fields.append((name, sub) if len(field) == 2 else (name, sub, tuple(field[2])))
    return fields


def _dtype_from_meta(descr: object) -> np.dtype[Any]:
    import numpy as np

    try:
        dtype: np.dtype[Any] = np.lib.format.descr_to_dtype(_descr_from_meta(descr))
    except Exception as exc:  # TypeError, ValueError, RecursionError, ...
        raise CodecError(f"numpy codec: meta 'dtype' {descr!r} is not a dtype: {exc}") from exc
    if dtype.hasobject:
        raise CodecError(f"numpy codec: meta 'dtype' {descr!r} holds Python objects")
    if dtype.subdtype is not None:
        raise CodecError(f"numpy codec: meta 'dtype' {descr!r} is a sub-array dtype")
    if dtype.itemsize == 0 and dtype.names is None:
        raise CodecError(f"numpy codec: meta 'dtype' {descr!r} has no size")
    return dtype


_CODECS: Final[dict[str, Codec]] = {
    codec.name: codec
    for codec in (RawCodec(), JsonCodec(), MsgpackCodec(), NumpyCodec(), PickleCodec())
}

CODEC_NAMES: Final = tuple(_CODECS)
"""The names :func:`get_codec` knows: ``("raw", "json", "msgpack", "numpy", "pickle")``."""


def get_codec(name: str) -> Codec:
    """Return the codec called ``name`` (exactly; names are lower case).

        >>> get_codec("numpy")
        <NumpyCodec 'numpy'>
        >>> get_codec(DEFAULT_CODEC).name
        'msgpack'

    :raises CodecError: for a name that is not one of :data:`CODEC_NAMES`.
    """
    codec = _CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        known = ", ".join(repr(n) for n in CODEC_NAMES)
        raise CodecError(f"unknown codec {name!r}: known codecs are {known}")
    return codec
