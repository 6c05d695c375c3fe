#!/usr/bin/env python3
"""An external check: reports free disk space through the agent's reporting URL."""

import json
import os
import shutil
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/"
usage = shutil.disk_usage(path)
free = usage.free / usage.total
errors = [] if free > 0.05 else [f"{path}: only {free:.1%} free"]
request = urllib.request.Request(
    os.environ["CLUSTERCHECKS_REPORTING_URL"],
    data=json.dumps({"ok": not errors, "errors": errors}).encode(),
    headers={"Content-Type": "application/json", "X-Run-Id": os.environ["CLUSTERCHECKS_RUN_ID"]},
)
urllib.request.urlopen(request, timeout=5).read()
