"""What the machine is doing: CPU time of a process and of every CPU, from /proc (Linux).

Used to tell a benchmark bound by the server from one bound by the load generator, and
to show when other processes on the machine disturbed a measurement.
"""

from __future__ import annotations

import os


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float | None:
    """CPU seconds all CPUs spent busy since boot, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user):
    # all but idle and iowait.
    first = fields[:8]
    busy = sum(first) - first[3] - (first[4] if len(first) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_split_s(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of a process, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_irq_s() -> float | None:
    """CPU seconds all CPUs spent in interrupts and softirqs since boot (Linux); None elsewhere.

    Loopback TCP is handled in softirqs; depending on the kernel's IRQ time accounting
    that time is charged to the process that was running or counted only here.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    return sum(fields[5:7]) / os.sysconf("SC_CLK_TCK")


def machine_steal_s() -> float | None:
    """CPU seconds the hypervisor gave to other guests while this machine's CPUs wanted to
    run (steal time, all CPUs, since boot; Linux); None elsewhere. In a virtual machine this
    is time taken from whatever was running, so it delays it without showing in its CPU."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    return (fields[7] if len(fields) > 7 else 0) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them ("" off Linux)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as averages:
            return " ".join(averages.read().split()[:3])
    except OSError:
        return ""
