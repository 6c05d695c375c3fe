"""Benchmarks (``make bench``): the core's scheduling and expiry, and the heartbeat API.

Run with ``python -m tests.bench``. Nothing here is a pytest test: no module is named
``test_*.py`` and no function ``test_*``.
"""
