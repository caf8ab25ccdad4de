"""The SLURM launcher's parts, without SLURM: grouping, GPU requests, options, container argv, requeue
skipping and placement records."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from submitit.helpers import DelayedSubmission

from llem.launch import protocol
from llem.launch.slurm import job as job_module
from llem.launch.slurm.container import container_argv, image_for, mounts_for
from llem.launch.slurm.groups import JobSpec, describe, group_jobs
from llem.launch.slurm.job import GroupJob, read_placement, result_done
from llem.launch.slurm.launcher import SlurmLaunch, squeue_states
from llem.launch.slurm.options import (
    SlurmContainerOptions,
    SlurmOptions,
    executor_parameters,
    options_from,
)


def _config(sweep: Path, num: int, backend: Any = "pytorch", precision: str = "float32", **extra: Any) -> Any:
    backend = {"name": "pytorch", **backend} if isinstance(backend, dict) else {"name": backend}
    return OmegaConf.create({
        "backend": backend,
        "model": {"name": "builtin:tiny", "revision": None},
        "fp_precision": precision,
        **extra,
        "hydra": {"job": {"name": "llem", "num": num, "id": f"llem_{num}"},
                  "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"}},
    })


def _spec(sweep: Path, num: int, **kw: Any) -> JobSpec:
    return describe(JobSpec(num, num, [f"n={num}"], _config(sweep, num, **kw)), "backend.name")


# ---------------------------------------------------------------- grouping and GPUs
def test_jobs_group_by_backend_and_model_in_order(tmp_path: Path) -> None:
    specs = [
        _spec(tmp_path, 0), _spec(tmp_path, 1, backend="vllm"), _spec(tmp_path, 2, precision="bfloat16"),
        _spec(tmp_path, 3), _spec(tmp_path, 4, backend="vllm"),
    ]
    groups = group_jobs(specs)
    assert [(g.key, [j.job_num for j in g.jobs]) for g in groups] == [("pytorch", [0, 3]), ("vllm", [1, 4]),
                                                                      ("pytorch", [2])]
    assert groups[0].model == "builtin:tiny@float32" and groups[2].model == "builtin:tiny@bfloat16"
    assert [len(g.jobs) for g in group_jobs(specs, split_by_model=False)] == [3, 2]
    assert specs[0].job_dir == str(tmp_path / "0")


def test_route_by_picks_the_group_key(tmp_path: Path) -> None:
    spec = describe(JobSpec(0, 0, [], _config(tmp_path, 0, site={"pool": "a100"})), "site.pool")
    assert spec.key == "a100"
    assert describe(JobSpec(0, 0, [], _config(tmp_path, 0)), "no.such.key").key == "default"


def test_gpu_need_sets_gpus_per_task(tmp_path: Path) -> None:
    cpu = _spec(tmp_path, 0, backend={"device": "cpu"})
    gpu = _spec(tmp_path, 1)
    assert cpu.config_hash is not None and cpu.gpus == 0
    assert gpu.gpus == 1  # pytorch on cuda: one GPU
    vllm = [_spec(tmp_path, 2 + i, backend={"name": "vllm", "tensor_parallel_size": tp}) for i, tp in enumerate((1, 2))]
    assert [s.gpus for s in vllm] == [1, 2]
    (group,) = group_jobs(vllm)
    assert group.gpus == 2  # the most any job of the group needs
    opts = SlurmOptions()
    assert executor_parameters(opts, group.gpus)["gpus_per_task"] == 2
    assert "gpus_per_task" not in executor_parameters(opts, 0)  # CPU jobs request none
    assert executor_parameters(SlurmOptions(gpus_per_task=4), 1)["gpus_per_task"] == 4


def test_invalid_config_keeps_no_hash_and_no_gpus(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 0, backend={"batch_size": "not a number"})
    assert spec.config_hash is None and spec.gpus == 0 and spec.key == "pytorch"


# ---------------------------------------------------------------- options
def test_options_become_submitit_parameters() -> None:
    opts = options_from({
        "partition": "gpu", "account": "proj", "qos": "high", "time_min": 90, "cpus_per_task": 8, "mem_gb": 32,
        "additional_parameters": OmegaConf.create({"constraint": "a100", "exclusive": True}),
        "setup": ["module load cuda"], "folder": "/x/.slurm", "max_num_timeout": 5,
        "container": {"engine": "apptainer", "image": "/img/llem.sif"}, "_target_": "ignored",
    })
    assert isinstance(opts.container, SlurmContainerOptions) and opts.container.engine == "apptainer"
    assert opts.in_container is opts.container
    assert executor_parameters(opts, 0) == {
        "job_name": "llem", "time": 90, "nodes": 1, "ntasks_per_node": 1, "partition": "gpu", "account": "proj",
        "qos": "high", "cpus_per_task": 8, "mem": "32768MB", "setup": ["module load cuda"],
        "additional_parameters": {"constraint": "a100", "exclusive": True},
    }
    with pytest.raises(ValueError, match="unknown llem_slurm option"):
        options_from({"partitoin": "gpu"})


def test_parameters_make_a_valid_sbatch_script(tmp_path: Path) -> None:
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp_path, max_num_timeout=2, python="/opt/venv/bin/python")
    opts = SlurmOptions(partition="gpu", time_min=30, additional_parameters={"constraint": "h100"})
    executor.update_parameters(**executor_parameters(opts, 2))
    script = executor._make_submission_file_text("CMD", "1")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-task=2",
                 "#SBATCH --constraint=h100"):
        assert line in script
    assert "/opt/venv/bin/python" in executor._submitit_command_str


def test_plugin_config_is_registered() -> None:
    from hydra.core.config_store import ConfigStore

    import hydra_plugins.llem_slurm_launcher.config  # noqa: F401
    from hydra_plugins.llem_slurm_launcher.llem_slurm_launcher import LlemSlurmLauncher

    node = ConfigStore.instance().load("hydra/launcher/llem_slurm.yaml").node
    assert node._target_.endswith("llem_slurm_launcher.LlemSlurmLauncher")
    assert OmegaConf.to_container(node)["folder"] == "${hydra.sweep.dir}/.slurm" and node.container.image is None
    assert options_from({}).in_container is None  # no image: the groups run directly on the node
    assert options_from({"container": None}).in_container is None  # `container: null`, as before
    overridden = copy.deepcopy(node)
    OmegaConf.update(overridden, "container.image", "llem:1", merge=True, force_add=True)  # as Hydra applies it
    assert options_from({"container": overridden.container}).in_container == SlurmContainerOptions(image="llem:1")
    from llem.launch.jobs import JobLauncher

    assert issubclass(LlemSlurmLauncher, JobLauncher)  # the campaign hands it planned jobs, and it reports them


# ---------------------------------------------------------------- containers
def test_podman_argv_passes_secrets_by_name_only() -> None:
    opts = SlurmContainerOptions(engine="podman", images={"pytorch": "llem-pytorch:1"}, image="llem:any",
                                 extra_args=["--shm-size", "8g"])
    environ = {"HF_TOKEN": "s3cret", "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "1"}
    argv = container_argv(
        opts, image=image_for(opts, "pytorch"), command=["python", "-m", "llem.launch.slurm.job", "p", "o"],
        mounts=[("/sweep", "/sweep", "rw"), ("/hf", "/hf", "ro")], workdir="/sweep", gpus=1,
        env={"HF_HOME": "/hf", "A": "b c; rm -rf /"}, passthrough=["HF_TOKEN", "MISSING"], environ=environ,
        name="llem-slurm-42-x", gpu_uuids=["GPU-b"],
    )
    assert argv[:4] == ["podman", "run", "--rm", "--init"]
    assert ["--device", "nvidia.com/gpu=GPU-b"] == argv[argv.index("--device"):argv.index("--device") + 2]
    assert "/sweep:/sweep:rw" in argv and "/hf:/hf:ro" in argv
    assert "A=b c; rm -rf /" in argv  # one argument, never parsed by a shell
    assert "HF_TOKEN" in argv and "s3cret" not in " ".join(argv) and "MISSING" not in argv
    assert "SLURM_JOB_ID" in argv and "CUDA_VISIBLE_DEVICES=GPU-b" in argv and "CUDA_VISIBLE_DEVICES" not in argv
    assert argv[argv.index("llem-pytorch:1") - 2:argv.index("llem-pytorch:1")] == ["--shm-size", "8g"]
    assert argv[argv.index("llem-pytorch:1") + 1:] == ["python", "-m", "llem.launch.slurm.job", "p", "o"]
    assert image_for(opts, "vllm") == "llem:any"


def test_apptainer_argv() -> None:
    opts = SlurmContainerOptions(engine="apptainer", image="/images/llem.sif")
    argv = container_argv(opts, image="/images/llem.sif", command=["python", "-m", "x"],
                          mounts=[("/sweep", "/sweep", "rw")], workdir="/sweep", gpus=2, env={"K": "v"},
                          passthrough=["HF_TOKEN"], environ={"HF_TOKEN": "s3cret"}, gpu_uuids=["GPU-a", "GPU-b"])
    assert argv == ["apptainer", "exec", "--nv", "--bind", "/sweep:/sweep:rw", "--pwd", "/sweep", "--env", "K=v",
                    "--env", "CUDA_VISIBLE_DEVICES=GPU-a,GPU-b", "/images/llem.sif", "python", "-m", "x"]
    no_gpu = container_argv(opts, image="i.sif", command=["c"], mounts=[], workdir="/w", gpus=0, env={},
                            passthrough=[], environ={})
    assert "--nv" not in no_gpu
    with pytest.raises(ValueError, match="podman or apptainer"):
        container_argv(SlurmContainerOptions(engine="docker"), image="i", command=[], mounts=[], workdir="/",
                       gpus=0, env={}, passthrough=[], environ={})
    with pytest.raises(ValueError, match="no image"):
        image_for(SlurmContainerOptions(), "pytorch")


def test_container_mounts_the_sweep_dir_and_caches() -> None:
    opts = SlurmContainerOptions(mounts=["/data:/data:ro"])
    mounts, env = mounts_for(opts, "/s", environ={"HF_HOME": "/hf", "LLEM_CACHE_DIR": "/lc"})
    assert mounts == [("/s", "/s", "rw"), ("/hf", "/hf", "rw"), ("/lc", "/lc", "rw"), ("/data", "/data", "ro")]
    assert env == {"HF_HOME": "/hf", "LLEM_CACHE_DIR": "/lc"}
    assert mounts_for(SlurmContainerOptions(mount_caches=False), "/s", environ={}) == ([("/s", "/s", "rw")], {})


# ---------------------------------------------------------------- the in-job callable
def _group(tmp_path: Path, nums: list[int], **kw: Any) -> GroupJob:
    specs = [_spec(tmp_path, n) for n in nums]
    return GroupJob(specs, lambda cfg: None, None, protocol.pack_singleton_state(Singleton.get_state()),
                    sweep_dir=str(tmp_path), **kw)


def _fake_run(ran: list[int]) -> Any:
    def run_one(self: GroupJob, spec: JobSpec) -> JobReturn:
        ran.append(spec.job_num)
        Path(spec.job_dir, "result.json").write_text(json.dumps({"config_hash": spec.config_hash}))
        return JobReturn(overrides=spec.overrides, status=JobStatus.COMPLETED, _return_value={"n": spec.job_num},
                         hydra_cfg=job_module._with_output_dir(spec))

    return run_one


def _done_by_marker(job_dir: str, config_hash: str | None) -> bool:
    path = Path(job_dir, "result.json")
    return path.is_file() and json.loads(path.read_text()).get("config_hash") == config_hash


def test_a_requeued_group_skips_jobs_with_complete_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_module, "result_done", _done_by_marker)
    ran: list[int] = []
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run(ran))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    group = _group(tmp_path, [0, 1, 2])
    assert callable(group.checkpoint)  # what submitit looks for before it requeues a timed-out job
    # the first start finished job 0 before the time limit; job 1 left a result of another config
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(json.dumps({"config_hash": group.jobs[0].config_hash}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "result.json").write_text(json.dumps({"config_hash": "other"}))
    resubmission = group.checkpoint()
    assert isinstance(resubmission, DelayedSubmission) and resubmission.function is group
    outcomes = resubmission.function()
    assert ran == [1, 2]
    assert [(o.job_num, o.skipped, o.job_return.status) for o in outcomes] == [
        (0, True, JobStatus.COMPLETED), (1, False, JobStatus.COMPLETED), (2, False, JobStatus.COMPLETED)]
    assert outcomes[0].job_return.hydra_cfg.hydra.runtime.output_dir == str(tmp_path / "0")
    assert read_placement(str(tmp_path / "2"))["slurm_job_id"] == "77"
    assert all(o.slurm_job_id == "77" and o.node for o in outcomes[1:])


def test_result_done_needs_a_whole_result_of_this_config(tmp_path: Path) -> None:
    assert not result_done(str(tmp_path), "abc")
    (tmp_path / "result.json").write_text('{"config_hash": "abc"')  # torn
    assert not result_done(str(tmp_path), "abc")
    assert not result_done(str(tmp_path), None)


def test_failures_stay_in_their_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def task(cfg: Any) -> None:
        raise AssertionError("not reached")

    def run_one(self: GroupJob, spec: JobSpec) -> JobReturn:
        calls.append(spec.job_num)
        if spec.job_num == 0:
            return job_module.failed_return(spec, RuntimeError("boom"))
        return JobReturn(overrides=spec.overrides, status=JobStatus.COMPLETED)

    monkeypatch.setattr(GroupJob, "_run_one", run_one)
    outcomes = _group(tmp_path, [0, 1], gap_s=0.0)()
    assert calls == [0, 1] and [o.job_return.status for o in outcomes] == [JobStatus.FAILED, JobStatus.COMPLETED]


# ---------------------------------------------------------------- the launcher with a fake cluster
class _FakeJob:
    def __init__(self, job_id: str, fn: Any, folder: Path) -> None:
        self.job_id, self.fn = job_id, fn
        self.paths = type("P", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()
        self.paths.result_pickle.write_text("x")

    def result(self) -> Any:
        return self.fn()


class _FakeExecutor:
    def __init__(self, folder: Path) -> None:
        self.folder, self.params, self.jobs = folder, [], []

    def update_parameters(self, **params: Any) -> None:
        self.params.append(params)

    def submit(self, fn: Any) -> _FakeJob:
        job = _FakeJob(str(100 + len(self.jobs)), fn, self.folder)
        self.jobs.append(job)
        return job


class _Session:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.lifecycle: list[tuple[str, int, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.said: list[str] = []

    def placed(self, job_num: int, **fields: Any) -> None:
        self.calls.append((job_num, fields))

    def started(self, job_num: int, *, key: str = "", label: str = "", **placement: Any) -> int:
        self.lifecycle.append(("started", job_num, placement))
        return 1

    def finished(self, job_num: int, ret: JobReturn, *, overrides: list[str] | None = None) -> dict[str, Any]:
        self.lifecycle.append(("finished", job_num, ret.status))
        return {}

    def event(self, **event: Any) -> None:
        self.events.append(event)

    def say(self, message: str) -> None:
        self.said.append(message)


class _Proc:
    def __init__(self, rc: int, out: str = "", err: str = "") -> None:
        self.returncode, self.stdout, self.stderr = rc, out, err


def _no_slurm(argv: list[str], **kw: Any) -> _Proc:
    """SLURM's commands on a machine without SLURM: no answer (the launcher submits as asked)."""
    return _Proc(1, err="Unable to contact slurm controller")


