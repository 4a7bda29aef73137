"""The pure core: it decides, it never does I/O.

Everything here works on values and buffers it is given: the buddy allocator, the
routing table and process records, the wire protocol, a channel's ring, the codecs,
the link's frames and send state machine, the sizes and every limit with its check.
Nothing in this package imports asyncio, anyio, sockets, zmq or mmap
(``tests/core/test_pure.py`` imports all of it with those blocked).
"""
