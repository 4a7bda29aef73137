"""Sizes: ``parse_size("256MiB")`` and ``format_size(268435456)``.

Pure (no I/O): the pool, the client, the LRU cache and the command line all take sizes
as ints or strings, and read them here.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .._exceptions import InvalidRequest

__all__ = ["format_size", "parse_size"]

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str) -> int:
    """Return a size in bytes from an int or a string such as ``"256MiB"``.

    Units are case-insensitive and may follow a space: ``K``/``KiB``, ``M``/``MiB``,
    ``G``/``GiB``, ``T``/``TiB`` are binary (1024-based); ``KB``, ``MB``, ``GB``, ``TB``
    are decimal (1000-based); ``B`` or nothing means bytes. A fraction is allowed when
    the result is a whole number of bytes::

        >>> parse_size("64KiB"), parse_size("1MB"), parse_size("1.5 GiB")
        (65536, 1000000, 1610612736)

    :raises InvalidRequest: for a size that is zero, negative, not whole, or not a size.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"invalid size {value!r}: expected an int or a string like '256MiB'")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidRequest(f"invalid size {value!r}: must be greater than zero")
        return value
    match = _SIZE_RE.fullmatch(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidRequest(
            f"invalid size {value!r}: expected a number with an optional unit "
            "(B, K/KiB, M/MiB, G/GiB, T/TiB, or decimal KB/MB/GB/TB)"
        )
    nbytes = Fraction(match.group(1)) * _UNITS[unit]
    if nbytes.denominator != 1:
        raise InvalidRequest(f"invalid size {value!r}: not a whole number of bytes")
    if nbytes <= 0:
        raise InvalidRequest(f"invalid size {value!r}: must be greater than zero")
    return int(nbytes)


# what format_size shows, largest first: parse_size's binary units
_BINARY_UNITS = tuple((unit, _UNITS[unit.lower()]) for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"))


def format_size(nbytes: int) -> str:
    """Return a size for people to read: ``"256.0 MiB"``, ``"1.5 KiB"``, ``"512 B"``.

    The largest binary unit that fits, with one decimal; bytes below 1 KiB as they are.
    :func:`parse_size` reads the result back, exactly when the decimal shows all of it
    (a multiple of half the unit, such as every power of two)::

        >>> format_size(256 << 20), format_size(1536), format_size(0)
        ('256.0 MiB', '1.5 KiB', '0 B')
        >>> parse_size(format_size(3 << 29))
        1610612736
    """
    for unit, scale in _BINARY_UNITS:
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
