"""Coordinator-to-coordinator links over pyzmq: the link, the narrow interface it
needs from the coordinator (``host``), and its CURVE keys."""
