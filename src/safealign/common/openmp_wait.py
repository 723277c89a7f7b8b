"""How torch's OpenMP threads wait between parallel regions, chosen once per process before torch loads.

Why this matters on a small CPU: one decode token of the 135M policy runs ~150 parallel regions (a packed
matmul or an SDPA per layer). With libgomp's PASSIVE policy every region wakes a sleeping sibling thread,
which costs a wake-up per region. Spinning a little before sleeping avoids that when the process owns the
CPU, but when another process shares the cores a spinning thread burns the core its sibling needs and the
step gets much slower (docs/experiments.md has the figures). Neither policy is right everywhere, so the
choice is made from the machine's load at start-up: spin when the other processes leave the cores idle,
sleep when they do not. An explicit ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment always wins.
libgomp reads these variables once, when torch is first imported; after that a change has no effect, so
:func:`choose_wait_policy` does nothing once torch is loaded.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

SPIN_COUNT = "30000"  # ~0.3 ms of spinning before a thread sleeps (libgomp: ~100k spins per ms)
IDLE_BUSY_CORES = 0.5  # other processes using less than half a core on average = the CPU is ours


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs, from the text of /proc/stat's first line."""
    fields = stat.splitlines()[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("not /proc/stat: the first line must start with 'cpu'")
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_cores(sample_s: float = 0.25, stat_path: Path = Path("/proc/stat")) -> float | None:
    """How many cores other work keeps busy, averaged over ``sample_s``; None where /proc/stat is missing."""
    try:
        busy0, total0 = cpu_times(stat_path.read_text())
        time.sleep(sample_s)
        busy1, total1 = cpu_times(stat_path.read_text())
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def choose_wait_policy(
    environ: MutableMapping[str, str] | None = None,
    measure: Callable[[], float | None] = busy_cores,
) -> str:
    """Set libgomp's wait policy in ``environ`` (default: this process's) and say which one and why."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return (
            f"from the environment (OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}, "
            f"GOMP_SPINCOUNT={env.get('GOMP_SPINCOUNT')})"
        )
    if environ is None and "torch" in sys.modules:
        return "unchanged: torch was already imported"
    busy = measure()
    if busy is not None and busy < IDLE_BUSY_CORES:
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
        return f"spin {SPIN_COUNT} (other load {busy:.2f} cores)"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    load = "unknown" if busy is None else f"{busy:.2f} cores"
    return f"PASSIVE (other load {load})"
