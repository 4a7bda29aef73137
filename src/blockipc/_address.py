"""Where the coordinator is: an address given, else the ``BLOCKIPC_ADDRESS`` variable.

One rule for every entry point that needs a coordinator's address and may be given
none: ``blockipc serve`` and ``blockipc stats`` (``--socket``) and
:func:`blockipc.asgi.lifespan` (``address=``). What is given wins; an unset or empty
variable counts as not given.
"""

from __future__ import annotations

import os
from typing import Final

from ._exceptions import InvalidRequest

__all__ = ["ADDRESS_ENV", "coordinator_address"]

ADDRESS_ENV: Final = "BLOCKIPC_ADDRESS"
"""The environment variable that holds the coordinator's address when none is given."""


def coordinator_address(address: str | os.PathLike[str] | None, *, given_as: str) -> str:
    """Return ``address`` (as a string), or ``$BLOCKIPC_ADDRESS`` when it is ``None``
    or empty.

    ``given_as`` names how a caller passes the address (``"--socket"``,
    ``"lifespan(address=...)"``) for the error message.

    :raises InvalidRequest: when neither is set: ``"--socket or BLOCKIPC_ADDRESS is
        required"``.
    """
    where = "" if address is None else os.fspath(address)
    if not where:
        where = os.environ.get(ADDRESS_ENV, "")
    if not where:
        raise InvalidRequest(f"{given_as} or {ADDRESS_ENV} is required")
    return where
