"""Shards, launcher workers and their devices, and one store shared by many jobs
(docs/scale.md). The joblib tests start real worker processes, as a user's launch does."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from inprocess import run_main

from convergence.config import CONF_DIR, register_configs, to_config
from convergence.core.store import Store
from convergence.models.analytic import AnalyticModel
from convergence.run.gpu import gpu_for_job
from convergence.run.plan import expand
from convergence.run.runner import run_study
from convergence.run.shard import parse_shard, select_shard, shard_of

REPO = Path(__file__).resolve().parents[2]
QUIET = ["threads=1", "progress=false"]


def smoke_config(results_dir: Path, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name="config",
                                 overrides=["study=smoke", f"results_dir={results_dir}", *overrides]))


@pytest.mark.parametrize("spec,expected", [(None, None), ("", None), ("0/1", (0, 1)),
                                           ("3/4", (3, 4)), (" 1 / 2 ", (1, 2))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("value,message", [
    ("4/4", "shard='4/4': need n >= 1 and 0 <= i < n (shards of n=4 are 0/4 .. 3/4)"),
    ("1/0", "shard='1/0': need n >= 1"),
    ("a/b", "shard='a/b' is not of the form i/n"),
    ("-1/4", "shard='-1/4' is not of the form i/n"),
    ("3", "shard='3' is not of the form i/n"),
])
def test_bad_shard_is_one_clear_line(capsys, tmp_path, value, message):
    code, out, err = run_main(capsys, "run", "study=smoke", f"shard={value}",
                              f"results_dir={tmp_path}", *QUIET)
    assert code == 2
    assert err.startswith("convergence: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert not (tmp_path / "smoke").exists()


def test_every_cell_lands_in_exactly_one_shard(tmp_path, model32):
    cells = expand(smoke_config(tmp_path, "steps=[1,2,3,4,5,6,7,8]"), model32.name,
                   model32.fingerprint())
    for n in (1, 2, 3, 4, 7):
        parts = [select_shard(cells, f"{i}/{n}") for i in range(n)]
        hashes = [c.hash for p in parts for c in p]
        assert sorted(hashes) == sorted(c.hash for c in cells)  # a partition: no cell twice
        assert all(parts), f"an empty shard among {n} for {len(cells)} cells"
    # a cell's shard is its own (hash), not its position: growing the study moves no cell
    more = expand(smoke_config(tmp_path, "steps=[1,2,3,4,5,6,7,8,9,10]"), model32.name,
                  model32.fingerprint())
    old = {c.hash for c in select_shard(cells, "1/4")}
    assert old <= {c.hash for c in select_shard(more, "1/4")}
    assert all(shard_of(h, 4) == 1 for h in old)


@pytest.mark.parametrize("device,job,n_gpus,expected", [
    ("auto", 0, 4, "cuda:0"), ("auto", 5, 4, "cuda:1"), ("auto", 3, 1, "cuda:0"),
    ("auto", 2, 0, "auto"),       # no CUDA: auto keeps choosing (mps, then cpu)
    ("auto", None, 4, "auto"),    # not a multirun job
    ("cpu", 3, 4, "cpu"), ("cuda:1", 0, 4, "cuda:1"),  # the user's explicit choice stays
])
def test_worker_device_choice(device, job, n_gpus, expected):
    assert gpu_for_job(device, job, n_gpus) == expected


def test_multirun_jobs_spread_over_the_gpus(capsys, tmp_path, monkeypatch):
    """Hydra's job number reaches the device choice (CUDA mocked: 2 GPUs; nothing runs)."""
    import torch

    import convergence.run.runner as runner
    from convergence.run.runner import RunSummary
    seen = []

    def record(cfg):
        seen.append((cfg.shard, cfg.model.device))
        return RunSummary(Store(tmp_path), [], 0, 0, 0.0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runner, "run_study", record)
    code, _, err = run_main(capsys, "run", "--multirun", "study=smoke", "shard=0/3,1/3,2/3",
                            "model.device=cpu,auto", f"results_dir={tmp_path}", *QUIET)
    assert code == 0, err
    # jobs are numbered 0..5 in this order; auto -> cuda:(job mod 2), cpu stays cpu
    assert seen == [("0/3", "cpu"), ("0/3", "cuda:1"), ("1/3", "cpu"), ("1/3", "cuda:1"),
                    ("2/3", "cpu"), ("2/3", "cuda:1")]
    seen.clear()
    code, _, err = run_main(capsys, "run", "study=smoke", f"results_dir={tmp_path}", *QUIET)
    assert code == 0 and seen == [(None, "auto")]  # a single run: auto picks as usual


