"""Shared memory: the pool's memfd segments and the generation table clients map."""
