"""`convergence analyze` end to end on a tiny study: files, columns, missing cells."""

import pandas as pd
from conftest import run_cli

ARGS = ["study=smoke", "samplers=[euler,heun,euler_ancestral]", "steps=[4,8,16]",
        "analysis.metrics=[rmse,psnr,gmsd]", "analysis.bootstrap=5", "analysis.rate_min_steps=4",
        "seeds_per_prompt=1"]


def test_analyze_writes_tables(tmp_path):
    res = f"results_dir={tmp_path}"
    r = run_cli("analyze", *ARGS, res)
    assert r.returncode == 2 and "no cells stored" in r.stderr and "Traceback" not in r.stderr
    assert run_cli("run", *ARGS, res).returncode == 0
    r = run_cli("analyze", *ARGS, res)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "smoke"
    d = pd.read_parquet(root / "distances.parquet")
    need = {"hash", "model", "topic", "prompt", "seed", "sampler", "schedule", "steps", "cfg",
            "nfe", "seconds", "reference", "metric", "value"}
    assert need <= set(d.columns)
    assert {"rmse", "psnr", "gmsd", "noise"} <= set(d.metric)
    kp = pd.read_csv(root / "keypoints.csv")
    assert {"topic", "sampler", "schedule", "cfg", "point", "steps", "nfe", "seconds", "metric",
            "threshold", "reference", "n_seeds", "n_reached", "spread", "converges"} <= set(kp.columns)
    rates = pd.read_csv(root / "rates.csv")
    assert {"topic", "sampler", "schedule", "cfg", "x", "reference", "metric", "a", "b", "b_lo",
            "b_hi", "n_seeds"} <= set(rates.columns)
    claims = pd.read_csv(root / "claims.csv")
    assert list(claims.columns) == ["claim", "measurement", "value", "verdict", "details"]
    assert len(claims) == 6 and "guide's claims" in r.stdout
    # a study that plans more cells than are stored says which are missing
    r = run_cli("analyze", *ARGS[:2], "steps=[4,8,16,32]", res)
    assert r.returncode == 2 and "missing" in r.stderr and "32 steps" in r.stderr