@pytest.fixture
def count_model_calls(monkeypatch):
    """Counts rows given to the analytic model's denoiser (every model evaluation)."""
    calls = {"rows": 0}
    real = AnalyticModel.denoise

    def counting(self, x, sigma, cond):
        calls["rows"] += x.shape[0]
        return real(self, x, sigma, cond)

    monkeypatch.setattr(AnalyticModel, "denoise", counting)
    return calls


def test_rerun_costs_nothing_and_extension_runs_only_new_cells(study_config, model32, tmp_path,
                                                               count_model_calls):
    """Two shards into one store, as two launcher jobs would write it; model calls counted."""
    def launch(results: str, steps: list[int]) -> tuple[int, list[int]]:
        count_model_calls["rows"] = 0
        ran = [run_study(study_config(steps=steps, shard=f"{i}/2",
                                      results_dir=str(tmp_path / results)),
                         model32).ran for i in range(2)]
        return count_model_calls["rows"], ran

    first, ran = launch("a", [4, 8])
    assert first > 0 and sum(ran) == 16 and min(ran) > 0
    again, ran = launch("a", [4, 8])
    assert again == 0 and ran == [0, 0]
    extended, ran = launch("a", [4, 8, 12])
    only_new, ran_new = launch("b", [12])
    assert extended == only_new > 0 and sum(ran) == sum(ran_new) == 8
    assert len(Store(tmp_path / "a" / "t").load()) == 2 * 2 * 2 * 3


# -- real worker processes ------------------------------------------------------------

def _launch(results: Path, *extra: str) -> subprocess.CompletedProcess:
    """``convergence run --multirun`` with the joblib launcher on 4 workers, as a user types
    it (the console script's code path, so the workers import convergence.cli)."""
    return _multirun(results, "shard=0/4,1/4,2/4,3/4", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=4", *extra)


def _multirun(results: Path, *args: str) -> subprocess.CompletedProcess:
    """``convergence run --multirun`` of the smoke study with ``args`` (the caller's own
    PYTHONPATH kept last: a launcher plugin installed aside, e.g. ``pip install --target``)."""
    path = [str(REPO / "src"), str(REPO / "tests" / "helpers"),
            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(path)}
    code = "import sys; from convergence.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "run", "--multirun", "study=smoke", f"results_dir={results}",
         *QUIET, *args], env=env, capture_output=True, text=True, timeout=600)


