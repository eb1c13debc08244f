"""Running one benchmark step as a child process and measuring it: wall time, CPU time, its own peak RSS.

Used by every benchmark that compares steps run in separate processes (``bench anomalib``, ``bench fit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    """One finished subprocess: exit status, wall time, CPU time (user + system: less sensitive to other
    processes on a shared machine than wall time) and its own peak RSS, from the kernel."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def _rss_mb(pid: int) -> float:
    """Current resident set size of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _tree_rss_mb(root: int) -> float:
    """Resident set size of ``root`` and all its descendants, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_mb(pid)
        todo.extend(children.get(pid, ()))
    return total


# Why a launcher: the kernel folds the high-water RSS of the memory a process had *before* exec into its
# ru_maxrss, and subprocess starts children with vfork, i.e. inside the parent's memory. Measured directly,
# a 200 MB child of a 1.7 GB pytest reports 1.7 GB. This small launcher is that pre-exec memory instead
# (~10 MB), and reports its child's own peak RSS and CPU time through RUSAGE_CHILDREN.
_LAUNCHER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss]))\n"
    "sys.exit(rc)\n"
)


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 3600.0, max_rss_mb: float = 8000.0) -> Measured:
    """Run ``cmd`` with output to ``log``; report its wall time, CPU time and its own peak RSS.

    The child is killed past ``timeout_s`` or ``max_rss_mb``: the machine is shared, and a runaway
    (anomalib's coreset step can grow without bound) must fail this benchmark, not the neighbours' work.
    """
    started = time.perf_counter()
    killed = ""
    usage_file = log.with_name(log.name + ".rusage.json")
    usage_file.unlink(missing_ok=True)
    with open(log, "w") as fh:
        # Own session, so a kill reaches the launcher's child too.
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(usage_file), *cmd], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
        while proc.poll() is None:
            rss = _tree_rss_mb(proc.pid)
            if rss > max_rss_mb or time.perf_counter() - started > timeout_s:
                killed = (f"RSS {rss:.0f} MB over the {max_rss_mb:.0f} MB cap" if rss > max_rss_mb
                          else f"over the {timeout_s:.0f} s timeout")
                os.killpg(proc.pid, 9)
                proc.wait()
                break
            time.sleep(0.2)
    cpu_s, maxrss_kib = json.loads(usage_file.read_text()) if usage_file.exists() else (0.0, 0)
    measured = Measured(proc.returncode, round(time.perf_counter() - started, 2),
                        round(cpu_s, 2), round(maxrss_kib / 1024.0, 1))
    if measured.returncode != 0 or killed:
        tail = "".join(log.read_text(errors="replace")[-4000:].splitlines(keepends=True)[-20:])
        why = f"killed: {killed}" if killed else f"exited {measured.returncode}"
        raise RuntimeError(f"{' '.join(cmd[:4])} ... {why}; last lines of {log}:\n{tail}")
    return measured
