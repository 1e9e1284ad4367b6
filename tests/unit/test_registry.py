"""The one registry: spellings, suggestions, lazy entries, `_target_`, plugins, and
unknown config keys."""

from __future__ import annotations

import sys

import pytest
from inprocess import run_main

from convergence.core.errors import ConvergenceError
from convergence.core.registries import (
    GUIDE_CLAIMS,
    REFERENCES,
    SAMPLERS,
    SCHEDULES,
    register_claim,
    register_reference,
    register_sampler,
)
from convergence.core.registry import Registry
from convergence.samplers.schedules import canonical_schedule
from convergence.samplers.spec import resolve_sampler


def test_lookup_ignores_case_spaces_and_dashes():
    reg: Registry[int] = Registry("widget")
    reg.register("fast_one", 1, aliases=("Quick",))
    assert reg.get("FAST-ONE") == 1 and reg.get("fast one") == 1 and reg.get("quick") == 1
    with pytest.raises(ConvergenceError, match=r"unknown widget 'fastone2'; did you mean fast_one"):
        reg.get("fastone2")
    with pytest.raises(ConvergenceError, match=r"unknown widget 'zzz'; known: fast_one"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="clashes with 'fast_one'"):
        reg.register("Fast One", 2)


def test_lazy_entry_is_imported_on_first_use():
    reg: Registry[object] = Registry("thing")
    reg.register("sqrt", "math:sqrt")
    assert not reg.entry("sqrt").loaded
    assert reg.get("SQRT")(9.0) == 3.0 and reg.entry("sqrt").loaded
    reg.register("broken", "no_such_module_xyz:f")
    with pytest.raises(ConvergenceError, match="cannot import 'no_such_module_xyz:f'"):
        reg.get("broken")


@pytest.mark.parametrize("name,canonical", [("Karras", "karras"), ("EXPONENTIAL", "exponential"),
                                            ("Native", "native")])
def test_schedule_names_are_case_insensitive(name, canonical):
    assert canonical_schedule(name) == canonical


def test_unknown_schedule_suggests():
    with pytest.raises(ConvergenceError, match=r"unknown schedule 'karas'; did you mean karras"):
        canonical_schedule("karas")


def test_target_node_registers_a_sampler_with_claims_and_options():
    name = SAMPLERS.from_target({"_target_": "k_diffusion.sampling.sample_euler",
                                 "name": "my_euler_churn", "order": 1, "s_churn": 0.0})
    spec = resolve_sampler("MY_EULER_CHURN").spec
    assert name == "my_euler_churn" and spec.order == 1 and spec.family == "plugin"
    assert spec.function().keywords == {"s_churn": 0.0}  # an option bound by Hydra's _partial_


def test_target_cannot_take_a_builtin_name():
    with pytest.raises(ConvergenceError, match="'euler' of _target_ .* already taken"):
        SAMPLERS.from_target({"_target_": "k_diffusion.sampling.sample_heun", "name": "euler"})


@pytest.mark.parametrize("override,message", [
    ("+frobnicate=1", "unknown config key 'frobnicate'"),
    ("+analysis.metrc=rmse", "unknown config key 'analysis.metrc'; did you mean metric"),
    ("plugins=[no_such_plugin_xyz]", "plugin 'no_such_plugin_xyz' cannot be imported"),
    ("samplers=[{_target_:no_such_mod_xyz.f}]", "cannot import 'no_such_mod_xyz.f'"),
])
def test_bad_plugin_input_is_one_line(capsys, tmp_path, override, message):
    code, out, err = run_main(capsys, "run", "study=smoke", override, f"results_dir={tmp_path}",
                              "progress=false")
    assert code == 2 and message in err and "Traceback" not in err + out