def test_launch_returns_one_job_return_per_job_in_order_and_reports_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "result_done", _done_by_marker)
    import llem.launch.slurm.launcher as launcher_module

    monkeypatch.setattr(launcher_module, "result_done", _done_by_marker)
    ran: list[int] = []
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run(ran))
    precisions = {"0": "float32", "1": "bfloat16", "2": "float32"}

    class Loader:
        def load_sweep_config(self, master: Any, overrides: list[str]) -> Any:
            if overrides == ["bad"]:
                raise ValueError("no such key")
            return _config(tmp_path, 0, precision=precisions[overrides[0]])

    context = type("Ctx", (), {"config_loader": Loader(), "callbacks": None})()
    master = _config(tmp_path, 0)
    executor = _FakeExecutor(tmp_path)
    session = _Session()
    monkeypatch.setenv("SLURM_JOB_ID", "fake")
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), master, context, lambda cfg: None, session=session,
                      executor_factory=lambda: executor, sleep=lambda s: None, run=_no_slurm)
    returns = run.run([["0"], ["1"], ["bad"], ["2"]], initial_job_idx=10)
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.FAILED,
                                           JobStatus.COMPLETED]
    assert "could not be composed" in str(returns[2]._return_value)
    assert [r.return_value["n"] for i, r in enumerate(returns) if i != 2] == [10, 11, 13]
    assert sorted(ran) == [10, 11, 13] and len(executor.jobs) == 2  # float32 (10, 13) and bfloat16 (11)
    final = {n: f for n, f in session.calls}
    assert final[10] == {"slurm_job_id": "fake", "node": final[10]["node"]} and final[10]["node"]
    assert {n for n, _ in session.calls} == {10, 11, 13}
    assert (10, {"slurm_job_id": "100"}) in session.calls  # known at submission, before the node
    assert [p.get("gpus_per_task") for p in executor.params] == [1, 1]  # pytorch on its default device: one GPU


