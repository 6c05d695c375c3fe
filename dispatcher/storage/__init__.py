"""Persistence of the leader's state: memory (nothing to persist) or a shared Redis store."""
