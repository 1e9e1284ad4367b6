"""Every failure a user can cause is one line naming the bad value and what is valid, with
the documented exit status and no traceback (README "When things go wrong").

One table, run in-process (a subprocess costs ~20 s of imports). Cases that need a store
start from a copy of one small stored and analysed study."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from inprocess import run_main

STUDY = ["study=smoke", "samplers=[euler]", "steps=[2,4,8]", "seeds=[1]", "progress=false",
         "threads=1", "analysis.metrics=[rmse]", "analysis.references=[highest]"]


@dataclass
class Case:
    id: str
    command: str
    overrides: list[str]
    code: int
    says: str                         # part of the one line
    setup: Callable | None = None     # (study folder, monkeypatch) -> None
    stored: bool = False              # start from the stored, analysed study
    stream: str = "err"               # where the one line goes
    extra: list[str] = field(default_factory=list)


def _damage_image(root: Path, _mp) -> None:
    png = sorted((root / "images").glob("*.png"))[0]
    data = bytearray(png.read_bytes())
    data[-20] ^= 1
    png.write_bytes(bytes(data))


def _damage_npz(root: Path, _mp) -> None:
    npz = sorted((root / "samples").glob("*.npz"))[0]
    npz.write_bytes(npz.read_bytes()[:-30])


def _corrupt_table(root: Path, _mp) -> None:
    (root / "cells.parquet").write_bytes(b"PAR1 not really parquet")


def _corrupt_part(root: Path, _mp) -> None:
    (root / "parts").mkdir(exist_ok=True)
    (root / "parts" / "00000000000000000001-1@h-00001.parquet").write_bytes(b"garbage")


def _truncate(name: str):
    def setup(root: Path, _mp) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return setup


def _damaged_runs_json(root: Path, _mp) -> None:
    (root / "runs.json").write_text('{"runs": [')


def _keypoints_without_point(root: Path, _mp) -> None:
    import pandas as pd
    pd.read_csv(root / "keypoints.csv").drop(columns=["point"]).to_csv(root / "keypoints.csv",
                                                                        index=False)


def _garbage_distances(root: Path, _mp) -> None:
    import pandas as pd
    df = pd.read_parquet(root / "distances.parquet")
    df["value"] = "garbage"
    df.to_parquet(root / "distances.parquet", index=False)


def _bad_conf_dir(_root: Path, mp) -> None:
    import convergence.config.compose as compose
    mp.setattr(compose, "CONF_OVERRIDE", "/nonexistent")
    mp.setattr(compose, "CONF_DIR", Path("/nonexistent"))


def _disk_full_mid_write(_root: Path, mp) -> None:
    """The write itself fails (the error names no file, as a real full disk's does)."""
    import convergence.core.atomic as atomic

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, _data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        return Full(f) if "w" in str(mode) else f

    mp.setattr(atomic, "open", fake_open, raising=False)


def _no_gpus(_root: Path, mp) -> None:
    import torch
    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(torch.cuda, "device_count", lambda: 0)


def _bad_open(err: int):
    """Files the store writes fail with ``err`` (as root, chmod cannot make a folder
    read-only, so a read-only folder and a full disk are both simulated here)."""
    def setup(_root: Path, mp) -> None:
        import convergence.core.atomic as atomic

        def fake_open(path, mode="r", *a, **k):
            if "w" in str(mode):
                raise OSError(err, os.strerror(err), str(path))
            return open(path, mode, *a, **k)

        mp.setattr(atomic, "open", fake_open, raising=False)
    return setup


def _ctrl_c(_root: Path, mp) -> None:
    import convergence.run.runner as runner
    real, calls = runner.sample_batch, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    mp.setattr(runner, "sample_batch", interrupted)


def _no_cuda(_root: Path, mp) -> None:
    import torch
    mp.setattr(torch.cuda, "is_available", lambda: False)


def _pickle_pipeline(root: Path, _mp) -> None:
    from tiny_pipeline import build_tiny_sd_pipeline
    pipe = build_tiny_sd_pipeline(root.parent / "work")
    pipe.save_pretrained(root.parent / "pickled", safe_serialization=False)


def _plain_folder(root: Path, _mp) -> None:
    (root.parent / "plain").mkdir(parents=True, exist_ok=True)


MORE = ["samplers=[euler]", "steps=[2,4,8,16]"]  # one new step count: cells to compute

CASES = [
    Case("unknown sampler", "run", ["samplers=[eulr]"], 2, "unknown sampler 'eulr'"),
    Case("unknown schedule", "run", ["schedules=[fancy]"], 2, "unknown schedule 'fancy'"),
    Case("unknown metric", "analyze", ["analysis.metric=blurriness"], 2, "blurriness"),
    Case("unknown study", "run", ["study=nope"], 2, "unknown study 'nope'; use one of: check, default"),
    Case("unknown model", "run", ["model=nope"], 2, "unknown model 'nope'; use one of: analytic"),
    Case("unknown key", "run", ["colour=red"], 2, "unknown key 'colour'; valid keys there: name"),
    Case("unknown nested key", "run", ["model.colour=red"], 2,
         "unknown key 'model.colour'; valid keys there: name, path, device"),
    Case("unparsable list", "run", ["steps=[4,8"], 2, "cannot parse override 'steps=[4,8'"),
    Case("not an integer", "run", ["width=wide"], 2, "bad value in 'width=wide'"),
    Case("not a list", "run", ["samplers=euler"], 2, "bad value in 'samplers=euler'"),
    Case("not a bool", "run", ["progress=maybe"], 2, "bad value in 'progress=maybe'"),
    Case("zero steps", "run", ["steps=[0,4]"], 2, "steps must be >= 1, got 0"),
    Case("too many steps", "run", ["steps=[4,1000000]"], 2, "step counts go from 1 to 10000"),
    Case("fractional steps", "run", ["steps=[1.5]"], 2, "bad value in 'steps=[1.5]'"),
    Case("no seeds", "run", ["seeds=[]"], 2, "no seeds (seeds=[] is empty)"),
    Case("huge seed", "run", ["seeds=[99999999999999999999]"], 2,
         "seed 99999999999999999999 is out of range: seeds are integers from 0 to"),
    Case("negative seed", "run", ["seeds=[-1]"], 2, "seed -1 is out of range"),
    Case("cfg nan", "run", ["cfg=[nan]"], 2, "cfg scale nan is not usable: cfg scales are finite"),
    Case("cfg inf", "run", ["cfg=[inf]"], 2, "cfg scale inf is not usable"),
    Case("cfg 1e9", "run", ["cfg=[1e9]"], 2, "cfg scale 1000000000.0 is not usable"),
    Case("cfg zero", "run", ["cfg=[0]"], 2, "cfg scales must be > 0"),
    Case("size not /8", "run", ["width=30"], 2, "width=30 is not a positive multiple of 8"),
    Case("size too large", "run", ["width=1024"], 2, "cannot make width=1024"),
    Case("batch zero", "run", ["batch_size=0"], 2, "batch_size must be 'auto' or an integer >= 1"),
    Case("threads zero", "run", ["threads=0"], 2, "threads must be >= 1"),
    Case("cuda without cuda", "run", ["model.device=cuda"], 2, "CUDA is not available here",
         setup=_no_cuda),
    Case("missing model path", "run", ["model=diffusers", "model.path=/no/such/model"], 2,
         "model.path '/no/such/model' does not exist"),
    Case("not a pipeline", "run", ["model=diffusers", "model.path={tmp}/plain"], 2,
         "is not a diffusers pipeline folder (no model_index.json)", setup=_plain_folder),
    Case("pickle weights", "run", ["model=diffusers", "model.path={tmp}/pickled"], 2,
         "model.allow_pickle=true opts in", setup=_pickle_pipeline),
    Case("traversal name", "run", ["name=../../x"], 2,
         "study name '../../x' must be a plain folder name"),
    Case("read-only folder", "run", MORE, 2, "the results folder is not writable",
         setup=_bad_open(errno.EROFS), stored=True),
    Case("full disk", "run", MORE, 2, "no space left on the device", setup=_bad_open(errno.ENOSPC),
         stored=True),
    Case("ctrl-c", "run", ["steps=[2,4,8,16,32]", "batch_size=1"], 130,
         "interrupted: 7 of 10 cells of study 'smoke' are stored", setup=_ctrl_c, stored=True),
    Case("corrupt parquet", "run", [], 2, "cells.parquet is corrupt or unreadable",
         setup=_corrupt_table, stored=True),
    Case("corrupt part file", "analyze", [], 0, "moved it to quarantine/", setup=_corrupt_part,
         stored=True),
    Case("foreign part file", "verify", [], 1, "was not written by this study's writers",
         setup=_corrupt_part, stored=True, stream="out"),
    Case("damaged runs.json", "run", MORE, 0, "runs.json is damaged (JSONDecodeError)",
         setup=_damaged_runs_json, stored=True),
    Case("truncated study.json in analyze", "analyze", [], 2, "study.json is damaged",
         setup=_truncate("study.json"), stored=True),
    Case("truncated study.json in report", "report", [], 2, "study.json is damaged",
         setup=_truncate("study.json"), stored=True),
    Case("malformed keypoints.csv", "report", [], 2, "keypoints.csv: table 'keypoints': missing "
         "columns ['point']", setup=_keypoints_without_point, stored=True),
    Case("garbage in a table", "report", [], 2, "column 'value' is not float",
         setup=_garbage_distances, stored=True),
    Case("bad CONVERGENCE_CONF", "run", [], 2, "CONVERGENCE_CONF='/nonexistent': /nonexistent is "
         "not a folder", setup=_bad_conf_dir),
    Case("unsupported dtype", "run", ["model.dtype=float8"], 2,
         "model.dtype='float8' is not supported; use one of: auto"),
    Case("full disk mid-write", "run", MORE, 2, "no space left on the device writing /",
         setup=_disk_full_mid_write, stored=True),
    Case("two hydra modes", "run", ["--multirun", "--cfg", "job"], 2,
         "give only one of --run, --multirun"),
    Case("ray GPU without one", "run", ["--multirun", "hydra/launcher=ray",
                                         "hydra.launcher.ray.remote.num_gpus=1"], 2,
         "hydra.launcher.ray.remote.num_gpus=1 asks a GPU of each task", setup=_no_gpus),
    Case("damaged image", "analyze", [], 2, "1 of the 6 cells the config asks for are missing",
         setup=_damage_image, stored=True),
    Case("damaged npz", "analyze", [], 2, "are missing", setup=_damage_npz, stored=True),
    Case("damaged image in report", "report", [], 0, "1 damaged cells are left out",
         setup=_damage_image, stored=True),
    Case("verify damaged", "verify", [], 1, "1 problem in 6 cells", setup=_damage_npz,
         stored=True, stream="out"),
    Case("report setting", "report", ["report.thumbnail=4"], 2,
         "report.thumbnail must be >= 16 pixels, got 4"),
    Case("on_missing", "analyze", ["analysis.on_missing=maybe"], 2,
         "analysis.on_missing must be 'error' or 'warn', got 'maybe'"),
    Case("analysis device absent", "analyze", ["analysis.device=cuda"], 2,
         "device 'cuda' was requested but CUDA is not available here (use analysis.device=auto",
         setup=_no_cuda, stored=True),
    Case("unknown command", "frobnicate", [], 2, "unknown command 'frobnicate'; use one of: run"),
    Case("unknown store command", "store", ["shrink"], 2, "unknown store command 'shrink'"),
]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """results_dir holding the smoke study (6 cells, euler 2/4/8 steps), analysed."""
    results = tmp_path_factory.mktemp("analysed")
    for cmd in ("run", "analyze"):
        from inprocess import main_status
        assert main_status(cmd, *STUDY, f"results_dir={results}") == 0
    return results


def test_the_table_covers_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


#: building and saving the tiny pickle pipeline takes ~10 s
SLOW = {"pickle weights"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW else c
                                  for c in CASES], ids=[c.id for c in CASES])