def _content(root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Cells (without timings) and the SHA-256 of every image and float sample."""
    df = Store(root).load()
    assert not df.hash.duplicated().any()
    keep = ["hash", "model", "model_hash", "topic", "prompt", "seed", "sampler", "schedule",
            "steps", "cfg", "width", "height", "nfe", "model_evals", "image", "sample"]
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted([*root.glob("images/*.png"), *root.glob("samples/*.npz")])}
    return df[keep].sort_values("hash").reset_index(drop=True), files


@pytest.mark.portable
def test_two_shards_store_what_one_process_stores(study_config, model32, tmp_path):
    """Bit for bit: the same cells, samples and images, whichever shard computed them."""
    run_study(study_config(results_dir=str(tmp_path / "one")), model32)
    for i in range(2):
        run_study(study_config(shard=f"{i}/2", results_dir=str(tmp_path / "two")), model32)
    one_cells, one_files = _content(tmp_path / "one" / "t")
    two_cells, two_files = _content(tmp_path / "two" / "t")
    pd.testing.assert_frame_equal(two_cells, one_cells)
    assert two_files == one_files and len(one_files) == 2 * len(one_cells) > 0


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The smoke study run in one process: what every launch must reproduce."""
    from convergence.run.runner import run_study
    root = tmp_path_factory.mktemp("single")
    summary = run_study(smoke_config(root, *QUIET))
    assert summary.ran == len(summary.cells) > 0
    return _content(summary.store.root)


@pytest.mark.slow
def test_joblib_launch_on_4_workers_equals_one_process(tmp_path, single_process):
    res = _launch(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ran ") == 4  # four jobs, one per shard
    cells, files = _content(tmp_path / "smoke")
    pd.testing.assert_frame_equal(cells, single_process[0])
    assert files == single_process[1]


@pytest.mark.slow
def test_killed_worker_relaunched_gives_the_same_store(tmp_path, single_process):
    marker = tmp_path / "killed"
    # after=20 denoiser calls: a shard of the smoke study makes ~100, so the kill lands
    # mid-run with some of its batches stored and one half done
    res = _launch(tmp_path, "+hydra.callbacks.kill._target_=killworker.KillOnce",
                  f"+hydra.callbacks.kill.marker={marker}", "+hydra.callbacks.kill.after=20")
    assert marker.exists(), res.stderr[-3000:]
    assert res.returncode != 0  # the launch reports the lost worker
    partial = Store(tmp_path / "smoke").load()
    assert len(partial) < len(single_process[0])
    again = _launch(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = sum(int(line.split()[1]) for line in again.stdout.splitlines() if line.startswith("ran "))
    assert ran == len(single_process[0]) - len(partial)  # only the missing cells
    cells, files = _content(tmp_path / "smoke")
    pd.testing.assert_frame_equal(cells, single_process[0])
    assert files == single_process[1]


def _plugin(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


#: the launchers users scale with, each only where its plugin is installed (the `ray` and
#: `slurm` extras; CI does not install them: docs/scale.md says why). Ray's local cluster
#: gets 2 CPUs, one per shard task.
LAUNCHERS = [
    pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
                 marks=pytest.mark.skipif(not _plugin("hydra_plugins.hydra_submitit_launcher"),
                                          reason="hydra-submitit-launcher not installed "
                                                 "(pip install -e .[slurm])"), id="submitit_local"),
    pytest.param(["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"],
                 marks=pytest.mark.skipif(not _plugin("hydra_plugins.hydra_ray_launcher"),
                                          reason="hydra-ray-launcher not installed "
                                                 "(pip install -e .[ray])"), id="ray"),
]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_gives_one_process_store_and_relaunch_runs_nothing(tmp_path, single_process,
                                                                    launcher):
    res = _multirun(tmp_path, "shard=0/2,1/2", *launcher)
    assert res.returncode == 0, res.stderr[-3000:]
    cells, files = _content(tmp_path / "smoke")
    pd.testing.assert_frame_equal(cells, single_process[0])
    assert files == single_process[1]
    again = _multirun(tmp_path, "shard=0/2,1/2", *launcher)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = [int(line.split()[1]) for line in again.stdout.splitlines() if line.startswith("ran ")]
    # submitit's workers print into their own logs, not the launch's stdout: the store says it
    assert sum(ran) == 0 and len(Store(tmp_path / "smoke").load()) == len(cells)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_shard_under_a_launcher_is_the_projects_line(tmp_path, launcher):
    """The job fails inside the worker (validation runs in the job): the launch exits 2 with
    the job's own line, not the launcher's UncompletedJobError or "a bug"."""
    res = _multirun(tmp_path, "shard=0/2,1/2", "steps=[0,4]", *launcher)
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last == "convergence: error: steps must be >= 1, got 0", res.stderr[-3000:]
    assert "a bug" not in res.stderr


@pytest.mark.parametrize("launcher,target", [
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
])
@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated against:UserWarning")
def test_launcher_configs_compose(launcher, target):
    """Each shipped launcher config composes with a study (with or without its plugin
    installed: the files name their own _target_)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["study=smoke", f"hydra/launcher={launcher}", "shard=1/4"])
    assert cfg.hydra.launcher._target_ == target
    assert to_config({k: v for k, v in cfg.items() if k != "hydra"}).shard == "1/4"


@pytest.mark.slow
@pytest.mark.skipif(not _plugin("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -e .[slurm])")
def test_submitit_slurm_without_srun_is_one_line(tmp_path):
    import shutil
    if shutil.which("srun"):
        pytest.skip("this machine has SLURM's srun: the launch would be real")
    res = _multirun(tmp_path, "shard=0/2,1/2", "hydra/launcher=submitit_slurm")
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith(
        "convergence: error: hydra/launcher=submitit_slurm needs SLURM (no `srun`")
