"""The public API: every name exported, documented, and typed."""

from __future__ import annotations

import inspect

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
