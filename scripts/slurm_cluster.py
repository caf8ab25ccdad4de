#!/usr/bin/env python3
"""A one-node SLURM cluster on this machine, for tests and trials (needs root and scripts/deps/slurm.sh).

    python scripts/slurm_cluster.py start [--state-dir DIR] [--timeout 120]
    python scripts/slurm_cluster.py stop  [--state-dir DIR]
    python scripts/slurm_cluster.py status [--state-dir DIR]

`start` creates a munge key (when none exists), the spool and log directories and /etc/slurm/slurm.conf
(node name from `hostname`, CPUs from `nproc`, memory a little under what `free -m` reports), starts
munged, slurmctld and slurmd, waits until `sinfo` shows the node idle, and writes the daemons' PIDs to
the state dir. `stop` ends exactly those processes. Starting twice reuses daemons that still run.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("LLEM_SLURM_STATE_DIR", "/run/llem-slurm"))
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
DAEMONS = ("munged", "slurmctld", "slurmd")
SPOOL_DIRS = (Path("/var/spool/slurmctld"), Path("/var/spool/slurmd"), Path("/var/log/slurm"))


class ClusterError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"slurm_cluster: {message}", file=sys.stderr, flush=True)


def missing_tools() -> list[str]:
    """The SLURM and munge programs this script needs that are not installed."""
    needed = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd",
              "sinfo": None, "sbatch": None, "scancel": None}
    return [name for name, path in needed.items()
            if not (Path(path).exists() if path else shutil.which(name))]


def _memory_mb() -> int:
    out = subprocess.run(["free", "-m"], capture_output=True, text=True, check=True).stdout
    total = int(next(line for line in out.splitlines() if line.startswith("Mem:")).split()[1])
    return max(256, int(total * 0.9))


def slurm_conf(host: str, cpus: int, memory_mb: int) -> str:
    return f"""# Written by scripts/slurm_cluster.py: a one-node cluster on {host}.
ClusterName=local
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
MpiDefault=none
KillWait=5
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _munge_user() -> pwd.struct_passwd:
    return pwd.getpwnam("munge")


def _prepare_munge() -> None:
    user = _munge_user()
    for path in (Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge"), MUNGE_KEY.parent):
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)
    if not MUNGE_KEY.exists() or MUNGE_KEY.stat().st_size < 32:
        MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] != "Z"


def _read_pids(state_dir: Path) -> dict[str, int]:
    pids: dict[str, int] = {}
    for name in DAEMONS:
        path = state_dir / f"{name}.pid"
        if path.exists():
            try:
                pids[name] = int(path.read_text().strip())
            except ValueError:
                pass
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(state_dir: Path) -> dict[str, int]:
    """Daemons recorded in the state dir that still run (and are still those programs)."""
    return {n: p for n, p in _read_pids(state_dir).items() if _alive(p) and n in _cmdline(p)}


def _start_daemon(name: str, argv: list[str], state_dir: Path, user: pwd.struct_passwd | None = None) -> int:
    log_path = state_dir / f"{name}.out"

    def demote() -> None:
        os.setsid()
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=demote)  # noqa: PLW1509 - single-threaded here
    (state_dir / f"{name}.pid").write_text(str(proc.pid))
    time.sleep(0.5)
    if proc.poll() is not None:
        raise ClusterError(f"{name} exited at once (code {proc.returncode}); see {log_path}")
    return proc.pid


def _node_idle(host: str) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-N", "-n", host, "-o", "%t"], check=False, capture_output=True,
                          text=True)
    return proc.returncode == 0 and proc.stdout.strip().rstrip("*") in ("idle", "mix", "alloc")


def start(state_dir: Path, timeout: float = 120.0) -> dict[str, int]:
    if os.geteuid() != 0:
        raise ClusterError("starting the daemons needs root")
    missing = missing_tools()
    if missing:
        raise ClusterError(f"not installed: {', '.join(missing)} (as root: scripts/deps/slurm.sh)")
    state_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    running = _running(state_dir)
    _prepare_munge()
    for path in SPOOL_DIRS:
        path.mkdir(parents=True, exist_ok=True)
    conf = slurm_conf(host, os.cpu_count() or 1, _memory_mb())
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    if not SLURM_CONF.exists() or SLURM_CONF.read_text() != conf:
        if running.get("slurmctld") or running.get("slurmd"):
            _log("slurm.conf changed: restarting slurmctld and slurmd")
            stop(state_dir, only=("slurmd", "slurmctld"))
            running = _running(state_dir)
        SLURM_CONF.write_text(conf)
    if "munged" not in running:
        Path("/run/munge/munge.socket.2").unlink(missing_ok=True)
        # --foreground keeps the PID we record the daemon's own
        running["munged"] = _start_daemon("munged", ["/usr/sbin/munged", "--foreground", "--force"], state_dir,
                                          user=_munge_user())
    if "slurmctld" not in running:
        running["slurmctld"] = _start_daemon("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i"], state_dir)
    if "slurmd" not in running:
        running["slurmd"] = _start_daemon("slurmd", ["/usr/sbin/slurmd", "-D"], state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _node_idle(host):
            _log(f"node {host} is up: " + ", ".join(f"{n} {p}" for n, p in running.items()))
            return running
        for name, pid in running.items():
            if not _alive(pid):
                raise ClusterError(f"{name} ({pid}) exited; see {state_dir / (name + '.out')} and /var/log/slurm")
        time.sleep(0.5)
    raise ClusterError(f"node {host} did not become idle within {timeout:.0f} s (sinfo; /var/log/slurm)")


def stop(state_dir: Path, only: tuple[str, ...] = DAEMONS) -> None:
    """End the daemons this script started (by their recorded PIDs), slurmd first."""
    running = _running(state_dir)
    for name in ("slurmd", "slurmctld", "munged"):
        if name not in only:
            continue
        pid = running.get(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            _log(f"stopped {name} ({pid})")
        (state_dir / f"{name}.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_cluster.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            start(args.state_dir, args.timeout)
        elif args.action == "stop":
            stop(args.state_dir)
        else:
            running = _running(args.state_dir)
            print(" ".join(f"{n}={p}" for n, p in running.items()) or "not running")
            return 0 if len(running) == len(DAEMONS) else 1
    except ClusterError as error:
        _log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
