"""The client side: ``connect``, ``Client`` and ``Lease``, and the ends of a channel."""
