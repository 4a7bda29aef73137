"""The public API: every name exported, documented, and typed."""

from __future__ import annotations

import inspect
from typing import Any

import blockipc


def test_every_public_name_is_exported_and_documented() -> None:
    assert isinstance(blockipc.__all__, tuple)
    for name in blockipc.__all__:
        obj = getattr(blockipc, name)
        if name == "BlockLike":
            continue  # a type alias
        assert inspect.getdoc(obj), f"blockipc.{name} has no docstring"


def test_errors_share_one_hierarchy() -> None:
    # every exported exception, and every name that reads like one (IncomingRequest,
    # a class ending in "Request", is not an error)
    exported = {n: getattr(blockipc, n) for n in blockipc.__all__}
    errors = [
        obj
        for n, obj in exported.items()
        if (isinstance(obj, type) and issubclass(obj, BaseException))
        or n.endswith(("Error", "Exhausted", "NotFound", "Denied", "Bounds", "Unreachable"))
    ]
    assert len(errors) >= 9
    for exc in errors:
        assert issubclass(exc, blockipc.BlockIPCError)
        assert exc.__doc__ and exc.__doc__.startswith("Raised when")
    assert issubclass(blockipc.ConnectionClosed, ConnectionError)


def test_public_methods_are_typed() -> None:
    for cls in (
        blockipc.Client,
        blockipc.Coordinator,
        blockipc.Lease,
        blockipc.Job,
        blockipc.IncomingRequest,
    ):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") and name not in ("__aenter__", "__aexit__"):
                continue
            sig = inspect.signature(fn)
            assert sig.return_annotation is not inspect.Signature.empty, f"{cls.__name__}.{name}"
            for p in sig.parameters.values():
                if p.name != "self":
                    assert p.annotation is not inspect.Parameter.empty, f"{cls.__name__}.{name}"


def test_the_sync_and_trio_facades_are_documented_typed_and_complete() -> None:
    import blockipc.trio

    for facade in (blockipc.sync, blockipc.trio):
        _check_facade(facade)


def _check_facade(facade: Any) -> None:
    where = facade.__name__
    assert isinstance(facade.__all__, list)
    for name in facade.__all__:
        assert inspect.getdoc(getattr(facade, name)), f"{where}.{name} has no docstring"
    dunders = ("__enter__", "__exit__", "__aenter__", "__aexit__")
    for cls in (facade.Client, facade.Lease, facade.Job, facade.IncomingRequest):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") and name not in dunders:
                continue
            assert name in dunders or inspect.getdoc(fn), f"{where}.{cls.__name__}.{name}"
            sig = inspect.signature(fn)
            assert sig.return_annotation is not inspect.Signature.empty, f"{cls.__name__}.{name}"
    # every public method of the async client has its twin, but the channels
    # (documented as not offered) and, in the blocking one, aclose (close is there)
    offered = {n for n in dir(facade.Client) if not n.startswith("_")}
    wanted = {n for n in dir(blockipc.Client) if not n.startswith("_")}
    missing = {"open_channel", "accept_channel"}
    assert wanted - offered == (missing | {"aclose"} if facade is blockipc.sync else missing)
    assert inspect.signature(facade.connect).parameters.keys() == (
        inspect.signature(blockipc.connect).parameters.keys()
    )
