"""`python -m llem.serving.tethered PARENT_PID ARGV...`: run ARGV so that it ends when the process that started it dies.

A server runs in its own process group so that `stop()` reaches every engine worker, which also puts it out
of reach of a group kill aimed at the job's worker. If that worker is killed outright (SIGKILL, the OOM
killer), nothing would stop the server, and it would hold the GPU and skew the next job's energy. Linux's
parent-death signal closes that gap: it is set here, in the child, before `exec` (it survives exec), which
is safe where `preexec_fn` is not in a process with threads. SIGTERM lets the server shut its own engine
workers down.
"""

from __future__ import annotations

import os
import signal
import sys


def _tether(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the job's own stop is all there is
    if os.getppid() != parent_pid:  # the parent died before the tether held
        sys.exit(1)


def main() -> None:
    parent, *argv = sys.argv[1:]
    if not argv:
        raise SystemExit("usage: python -m llem.serving.tethered PARENT_PID ARGV...")
    _tether(int(parent))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
