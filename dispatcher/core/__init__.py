"""The pure core: check configs, stores, placement and expiry. No I/O, time passed in."""
