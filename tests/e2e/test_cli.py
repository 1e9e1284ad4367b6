"""The `convergence` command as a user runs it: overrides, multirun, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from inprocess import run_main

from convergence.config import CONF_DIR, register_configs, to_config


@pytest.mark.parametrize("override,message", [
    ("samplers=[eulr]", "unknown sampler 'eulr'; did you mean euler"),
    ("steps=[0,4]", "steps must be >= 1, got 0"),
    ("seeds=[]", "no seeds (seeds=[] is empty)"),
    ("samplers=[]", "no samplers"),
    ("prompts=[]", "no prompts"),
    ("width=30", "width=30 is not a positive multiple of 8"),
    ("width=1024", "cannot make width=1024"),
    ("schedules=[fancy]", "unknown schedule 'fancy'"),
    ("cfg=[0]", "cfg scales must be > 0"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path, override, message):
    code, out, err = run_main(capsys, "run", override, f"results_dir={tmp_path}", "progress=false")
    assert code == 2
    assert message in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "default" / "cells.parquet").exists()


def test_run_with_overrides_writes_the_store(capsys, tmp_path):
    code, out, err = run_main(capsys, "run", "study=smoke", "samplers=[euler,heun]", "steps=[4,8]",
                              "seeds=[1,2]", f"results_dir={tmp_path}", "progress=false")
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "smoke" / "cells.parquet")
    assert len(df) == 2 * 2 * 2 * 2
    assert set(df.seed) == {1, 2} and set(df.sampler) == {"euler", "heun"}
    assert "ran 16 cells" in out


def test_multirun_sweeps_into_one_store(capsys, tmp_path):
    code, _, err = run_main(capsys, "run", "--multirun", "study=smoke", "cfg=[1.0],[7.5]",
                            "steps=[4]", "samplers=[euler]", f"results_dir={tmp_path}",
                            "progress=false")
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "smoke" / "cells.parquet")
    assert sorted(set(df.cfg)) == [1.0, 7.5] and len(df) == 2 * 4


def test_console_script_reports_errors_without_traceback(cli, tmp_path):
    res = cli("run", "samplers=[K_EULER,nonsense]", f"results_dir={tmp_path}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("convergence: error: unknown sampler 'nonsense'")
    assert "Traceback" not in res.stderr


def test_samplers_command_lists_registry(capsys):
    code, out, _ = run_main(capsys, "samplers")
    assert code == 0
    for name in ("euler", "heun", "dpmpp_2m", "ddim", "plms", "K_LMS", "karras"):
        assert name in out


def test_unknown_command(capsys):
    code, _, err = run_main(capsys, "frobnicate")
    assert code == 2 and "unknown command 'frobnicate'" in err


def _studies() -> list[str]:
    return sorted(p.stem for p in Path(CONF_DIR, "study").glob("*.yaml"))


@pytest.mark.parametrize("study", _studies())
@pytest.mark.parametrize("model", sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml")))
def test_every_config_file_composes(study, model):
    register_configs()
    overrides = [f"study={study}", f"model={model}"]
    if model != "analytic":
        overrides.append("model.path=/some/model")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validated = to_config(cfg)
    assert validated.name and validated.prompts and validated.samplers and validated.steps


USER_STUDY = """# @package _global_
name: mine
prompts:
  - {text: "a cat", topic: animals, seed: 1}
samplers: [euler]
steps: [2, 4]
width: 32
height: 32
"""


@pytest.mark.parametrize("route", ["--config-dir", "hydra.searchpath"])
def test_user_study_outside_the_package_runs_from_any_directory(capsys, tmp_path, monkeypatch,
                                                                 route):
    """The configs ship in the package (pkg://convergence.conf): a study in the user's own
    folder, run from an unrelated directory, composes over them."""
    (tmp_path / "mine" / "study").mkdir(parents=True)
    (tmp_path / "mine" / "study" / "mine.yaml").write_text(USER_STUDY)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("CONVERGENCE_CONF", raising=False)
    where = (["--config-dir", str(tmp_path / "mine")] if route == "--config-dir"
             else [f"hydra.searchpath=[file://{tmp_path / 'mine'}]"])
    code, out, err = run_main(capsys, "run", *where, "study=mine",
                              f"results_dir={tmp_path / 'results'}", "progress=false")
    assert code == 0, err
    assert len(pd.read_parquet(tmp_path / "results" / "mine" / "cells.parquet")) == 2
