"""Sliced computations: a pure function written as a generator that yields between
slices of its work, so that the caller may let the event loop run between them (the
dashboard's pass over the checks, a rebalance's inputs and planning), or run it whole."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def run_steps(steps: Generator[None, None, T]) -> T:
    """Runs a sliced computation to its end, without yielding: its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
