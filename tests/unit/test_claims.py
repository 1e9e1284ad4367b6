"""Claims verdicts follow the measurements fed to them, both ways, per sampler and CFG scale."""

import math

import pandas as pd

from convergence.analysis import claims as C
from convergence.analysis.claims import CONTRADICTED, HOLDS, PRE_ASYMPTOTIC, UNTESTABLE


def kp(points, topics=("all",), status=None, cfg=7.5):
    """points: sampler -> {point: steps} (a plain number = converged and indicative)."""
    rows = []
    for t in topics:
        for s, v in points.items():
            v = v if isinstance(v, dict) else {"converged": v, "indicative": v}
            for point, steps in v.items():
                rows.append({"topic": t, "sampler": s, "point": point, "steps": steps, "cfg": cfg,
                             "status": (status or {}).get((s, t), "converges")})
    return pd.DataFrame(rows)


def verdicts(rows):
    return {r["sampler"]: r["verdict"] for r in rows}


def test_converge_decided_from_the_status_per_sampler():
    topics = ("anime", "nature", "food", "animals", "people")
    st = {("euler_ancestral", t): "does not converge" for t in topics[1:]}
    st[("euler_ancestral", "anime")] = "undetermined"  # moves no more than the ODE solvers there
    st.update({("euler", t): "converges" for t in topics})
    st[("heun", "people")] = "does not converge"
    k = kp({"euler_ancestral": math.nan, "euler": 50, "heun": 40}, topics, st)
    v = verdicts(C.claims_converge(k, 7.5))
    assert v == {"euler_ancestral": HOLDS, "euler": HOLDS, "heun": CONTRADICTED}
    st[("euler_ancestral", "food")] = "converges"
    assert verdicts(C.claims_converge(kp({"euler_ancestral": 50}, topics, st), 7.5)) == {
        "euler_ancestral": CONTRADICTED}


def test_fewer_steps_per_sampler():
    rows = C.claims_fewer_steps(kp({"heun": 20, "dpm_2": math.nan, "euler": 50, "lms": 40}),
                                7.5, "converged", C.Q_FEWER)
    assert verdicts(rows) == {"heun": HOLDS, "dpm_2": CONTRADICTED}
    assert all("sampler=" in r["cells"] and r["anchor"].startswith("#") for r in rows)


def dist_rows(values, reference="highest", cfg=7.5):
    return pd.DataFrame([{"metric": "rel_rmse", "reference": reference, "steps": n, "sampler": s,
                          "value": v, "cfg": cfg} for (s, n), v in values.items()])


def test_low_steps_judged_on_every_swept_step_count():
    d = dist_rows({("heun", 4): 500.0, ("heun", 8): 0.1, ("lms", 4): 0.6, ("lms", 8): 0.3,
                   ("dpm_2", 4): 900.0, ("dpm_2", 8): 1.2})
    rows = C.claims_low_steps(d, "rel_rmse", 8, 7.5)
    # heun is worse than lms at 4 steps but better at 8: not "not recommended at <= 8"
    assert verdicts(rows) == {"heun": CONTRADICTED, "dpm_2": HOLDS}
    assert "4 steps" in rows[0]["value"] and "8 steps" in rows[0]["value"]


def test_towards_k_samplers():
    d = dist_rows({("ddim", 4): 1.0, ("ddim", 50): 0.2, ("ddim", 100): 0.05,
                   ("plms", 4): 1.0, ("plms", 50): 0.02, ("plms", 100): 0.04}, "heun@max")
    assert verdicts(C.claims_towards_k(d, "rel_rmse", 0.1, 7.5)) == {"ddim": HOLDS,
                                                                      "plms": CONTRADICTED}


def test_people_later_per_sampler():
    seeds = pd.DataFrame([{"topic": t, "sampler": "euler", "point": "converged", "steps": v,
                           "cfg": 7.5} for t, v in (("people", 50), ("animals", math.nan),
                                                    ("food", 20), ("nature", 30))])
    assert verdicts(C.claims_people_later(seeds, 7.5)) == {"euler": HOLDS}
    seeds.loc[seeds.topic == "animals", "steps"] = 40  # people/animals 45 vs nature/food 25
    seeds.loc[seeds.topic == "food", "steps"] = 60  # now 45 vs 45: not later
    assert verdicts(C.claims_people_later(seeds, 7.5)) == {"euler": CONTRADICTED}


def limits(orders):
    return pd.DataFrame([{"sampler": s, "closest": True, "limit": "exact-denoised",
                          "order": o if ok else math.nan, "asymptotic": ok, "slopes": "1,2,3",
                          "x_lo": 24, "x_hi": 96, "cfg": 7.5} for s, (o, ok) in orders.items()])


def test_order_claim_only_from_asymptotic_orders():
    rows = C.claims_order(limits({"euler": (1.0, True), "heun": (2.0, True)}), 7.5)
    assert verdicts(rows) == {"euler": HOLDS} and rows[0]["source"] == "harness"
    rows = C.claims_order(limits({"euler": (2.5, True), "heun": (2.0, True)}), 7.5)
    assert verdicts(rows) == {"euler": CONTRADICTED}
    rows = C.claims_order(limits({"euler": (1.6, False), "heun": (2.0, True)}), 7.5)
    assert verdicts(rows) == {"euler": PRE_ASYMPTOTIC} and "pre-asymptotic" in rows[0]["value"]
    # a gap of 0.08 (euler 0.87, heun 0.95: the discrete schedule at CFG 1 under the former
    # rule) is inside the ±rates.SLOPE_TOL (0.1) an accepted order is known to: nothing decided
    rows = C.claims_order(limits({"euler": (0.87, True), "heun": (0.95, True)}), 1.0)
    assert verdicts(rows) == {"euler": C.UNTESTABLE} and "tolerance" in rows[0]["details"]


def test_cfg_scales_are_never_mixed():
    k = pd.concat([kp({"heun": 20, "euler": 50}, cfg=1.0), kp({"heun": 60, "euler": 50}, cfg=7.5)])
    c = C.evaluate_claims(k, pd.DataFrame(), pd.DataFrame(), metric="rel_rmse", indicative=0.1,
                          few_steps=8)
    fewer = c[(c.claim == C.Q_FEWER) & (c.sampler == "heun")]
    assert dict(zip(fewer.cfg, fewer.verdict, strict=True)) == {1.0: HOLDS, 7.5: CONTRADICTED}
    assert fewer.cells.str.contains("cfg=1").sum() == 1


def test_every_claim_degrades_on_empty_or_partial_tables():
    empty = pd.DataFrame()
    c = C.evaluate_claims(empty, empty, empty, metric="rel_rmse", indicative=0.1, few_steps=8)
    assert len(c) == 7 and (c.verdict == UNTESTABLE).all() and (c.details != "").all()
    assert set(c.source) == {"guide", "harness"}
    k = kp({"dpmpp_2m": 20}, topics=("food", "all"))  # none of the guide's samplers
    c = C.evaluate_claims(k, empty, empty, metric="rel_rmse", indicative=0.1, few_steps=8)
    assert (c.verdict == UNTESTABLE).all() and len(c) == 7
