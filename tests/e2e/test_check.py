"""`convergence check` on a throw-away plugin package (tests/helpers/plugin_pkg): a correct
sampler passes; each broken variant fails naming what regressed. Routes: `_target_`,
`--plugin` (plugins=[...]); the entry-point route and the pytest fixture run in a fresh
virtualenv (test_install.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from inprocess import run_main

from convergence.samplers.spec import SAMPLERS, resolve_sampler
from convergence.tools import baseline
from convergence.tools.check import (
    IMAGE_TOLERANCE,
    Measurement,
    _order_row,
    check_sampler,
    compare,
    empirical_order,
    moving_away,
)

PLUGIN = Path(__file__).parents[1] / "helpers" / "plugin_pkg"
TARGET = "{_target_: my_midpoint.%s, name: %s}"


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """The plugin package importable (as after `pip install`), forgotten afterwards."""
    pkg = tmp_path / "pkg"
    shutil.copytree(PLUGIN, pkg)
    monkeypatch.syspath_prepend(str(pkg))
    yield pkg
    for mod in ("my_midpoint", "my_midpoint_plugin"):
        sys.modules.pop(mod, None)


def _check(capsys, *args) -> tuple[int, str, str]:
    return run_main(capsys, "check", *args, "--no-baseline")


def test_a_correct_sampler_passes_through_target(capsys, plugin_path):
    code, out, err = _check(capsys, TARGET % ("sample_midpoint", "t_midpoint"))
    assert code == 0, out + err
    assert "t_midpoint: all checks passed" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "2/step - 1" in lines["nfe"] and lines["order"].rstrip().endswith("yes")


@pytest.mark.parametrize("fn,message", [
    ("sample_extra_call", "NFE per step regressed: claimed 2/step - 1 (7 calls at 4 steps), measured 11"),
    ("sample_wrong_last", "does not reach the limit"),
    ("sample_noisy", "not deterministic: the same seed gave a different image"),
])
def test_broken_variants_fail_naming_the_regression(capsys, plugin_path, fn, message):
    code, out, err = _check(capsys, TARGET % (fn, f"t_{fn}"))
    assert code == 1, out + err
    assert message in out and "regression" in out


@pytest.mark.slow
def test_order_one_claimed_as_two_fails_through_the_plugin_route(capsys, plugin_path):
    code, out, err = _check(capsys, "--plugin", "my_midpoint_plugin", "euler_claimed_second")
    assert code == 1, out + err
    assert "order regressed: claimed 2, measured 1.0" in out
    code, out, _ = _check(capsys, "Plugin-Midpoint")   # registered by the same plugin
    assert code == 0 and "plugin_midpoint: all checks passed" in out


def test_claims_on_the_command_line_override(capsys):
    code, out, _ = _check(capsys, "euler", "--order", "2")
    assert code == 1 and "order regressed: claimed 2, measured 1.0" in out


@pytest.mark.parametrize("args,message", [
    (("eulr",), "unknown sampler 'eulr'; did you mean euler"),
    (("euler", "--order", "two"), "invalid float value: 'two'"),
    (("no_such_mod_xyz:f",), "cannot import 'no_such_mod_xyz:f'"),
    (("euler", "--baseline", "/nonexistent/b.json"), "cannot read baseline '/nonexistent/b.json'"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    code, out, err = run_main(capsys, "check", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_baseline_round_trip_and_a_changed_image_fails(capsys, tmp_path):
    code, out, _ = run_main(capsys, "baseline", "save", "euler", "--dir", str(tmp_path))
    assert code == 0, out
    path = tmp_path / "euler.json"
    code, out, _ = run_main(capsys, "check", "euler", "--baseline", str(path))
    assert code == 0 and "baseline images" in out and "baseline converged step" in out
    doc = json.loads(path.read_text())
    key = next(iter(doc["images"]))
    doc["images"][key] = [v + 10 * IMAGE_TOLERANCE for v in doc["images"][key]]
    doc["nfe"]["8"] += 1
    path.write_text(json.dumps(doc))
    code, out, _ = run_main(capsys, "check", "euler", "--baseline", str(path))
    assert code == 1
    assert "images changed: rmse 0.001 against the baseline" in out
    assert "NFE differs from the baseline" in out


def test_a_baseline_of_another_study_is_refused(tmp_path):
    path = tmp_path / "b.json"
    report = check_sampler("ddim")
    baseline.save(report.measurement, path)
    doc = json.loads(path.read_text())
    doc["study"]["cfg"] = 7.5
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="measured on another check study"):
        baseline.load(path)
    moved = dict(report.measurement.keypoints)
    moved["converged"] = [None for _ in moved["converged"]]
    rows = compare(report.measurement, type(report.measurement)(
        "ddim", report.measurement.nfe, keypoints=moved, images=report.measurement.images))
    bad = [r for r in rows if r.passed is False]
    assert [r.check for r in bad] == ["baseline converged step"]


def test_empirical_order_needs_three_agreeing_slopes():
    # e = n^-2 exactly: three slopes of 2 -> order 2 over the last four step counts
    order, where = empirical_order({n: n ** -2.0 for n in (8, 16, 32, 64)})
    assert abs(order - 2.0) < 1e-9 and where == "steps 8-64"
    order, why = empirical_order({8: 1e-2, 16: 5e-3, 32: 1e-3, 64: 9e-4})
    assert order is None and why.startswith("pre-asymptotic")
    # two agreeing slopes are too few
    order, why = empirical_order({n: n ** -2.0 for n in (16, 32, 64)})
    assert order is None


def _stored(name: str) -> dict[int, float]:
    doc = json.loads((Path(__file__).parents[2] / "results" / "baselines" / f"{name}.json").read_text())
    return {int(k): v for k, v in doc["errors"].items()}


@pytest.mark.parametrize("name,want", [("heun", 2.04), ("dpm_2", 2.04), ("euler", 1.01),
                                       ("plms", 1.07), ("gradient_estimation", 0.95),
                                       ("ipndm_v_exact", None), ("lms", None)])
def test_stored_check_curves_give_the_measured_orders(name, want):
    """The stored check curves (results/baselines, Karras, steps 4-256): the orders the rule
    gives, each measured and written in results/measured/order_rule.txt (heun's last three
    slopes 2.07, 2.03, 2.02; gradient_estimation's 0.91, 0.96, 0.98, settled by 256 steps;
    ipndm_v_exact's 2.39, 2.19, 2.09 and lms's 0.79, 0.60, 0.38 still drifting)."""
    order, where = empirical_order(_stored(name))
    if want is None:
        assert order is None and where.startswith("pre-asymptotic"), where
    else:
        assert order == pytest.approx(want, abs=0.005) and where == "steps 32-256"


@pytest.mark.parametrize("slopes,claim,away", [
    ((0.84, 0.79, 0.60), 2, True),          # lms: farther from 2 at every doubling
    ((3.68, -0.49, 6.44), 3, True),         # dpm_fast, were order 3 claimed: erratic
    ((2.51, 2.31, 2.16), 2, False),         # ipndm: settling towards 2, pre-asymptotic
    ((0.80, 0.91, 0.96), 1, False),         # gradient_estimation: rising towards 1
    ((2.40, 2.30, 2.20), 2, False),         # within ORDER_TOLERANCE at the last doubling
])
def test_slopes_moving_away_from_a_claim(slopes, claim, away):
    assert moving_away(list(slopes), claim) is away


def test_check_fails_an_order_the_slopes_move_away_from():
    """lms's stored check curve against its claim of order 2: a failed order row (it was
    "not judged", and so passed, before issue 28); heun's passes."""
    for name, spec_order, ok in (("lms", 2.0, False), ("heun", 2.0, True)):
        m = Measurement(name, {}, "exact-zero", _stored(name))
        row = _order_row(resolve_sampler(name).spec, m)
        assert resolve_sampler(name).spec.order == spec_order and row.passed is ok, row
    assert "move away" in _order_row(resolve_sampler("lms").spec,
                                     Measurement("lms", {}, "exact-zero", _stored("lms"))).message