def test_failure_is_one_line(case, tmp_path, capsys, monkeypatch, request):
    results = tmp_path / "results"
    if case.stored:
        shutil.copytree(request.getfixturevalue("analysed"), results)
    root = results / "smoke"
    if case.setup:
        case.setup(root, monkeypatch)
        capsys.readouterr()  # what setting up printed (e.g. save_pretrained's progress)
    overrides = [o.replace("{tmp}", str(results)) for o in case.overrides]
    before = _snapshot(root)
    code, out, err = run_main(capsys, case.command, *merged(overrides),
                              f"results_dir={results}")
    assert code == case.code, (out, err)
    text = out if case.stream == "out" else err
    assert case.says in text, text
    assert "Traceback" not in out + err
    assert "a bug" not in out + err  # "internal error ... a bug" is for real bugs only
    if case.stream == "err":
        lines = err.strip().splitlines()
        assert len(lines) == 1, lines
        prefix = "warning: " if code == 0 else "convergence: error: "
        assert lines[0].startswith(prefix), lines
    if case.stored and case.command == "run":  # nothing stored is lost
        after = _snapshot(root)
        assert set(before["rows"]) <= set(after["rows"])
    if case.id == "traversal name":
        assert not (tmp_path / "x").exists() and not (results / ".hydra").exists()


