"""The one registry: spellings, suggestions, lazy entries, `_target_`, plugins, and
unknown config keys."""

from __future__ import annotations

import sys

import pytest
from inprocess import run_main

from convergence.errors import ConvergenceError
from convergence.registry import Registry
from convergence.samplers.registry import SAMPLERS, resolve_sampler
from convergence.samplers.schedules import canonical_schedule


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
                                 "name": "my_euler_churn", "order": 1, "s_churn": 0.0},
                                ("order",))
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
        "from convergence.samplers.schedules import register_schedule, karras\n"
        "register_schedule('my_karras_copy')(karras)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_main(capsys, "run", "study=smoke", "plugins=[my_sched_plugin]",
                              "schedules=[My-Karras-Copy]", "samplers=[euler]", "steps=[4]",
                              f"results_dir={tmp_path}", "progress=false")
    sys.modules.pop("my_sched_plugin", None)
    assert code == 0, err
    import pandas as pd
    assert set(pd.read_parquet(tmp_path / "smoke" / "cells.parquet").schedule) == {"my_karras_copy"}


def test_metric_and_model_given_as_target_nodes(tmp_path):
    from conftest import make_config

    from convergence.metrics import get_metric
    from convergence.models import build_model
    cfg = make_config(tmp_path, model={"_target_": "convergence.models._analytic",
                                       "name": "my_analytic_factory"},
                      analysis={"metrics": ["rmse", {"_target_": "convergence.metrics.mse",
                                                     "name": "my_mse", "space": "sample"}]})
    assert cfg.analysis.metrics == ["rmse", "my_mse"] and get_metric("MY_MSE").space == "sample"
    assert cfg.model.name == "my_analytic_factory"
    assert build_model(cfg.model, 32, 32).name == "analytic"