def _plain_context(tmp_path: Path) -> Any:
    """A Hydra context whose config loader composes every job as the same default config."""

    class Loader:
        def load_sweep_config(self, master: Any, overrides: list[str]) -> Any:
            return _config(tmp_path, 0)

    return type("Ctx", (), {"config_loader": Loader(), "callbacks": None})()


def test_launch_without_a_session_just_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupJob, "_run_one", _fake_run([]))

    context = _plain_context(tmp_path)
    run = SlurmLaunch(SlurmOptions(), _config(tmp_path, 0), context, lambda cfg: None,
                      executor_factory=lambda: _FakeExecutor(tmp_path), sleep=lambda s: None, run=_no_slurm)
    assert [r.status for r in run.run([["a"]], 0)] == [JobStatus.COMPLETED]


@pytest.mark.parametrize(("container", "reason"), [
    ({"images": {"vllm": "llem-vllm:1"}}, "no image for 'pytorch' (set image, or images.pytorch)"),
    ({"image": "llem:1", "mounts": ["/data"]}, "expected 'host:container[:ro|rw]', got '/data'"),
    ({"image": "llem:1", "engine": "docker"}, "expected podman or apptainer, got 'docker'"),
])
def test_a_container_mistake_fails_the_group_once_with_its_reason(
    tmp_path: Path, container: dict[str, Any], reason: str
) -> None:
    """A mistake in the container options is found before the group is submitted (not on the node, after the
    queue), and is not retried."""
    from llem.launch.outcome import job_outcome

    context = _plain_context(tmp_path)
    executor = _FakeExecutor(tmp_path)
    options = options_from({"container": container})
    run = SlurmLaunch(options, _config(tmp_path, 0), context, lambda cfg: None,
                      executor_factory=lambda: executor, sleep=lambda s: None, run=_no_slurm)
    (ret,) = run.run([["a"]], 0)
    outcome = job_outcome(ret)
    assert outcome["status"] == "failed" and outcome["retryable"] is False
    assert reason in outcome["error"] and outcome["error"].startswith("ConfigError")
    assert executor.jobs == []