def test_plugins_key_imports_modules_before_the_run(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_sched_plugin.py").write_text(
        "from convergence.core.registries import register_schedule\n"
        "from convergence.samplers.schedules import karras\n"
        "register_schedule('my_karras_copy')(karras)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_main(capsys, "run", "study=smoke", "plugins=[my_sched_plugin]",
                              "schedules=[My-Karras-Copy]", "samplers=[euler]", "steps=[4]",
                              f"results_dir={tmp_path}", "progress=false")
    sys.modules.pop("my_sched_plugin", None)
    SCHEDULES.unregister("my_karras_copy")
    assert code == 0, err
    import pandas as pd
    assert set(pd.read_parquet(tmp_path / "smoke" / "cells.parquet").schedule) == {"my_karras_copy"}


def test_metric_and_model_given_as_target_nodes(tmp_path):
    from conftest import make_config

    from convergence.analysis.metrics import get_metric
    from convergence.models import build_model
    cfg = make_config(tmp_path, model={"_target_": "convergence.models.analytic_model",
                                       "name": "my_analytic_factory"},
                      analysis={"metrics": ["rmse", {"_target_": "convergence.analysis.metrics.mse",
                                                     "name": "my_mse", "space": "sample"}]})
    assert cfg.analysis.metrics == ["rmse", "my_mse"] and get_metric("MY_MSE").space == "sample"
    assert cfg.model.name == "my_analytic_factory"
    # the config names a model that is not built in, whatever its object calls itself
    assert build_model(cfg.model, 32, 32).name == "my_analytic_factory"


def test_a_registered_reference_and_claim_are_used_by_the_analysis():
    import pandas as pd

    from convergence.analysis import claims as C
    from convergence.analysis.references import pairs

    def first_cell(df):
        """Every cell against the study's first cell."""
        return [(i, df.index[0]) for i in df.index[1:]]

    def always(inputs):
        return [C.claim_row("Everything converges.", "plugin", "", inputs.cfg, "none", "", "",
                            "", C.HOLDS)]

    register_reference("test_first_cell", first_cell)
    register_claim("test_always", always, quote="Everything converges.", claim_source="plugin")
    try:
        df = pd.DataFrame({"steps": [4, 8, 16]}, index=[10, 11, 12])
        assert pairs(df, "Test-First-Cell") == [(11, 10), (12, 10)]
        empty = pd.DataFrame()
        claims = C.evaluate_claims(empty, empty, empty, metric="rel_rmse", indicative=0.1,
                                   few_steps=8)
        assert claims.claim.iloc[-1] == "Everything converges." and claims.verdict.iloc[-1] == C.HOLDS
    finally:
        REFERENCES.unregister("test_first_cell")
        GUIDE_CLAIMS.unregister("test_always")


def test_lazy_samplers_load_on_first_use_and_run(model32):
    """A lazy "module:attr" sampler loads on first use and runs like the built-in one."""
    import torch

    from convergence.run.plan import Cell
    from convergence.run.runner import sample_batch

    register_sampler("test_lazy_euler", "k_diffusion.sampling:sample_euler", order=1)
    try:
        assert isinstance(resolve_sampler("test_lazy_euler").spec.sampler, str)
        out = {n: sample_batch(model32, [Cell("analytic", "h", "food", "p", 1, n, "karras", 5, 7.5,
                                              32, 32)]).samples
               for n in ("euler", "test_lazy_euler")}
        assert torch.equal(out["euler"], out["test_lazy_euler"])
    finally:
        SAMPLERS.unregister("test_lazy_euler")


def test_a_decorated_function_carries_its_claims_to_other_routes():
    """The decorator records the claims on the function: a ``_target_`` that names the
    same function later gets them without repeating them."""
    def sample_mine(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    register_sampler("test_mine", aliases=("Test Mine",), order=3, nfe_per_step=2)(sample_mine)
    try:
        assert sample_mine.convergence_meta == {"order": 3, "nfe_per_step": 2}
        with pytest.raises(ValueError, match="unknown claim 'ordr'"):
            register_sampler("test_bad", sample_mine, ordr=2)
        spec = resolve_sampler("test mine").spec
        assert (spec.order, spec.nfe_per_step, spec.family) == (3, 2, "plugin")
    finally:
        SAMPLERS.unregister("test_mine")
