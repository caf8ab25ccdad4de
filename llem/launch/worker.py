"""A warm worker: runs Hydra jobs sent by the launcher, keeping llem's loaded model between them.

    python -m llem.launch.worker --socket PATH   (authkey in $LLEM_WORKER_AUTHKEY, hex)

It serves one launcher connection and exits when told to, or when the launcher goes away
(a local worker is also killed with its parent). A task's exception fails that job only.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from llem.launch import protocol

_CONTEXT: dict[str, Any] = {}


def _safe_exception(error: BaseException) -> BaseException:
    """A failure as plain text (type, message, traceback) in a builtin exception: the launcher may
    not have the package the original exception class lives in (torch, vllm in a container)."""
    if type(error).__module__ == "builtins":
        try:
            protocol.unpack(protocol.pack(error))
            return error
        except Exception:  # noqa: BLE001 - any pickling failure
            pass
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-12:])
    return RuntimeError(f"{type(error).__name__}: {error}\n{trace}".rstrip())


def _run(message: dict[str, Any]) -> dict[str, Any]:
    from hydra.core.utils import JobStatus, run_job, setup_globals

    setup_globals()
    config = protocol.unpack(message["config"])
    if "task_function" in message:  # sent once per worker start, then reused
        _CONTEXT["task_function"] = protocol.unpack(message["task_function"])
        _CONTEXT["hydra_context"] = protocol.unpack(message["hydra_context"])
    task_function, hydra_context = _CONTEXT["task_function"], _CONTEXT["hydra_context"]
    _set_campaign_warmup(message.get("campaign_warmup"))
    _set_placement(message.get("placement"))
    _set_planned(message.get("experiment"))
    _set_host_gpu_settings(message)
    start = time.perf_counter()
    from llem.launch import job_runner

    run = job_runner.run_job if job_runner.supports(config) else run_job
    ret = run(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    elapsed = time.perf_counter() - start
    if ret.status == JobStatus.FAILED:
        ret._return_value = _safe_exception(ret._return_value)
    return {"ok": True, "job_return": protocol.pack(ret), "elapsed_s": elapsed}


def _set_placement(placement: dict[str, Any] | None) -> None:
    """Hand a parallel launcher's placement of this job (GPUs, concurrency) to llem's task for its result."""
    if placement is None and "llem.task" not in sys.modules:
        return
    task = importlib.import_module("llem.task")
    task.PLACEMENT.clear()
    task.PLACEMENT.update(placement or {})


def _set_host_gpu_settings(message: dict[str, Any]) -> None:
    """A container worker: hand the `gpu.*` settings the launcher applied on the host for this job to the
    measure layer, which then only reads them back (it lacks the privilege to change them)."""
    if "gpu_settings" not in message:
        return
    from llem.measure.gpu_settings import set_host_applied

    set_host_applied(message["gpu_settings"])


def _set_planned(blob: bytes | None) -> None:
    """Hand the settings the campaign validated for this job to llem's task, which then does not validate them
    again. Settings this worker cannot unpickle (another llem in a container image) are left out: the task
    validates the config itself, as for a job no campaign planned."""
    if blob is None and "llem.task" not in sys.modules:
        return
    task = importlib.import_module("llem.task")
    task.PLANNED.clear()
    if blob is None:
        return
    try:
        task.PLANNED["experiment"] = protocol.unpack(blob)
    except Exception as error:  # noqa: BLE001 - any unpickling failure
        print(f"llem worker: validating the job here: the planned settings could not be read ({error})",
              file=sys.stderr)


def _install_nvml_factory() -> None:
    """With LLEM_NVML_FACTORY set (tests), every NVML user in this worker, the energy monitor included,
    gets the scripted NVML instead of `pynvml`."""
    fake = protocol.nvml_from_env()
    if fake is not None:
        sys.modules["pynvml"] = fake


def _set_campaign_warmup(warmup: dict[str, Any] | None) -> None:
    """Hand the campaign's once-per-worker warmup to llem's task (if this worker runs it)."""
    task = sys.modules.get("llem.task")
    if warmup is not None:
        task = task or importlib.import_module("llem.task")
        task.CAMPAIGN_WARMUP.update(warmup)




def _health() -> dict[str, Any]:
    """GPU memory use per device, read through the device layer."""
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.nvml import NvmlDevices

    try:
        devices = NvmlDevices.open(None, nvml=protocol.nvml_from_env())
    except DeviceUnavailable as error:
        return {"ok": True, "devices": {}, "unavailable_reason": error.reason}
    own = _own_model_bytes()
    try:
        out: dict[str, Any] = {}
        for i in devices.indices:
            memory = devices.memory_bytes(i)
            if memory is None or not memory.total:
                out[devices.label(i)] = {"used_pct": None}
                continue
            held = min(own.get(devices.nvml_index(i), 0), memory.used)
            out[devices.label(i)] = {
                "used_bytes": memory.used,
                "total_bytes": memory.total,
                "model_bytes": held,
                # what the check judges: memory not held by the model this worker keeps loaded on purpose
                "used_pct": 100.0 * (memory.used - held) / memory.total,
            }
        return {"ok": True, "devices": out, "unavailable_reason": None}
    finally:
        devices.close()


def _own_model_bytes() -> dict[int, int]:
    """GPU memory (per NVML index) held by this worker's processes while it keeps a model loaded.

    A warm engine holds most of the device by design (vLLM's gpu_memory_utilization), so the
    health check judges the rest: leaks after unloads, other processes, fragmentation.
    """
    task = sys.modules.get("llem.task")
    if task is None or (task.SESSION.loaded_backend() is None and task.SESSION.running_server() is None):
        return {}
    try:
        from llem.backends.resources import process_tree_gpu_bytes_by_device

        return process_tree_gpu_bytes_by_device()
    except Exception:  # noqa: BLE001 - no NVML, or processes NVML cannot attribute
        return {}


def _unload() -> dict[str, Any]:
    task = sys.modules.get("llem.task")
    released = False
    if task is not None:
        task.SESSION.release()
        released = True
    gc.collect()
    return {"ok": True, "released": released}


def handle(message: dict[str, Any]) -> dict[str, Any]:
    op = message.get("op")
    if op == protocol.OP_PING:
        return {"ok": True, "pid": os.getpid()}
    if op == protocol.OP_INIT:
        skipped = protocol.apply_singleton_state(message["singleton_state"])
        reply: dict[str, Any] = {"ok": True, "pid": os.getpid()}
        if skipped:  # e.g. a container lacking a plugin the host has: its own plugin discovery stands in
            reply["warning"] = "launcher state partly applied: " + "; ".join(skipped)
        return reply
    if op == protocol.OP_RUN:
        return _run(message)
    if op == protocol.OP_HEALTH:
        return _health()
    if op == protocol.OP_UNLOAD:
        return _unload()
    return {"ok": False, "error": f"unknown op {op!r}"}


def serve(conn: Connection) -> bool:
    """Answer requests until the launcher disconnects (False) or asks to shut down (True)."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        if message.get("op") == protocol.OP_SHUTDOWN:
            conn.send({"ok": True})
            return True
        try:
            reply = handle(message)
        except Exception as error:  # noqa: BLE001 - report, keep serving
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        conn.send(reply)


def _die_with_parent() -> None:
    """Linux: be killed when the launcher dies, so a crashed campaign leaves no worker running a job."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _launcher_gone(pid: int) -> bool:
    """The launcher that started this worker has ended (or only its zombie is left). Not merely "is no longer
    the parent": `hydra.launcher.python` may be a wrapper that runs Python as its child."""
    if os.getppid() == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem.launch.worker")
    parser.add_argument("--socket", required=True, type=Path)
    args = parser.parse_args(argv)
    authkey = bytes.fromhex(os.environ.pop(protocol.AUTHKEY_ENV, ""))
    if not authkey:
        print("llem worker: no authkey given", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when a worker stops
    _install_nvml_factory()
    parent = os.environ.pop(protocol.PARENT_ENV, None)
    if parent is not None:  # a local worker (in a container the launcher is not our parent)
        _die_with_parent()
        if _launcher_gone(int(parent)):  # it died before the line above took effect: nobody will connect
            print(f"llem worker: the launcher (PID {parent}) is gone; exiting", file=sys.stderr)
            return 3
    args.socket.parent.mkdir(parents=True, exist_ok=True)
    args.socket.unlink(missing_ok=True)
    with Listener(str(args.socket), family="AF_UNIX", authkey=authkey) as listener:
        # a root container and a non-root launcher: connecting needs write permission on the socket;
        # its directory is private to the launcher and peers must know the authkey anyway
        os.chmod(args.socket, 0o666)
        print(f"llem worker {os.getpid()} listening on {args.socket}", file=sys.stderr, flush=True)
        # One launcher connection per worker life: when it drops (the launcher exited or died),
        # the worker ends too, so nothing keeps running unattended.
        with listener.accept() as conn:
            serve(conn)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
