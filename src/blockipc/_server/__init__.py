"""The coordinator: listener and handshake, sessions, one handler module per group of
operations, reclaim on disconnect, and the one place the routing table's outcomes are
applied."""
