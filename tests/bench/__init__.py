"""Benchmarks (``make bench``): the core's scheduling and expiry, the heartbeat API, and
one node agent running 1,000 http checks.

Run with ``python -m tests.bench``. Nothing here is a pytest test: no module is named
``test_*.py`` and no function ``test_*``.
"""