def test_a_cancelled_group_fails_its_unfinished_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llem.launch.slurm.launcher as launcher_module

    monkeypatch.setattr(launcher_module, "result_done", _done_by_marker)
    monkeypatch.setattr(job_module, "result_done", _done_by_marker)
    monkeypatch.setattr(launcher_module, "squeue_states", lambda ids, **kw: {i: "CANCELLED" for i in ids})
    specs = [_spec(tmp_path, n) for n in (0, 1)]
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(json.dumps({"config_hash": specs[0].config_hash}))
    job = type("J", (), {"job_id": "9", "paths": type("P", (), {"result_pickle": tmp_path / "none.pkl"})(),
                         "stderr": lambda self: "srun: error: job cancelled"})()
    clock = iter(range(0, 1000, 20))
    monkeypatch.setattr(launcher_module.time, "monotonic", lambda: next(clock))
    run = SlurmLaunch(SlurmOptions(poll_interval_s=0), _config(tmp_path, 0), None, None, sleep=lambda s: None,
                      run=_no_slurm)
    returns: list[Any] = [None, None]
    run._wait([(group_jobs(specs)[0], job)], returns)
    assert returns[0].status == JobStatus.COMPLETED  # its result was written before the cancel
    assert returns[1].status == JobStatus.FAILED and "ended (CANCELLED)" in str(returns[1]._return_value)
    assert "job cancelled" in str(returns[1]._return_value)


