"""The admin command line: ``clusterchecks-dispatcher state | checks | results | ...``.

It talks to a running dispatcher over HTTP only, so it imports nothing of ours but
``dispatcher.wire`` (the reply models), ``dispatcher.errors`` and ``dispatcher.common``
(import-linter enforces it). ``client`` makes the requests, ``render`` turns replies into
text, ``commands`` holds the click commands; ``errors`` draws the failures and their exit
codes.
"""
