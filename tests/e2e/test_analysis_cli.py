"""`convergence analyze` end to end on a tiny study (generated once per session, in-process):
files, columns, exact references, claims that degrade, missing cells."""

import math
import shutil

import pandas as pd
import pytest
from conftest import run_cli
from inprocess import main_status as cli

from convergence.analysis import claims as C
from convergence.analysis import tables as T
from convergence.analysis.inputs import META_COLUMNS
from convergence.core.store import Store

TINY = ["name=tiny", "samplers=[euler,heun]", "steps=[4,8,16,24]", "width=32", "height=32",
        "prompts=[{topic:food,text:burger,seed:1}]", "seeds_per_prompt=2", "progress=false",
        "analysis.metrics=[rmse,psnr,gmsd]", "analysis.bootstrap=5", "analysis.rate_min_steps=4"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    res = f"results_dir={root}"
    assert cli("analyze", *TINY, res) == 2  # nothing stored yet
    assert cli("run", *TINY, res) == 0
    return root, res


def test_analyze_writes_tables(tiny, capsys):
    root, res = tiny
    assert cli("analyze", *TINY, res) == 0
    out = capsys.readouterr().out
    d = pd.read_parquet(root / "tiny" / "distances.parquet")
    need = {"hash", "model", "topic", "prompt", "seed", "sampler", "schedule", "steps", "cfg",
            "nfe", "seconds", "reference", "metric", "value"}
    assert need <= set(d.columns)
    assert {"rel_rmse", "rmse", "psnr", "gmsd", "noise"} <= set(d.metric)
    assert {"highest", "next", "heun@max", "exact-denoised", "exact-zero"} <= set(d.reference)
    kp = pd.read_csv(root / "tiny" / "keypoints.csv")
    assert {"topic", "sampler", "schedule", "cfg", "point", "steps", "nfe", "seconds", "metric",
            "threshold", "reference", "n_seeds", "n_reached", "spread", "converges",
            "status"} <= set(kp.columns)
    seeds = pd.read_csv(root / "tiny" / "keypoints_seed.csv")
    assert set(seeds.seed) == {1, 2} and len(seeds) == 2 * 2 * 3  # samplers x seeds x points
    rates = pd.read_csv(root / "tiny" / "rates.csv")
    assert {"topic", "sampler", "schedule", "cfg", "x", "reference", "metric", "a", "b", "b_lo",
            "b_hi", "n_seeds", "x_lo", "x_hi", "slopes", "asymptotic", "order"} <= set(rates.columns)
    assert "exact-denoised" in set(rates.reference) and "heun@max" not in set(rates.reference)
    assert rates[~rates.asymptotic].order.isna().all()  # no order where not asymptotic
    lim = pd.read_csv(root / "tiny" / "limits.csv")
    assert set(lim.sampler) == {"euler", "heun"} and lim.limit.str.startswith("exact").all()
    cal = pd.read_csv(root / "tiny" / "calibration.csv")
    assert list(cal.point) == ["indicative", "coherent", "converged"]
    # coherence is defined for every cell (2 samplers x 4 steps x 2 seeds), the two points
    # that need a reference for every cell but the reference, converged for deterministic
    # samplers only (both are here)
    assert list(cal.n) == [12, 16, 12]
    claims = pd.read_csv(root / "tiny" / "claims.csv")
    assert list(claims.columns) == T.columns("claims")
    assert "guide's claims" in out and "analyze: key points" not in out  # progress=false: quiet
    # euler+heun on one topic: the claims about other samplers/topics cannot be tested here
    v = claims.groupby("claim").verdict.agg(set)
    # two seeds are fewer than the 6 untied pairs a sign test needs to decide anything
    conv = claims[claims.claim == C.Q_CONVERGE]
    assert set(conv.sampler) == {"euler", "heun"} and set(conv.verdict) == {C.INCONCLUSIVE}
    assert ((conv.n_for + conv.n_against + conv.n_ties) == 2).all() and (conv.p_value >= 0.5).all()
    assert (conv.schedule == "discrete").all() and conv.cells.str.contains("schedule=discrete").all()
    # the analytic model declares no faces; ddim/plms are not in the study
    assert v[C.Q_LATER] == {C.NOT_ON_MODEL} and v[C.Q_TOWARDS] == {"not testable here"}


def _points_table(root):
    kp = pd.read_csv(root / "keypoints_seed.csv")
    return kp.pivot_table(index=["prompt", "seed", "sampler", "schedule", "cfg"], columns="point",
                          values="steps", dropna=False).fillna(math.inf)


def test_converged_never_comes_before_indicative(tiny):
    """The one nesting that follows from the definitions (converged => indicative), for
    every curve and every aggregate; coherent is independent of both."""
    root, _ = tiny
    p = _points_table(root / "tiny")
    assert len(p) == 4 and (p.indicative <= p.converged).all()
    kp = pd.read_csv(root / "tiny" / "keypoints.csv")
    agg = kp[kp.point.isin(["indicative", "converged"])].pivot_table(
        index=["topic", "sampler"], columns="point", values="steps", dropna=False).fillna(math.inf)
    assert (agg.indicative <= agg.converged).all()


def test_aggregate_is_the_censored_median_of_the_seeds(tiny):
    """keypoints.csv recomputed from keypoints_seed.csv by hand: the ceil(n/2)-th smallest
    reached step (never: above the sweep), NaN when fewer than half reach it, and the
    range of the reached seeds."""
    root, _ = tiny
    seeds = pd.read_csv(root / "tiny" / "keypoints_seed.csv")
    kp = pd.read_csv(root / "tiny" / "keypoints.csv")
    kp = kp[kp.point.isin(["indicative", "coherent", "converged"])]
    assert len(kp) == 2 * 2 * 3  # (food, all) x samplers x points
    for r in kp.itertuples():
        g = seeds[(seeds.sampler == r.sampler) & (seeds.point == r.point)]
        vals = sorted(g.steps.dropna())
        k = (len(g) + 1) // 2
        want = vals[k - 1] if k <= len(vals) else math.nan
        assert (r.steps == want) or (math.isnan(r.steps) and math.isnan(want)), r
        assert r.n_reached == len(vals) and r.sweep_max == 24
        if vals:
            assert (r.steps_lo, r.steps_hi) == (vals[0], vals[-1])


def test_store_is_analysed_whole(tiny, capsys, tmp_path):
    """A study extended on the command line is analysed by a plain `analyze` as a whole."""
    root, _ = tiny
    shutil.copytree(root / "tiny", tmp_path / "tiny")
    res = f"results_dir={tmp_path}"
    more = [a if not a.startswith("steps=") else "steps=[4,8,16,24,32]" for a in TINY]
    assert cli("run", *more, res) == 0
    assert cli("analyze", *TINY, res) == 0
    d = pd.read_parquet(tmp_path / "tiny" / "distances.parquet")
    assert 32 in set(d.steps)


def test_three_step_counts_degrade_instead_of_crashing(tiny, capsys, tmp_path):
    root, _ = tiny
    three = tmp_path / "tiny"
    shutil.copytree(root / "tiny", three)
    store = Store(three)
    cells = store.load()
    store.table_path.unlink()
    store.append_rows(cells[cells.steps != 24].to_dict("records"))
    args = [a if not a.startswith("steps=") else "steps=[4,8,16]" for a in TINY]
    assert cli("analyze", *args, f"results_dir={tmp_path}", "analysis.rate_min_steps=20") == 0
    claims = pd.read_csv(three / "claims.csv")
    first = claims[claims.source == "harness"].iloc[0]
    assert first.verdict in (C.UNTESTABLE, C.PRE_ASYMPTOTIC) and first.details


def test_missing_cells_are_named(tiny):
    _, res = tiny
    r = run_cli("analyze", *TINY[:2], "steps=[4,8,16,24,32]", *TINY[3:], res)
    assert r.returncode == 2 and "missing" in r.stderr and "32 steps" in r.stderr
    assert "Traceback" not in r.stderr


def test_rows_of_an_older_runner_get_their_metadata(tiny, tmp_path):
    """A store written before the runner recorded family/stochastic/sigma span: the
    analysis fills them once (from the registry) and finds the same key points."""
    root, _ = tiny
    src, dst = root / "tiny", tmp_path / "tiny"
    shutil.copytree(src, dst)
    store = Store(dst)
    old = store.load().drop(columns=list(META_COLUMNS))
    store.table_path.unlink()
    store.append_rows(old.to_dict("records"))
    assert cli("analyze", *TINY, f"results_dir={tmp_path}") == 0
    pd.testing.assert_frame_equal(_points_table(src), _points_table(dst))


def test_analysis_uses_the_model_the_run_recorded(tiny, tmp_path, monkeypatch):
    """The run records the analytic model in the study; the analysis loads it instead of
    building it (no picture is resized), and a study without the record (run before models
    were recorded) is analysed the same, building the model."""
    import convergence.models.analytic as A
    root, _ = tiny
    src = root / "tiny"
    assert (src / "model" / "analytic-32x32.npz").exists()
    recorded, built = tmp_path / "recorded", tmp_path / "built"
    for dst in (recorded, built):
        shutil.copytree(src, dst / "tiny")
        shutil.rmtree(dst / "tiny" / "exact", ignore_errors=True)
    shutil.rmtree(built / "tiny" / "model")
    A._component.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(A, "_component", lambda *a: pytest.fail("the analysis built the model"))
        assert cli("analyze", *TINY, f"results_dir={recorded}") == 0
    assert cli("analyze", *TINY, f"results_dir={built}") == 0
    for name in ("distances.parquet",):
        a = pd.read_parquet(recorded / "tiny" / name)
        b = pd.read_parquet(built / "tiny" / name)
        pd.testing.assert_frame_equal(a, b)