def test_every_builtin_has_a_stored_baseline():
    """results/baselines/ holds one per built-in sampler (regenerate: README)."""
    stored = {p.stem for p in (Path(__file__).parents[2] / "results" / "baselines").glob("*.json")}
    builtin = {n for n, e in SAMPLERS.entries().items() if e.source == "builtin"}
    # the check study runs on the analytic (DDPM-schedule) model; flow-matching schedulers
    # need a flow model (SD3) and are checked against its pipeline in test_diffusers_pipelines
    builtin -= {n for n in builtin if n.startswith("FlowMatch")}
    assert builtin <= stored, sorted(builtin - stored)


@pytest.mark.parametrize("name", ["heun", "ipndm_v_exact", "lms"])
def test_builtins_pass_against_their_stored_baselines(name):
    """Under the one order rule: heun's order is accepted and judged (2.08), ipndm_v_exact's
    is pre-asymptotic and settling towards its claim (not judged), lms's moves away from its
    claim of 2 and FAILS (issue 28); every other check passes against the stored baseline
    (ipndm_v and the deterministic CFG++ samplers claim no limit, as ComfyUI computes them
    they approach none: docs/samplers.md)."""
    path = Path(__file__).parents[2] / "results" / "baselines" / f"{name}.json"
    report = check_sampler(name, baseline.load(path))
    order = next(r for r in report.rows if r.check == "order")
    assert [r.check for r in report.failures()] == (["order"] if name == "lms" else []), \
        report.summary()
    want = {"heun": True, "ipndm_v_exact": None, "lms": False}[name]
    assert order.passed is want and ("pre-asymptotic" in order.measured) is (name != "heun")


def test_baseline_save_all_skips_samplers_for_another_kind_of_model(capsys, tmp_path,
                                                                    monkeypatch):
    """`baseline save all` saves what the check (on the analytic model, a DDPM schedule)
    can measure and skips the flow-matching scheduler with a line; named alone, that
    scheduler is not saved and the exit status says so."""
    import convergence.samplers.spec as registry
    flow = "FlowMatchEulerDiscreteScheduler"
    code, out, _ = run_main(capsys, "baseline", "save", flow, "--dir", str(tmp_path))
    assert code == 1 and f"not saved: {flow}: " in out and "flow-matching model" in out
    monkeypatch.setattr(registry, "available_samplers", lambda: [flow, "euler"])
    code, out, _ = run_main(capsys, "baseline", "save", "all", "--dir", str(tmp_path))
    assert code == 0, out
    assert f"skipped: {flow}: " in out and (tmp_path / "euler.json").exists()
    assert not (tmp_path / f"{flow}.json").exists()