def merged(overrides: list[str]) -> list[str]:
    """The case's overrides plus the small study's settings it does not set itself."""
    keys = {o.split("=", 1)[0] for o in overrides if "=" in o}
    return [*overrides, *(o for o in STUDY if o.split("=", 1)[0] not in keys)]


def _snapshot(root: Path) -> dict:
    if not (root / "cells.parquet").exists():
        return {"rows": []}
    import pandas as pd
    try:
        return {"rows": list(pd.read_parquet(root / "cells.parquet").hash)}
    except Exception:
        return {"rows": []}


def test_a_job_failure_survives_the_launchers_pickling():
    """Launcher workers (submitit, Ray) catch ``Exception`` and pickle it back: the job's
    one line and exit code arrive whole in the launching process."""
    import pickle

    from convergence.cli import _job_failure, _JobFailed
    from convergence.core.errors import ConvergenceError, Interrupted
    assert issubclass(_JobFailed, Exception)
    for error, code in ((ConvergenceError("shard='4/4': need n >= 1"), 2),
                        (Interrupted("interrupted: 3 of 6 cells"), 130)):
        back = pickle.loads(pickle.dumps(_JobFailed(error)))
        got = _job_failure(back)
        assert isinstance(got, ConvergenceError) and got.exit_code == code
        assert str(got) == str(error)
    plain = RuntimeError("not a job's failure")
    assert _job_failure(plain) is plain