def test_squeue_states_parses_and_copes_with_errors() -> None:
    class Proc:
        def __init__(self, rc: int, out: str = "", err: str = "") -> None:
            self.returncode, self.stdout, self.stderr = rc, out, err

    assert squeue_states(["1", "2"], run=lambda *a, **k: Proc(0, "1|RUNNING\n2|CANCELLED by 0\n")) == {
        "1": "RUNNING", "2": "CANCELLED"}
    assert squeue_states(["3"], run=lambda *a, **k: Proc(1, err="slurm_load_jobs error: Invalid job id")) == {}
    assert squeue_states(["3"], run=lambda *a, **k: Proc(1, err="Unable to contact slurm controller")) is None


def test_group_jobs_take_the_campaigns_settings_not_the_jobs_defaults(tmp_path: Path) -> None:
    """Jobs never carry `campaign.*` overrides, so their composed `campaign` section holds the defaults: a group
    must pace itself with the running campaign's settings (here no gap, where the default is 60 s)."""
    from llem.config import CampaignSettings

    specs = [_spec(tmp_path, n) for n in range(2)]
    for spec in specs:
        spec.config.campaign = {"execution": {"config_gap_seconds": 60.0, "warmup_prompts": 0}}
    context = type("Ctx", (), {"config_loader": None, "callbacks": None})()
    run = SlurmLaunch(SlurmOptions(), _config(tmp_path, 0), context, lambda cfg: None)
    (group,) = group_jobs(specs)
    assert run.group_job(group).gap_s == 60.0  # no campaign attached: the job's own section
    session = _Session()
    session.settings = CampaignSettings.model_validate(  # type: ignore[attr-defined]
        {"execution": {"config_gap_seconds": 0, "warmup_prompts": 3}}
    )
    run.session = session
    job = run.group_job(group)
    assert job.gap_s == 0.0 and job.warmup == {"prompts": 3, "timeout_s": 300.0}


def test_the_group_side_needs_no_submitit(tmp_path: Path) -> None:
    """Inside a container the group is unpickled and run by `python -m llem.launch.slurm.job`: an image with llem
    but without submitit (the submitting side's library) must do."""
    import cloudpickle

    payload, out = tmp_path / "payload.pkl", tmp_path / "outcomes.pkl"
    payload.write_bytes(cloudpickle.dumps(_group(tmp_path, [])))
    code = ("import sys; sys.modules['submitit'] = None\n"  # any `import submitit...` now raises ImportError
            "import llem.launch.slurm.job as job\n"
            f"sys.exit(job.main([{str(payload)!r}, {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cloudpickle.loads(out.read_bytes()) == []  # the group ran (it had no job left) and reported