def test_debug_shows_the_traceback(tmp_path, capsys):
    from convergence.core.errors import ConvergenceError
    with pytest.raises(ConvergenceError, match="cfg scale nan"):
        run_main(capsys, "run", "--debug", "cfg=[nan]", f"results_dir={tmp_path}")


def test_hydra_full_error_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException):
        run_main(capsys, "run", "colour=red", f"results_dir={tmp_path}")


def test_ctrl_c_then_rerun_resumes(tmp_path, capsys, monkeypatch):
    """The Ctrl-C line's advice works: the same command finishes the study."""
    args = [*merged(["steps=[2,4,8,16]", "batch_size=1"]), f"results_dir={tmp_path}"]
    _ctrl_c(tmp_path, monkeypatch)
    code, _, err = run_main(capsys, "run", *args)
    assert code == 130 and "1 of 8 cells" in err
    monkeypatch.undo()
    code, out, _ = run_main(capsys, "run", *args)
    assert code == 0 and "ran 7 cells, 1 already stored" in out
    assert json.loads((tmp_path / "smoke" / "study.json").read_text())["n_cells"] == 8


@pytest.mark.parametrize("error,says", [
    (ConnectionError("Could not find any running Ray instance. Please specify the one to "
                     "connect to by setting `--address` flag or `RAY_ADDRESS`"),
     "hydra.launcher.ray.init.address=auto found no running Ray cluster"),
    (RuntimeError('Could not detect "srun", are you indeed on a slurm cluster?'),
     "hydra/launcher=submitit_slurm needs SLURM (no `srun` on this machine)"),
    (ValueError("Only one of --run, --multirun, --cfg, --info and --shell_completion can be "
                "specified"), "give only one of --run, --multirun"),
])
def test_launcher_setup_errors_name_the_setting(error, says):
    """What Ray, submitit and Hydra raise for a setup problem (their own messages, as their
    sources write them; the plugins are not installed in CI) is one user line, exit 2."""
    from convergence.failures import USER, explain
    message, code = explain(error, [])
    assert code == USER and says in message and "a bug" not in message
