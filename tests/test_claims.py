"""Claims verdicts follow the measurements fed to them, both ways."""

import math

import pandas as pd

from convergence.claims import (
    CONTRADICTED,
    HOLDS,
    UNTESTABLE,
    claim_ancestral_never,
    claim_first_order,
    claim_heun_dpm2_fewer_steps,
    claim_people_later,
    claim_poor_at_few_steps,
)


def rates(orders):
    return pd.DataFrame([{"level": "all", "topic": "all", "x": "nfe", "reference": "highest",
                          "sampler": s, "b": -o} for s, o in orders.items()])


def kp(conv, topics=("all",), converges=None):
    rows = []
    for t in topics:
        for s, v in conv.items():
            for point in ("converged", "indicative"):
                rows.append({"topic": t, "sampler": s, "point": point, "steps": v,
                             "converges": (converges or {}).get(s, True)})
    return pd.DataFrame(rows)


def test_first_order():
    assert claim_first_order(rates({"euler": 1.0, "heun": 2.0}))["verdict"] == HOLDS
    assert claim_first_order(rates({"euler": 2.5, "heun": 2.0}))["verdict"] == CONTRADICTED
    assert claim_first_order(rates({"heun": 2.0}))["verdict"] == UNTESTABLE


def test_heun_dpm2_fewer_steps():
    assert claim_heun_dpm2_fewer_steps(kp({"heun": 20, "dpm_2": 30, "euler": 50}))["verdict"] == HOLDS
    assert claim_heun_dpm2_fewer_steps(
        kp({"heun": 20, "dpm_2": math.nan, "euler": 50}))["verdict"] == CONTRADICTED


def test_poor_at_few_steps():
    def dist(h, d, lm):
        return pd.DataFrame([{"metric": "rmse", "reference": "highest", "steps": 8, "sampler": s,
                              "value": v} for s, v in (("heun", h), ("dpm_2", d), ("lms", lm))])
    assert claim_poor_at_few_steps(dist(0.3, 0.4, 0.1), "rmse", 8)["verdict"] == HOLDS
    assert claim_poor_at_few_steps(dist(0.05, 0.4, 0.1), "rmse", 8)["verdict"] == CONTRADICTED


def test_ancestral_never():
    k = kp({"euler_ancestral": math.nan}, topics=("food", "people"),
           converges={"euler_ancestral": False})
    assert claim_ancestral_never(k)["verdict"] == HOLDS
    k2 = kp({"euler_ancestral": 50}, topics=("food", "people"))
    assert claim_ancestral_never(k2)["verdict"] == CONTRADICTED


def test_people_later():
    k = pd.concat([kp({"euler": 50}, topics=("people",)), kp({"euler": 20}, topics=("food",))])
    assert claim_people_later(k)["verdict"] == HOLDS
    k = pd.concat([kp({"euler": 10}, topics=("people",)), kp({"euler": 20}, topics=("food",))])
    assert claim_people_later(k)["verdict"] == CONTRADICTED


def test_every_claim_degrades_on_empty_or_partial_tables():
    from convergence.claims import evaluate_claims
    empty = pd.DataFrame()
    c = evaluate_claims(empty, empty, empty, metric="rmse", indicative=0.05, few_steps=8)
    assert (c.verdict == UNTESTABLE).all() and (c.details != "").all()
    # a study without the guide's samplers (only dpmpp_2m), one topic
    k = kp({"dpmpp_2m": 20}, topics=("food", "all"))
    r = rates({"dpmpp_2m": 2.0})
    d = pd.DataFrame([{"metric": "rmse", "reference": "highest", "steps": 8, "sampler": "dpmpp_2m",
                       "value": 0.1}])
    c = evaluate_claims(k, r, d, metric="rmse", indicative=0.05, few_steps=8)
    assert (c.verdict == UNTESTABLE).all()


def test_first_order_uses_exact_limit_orders():
    lim = pd.DataFrame([{"sampler": "euler", "closest": "exact-denoised", "order_closest": 1.0},
                        {"sampler": "heun", "closest": "exact-denoised", "order_closest": 2.0}])
    bad = rates({"euler": 3.0, "heun": 1.0})  # badly conditioned self-reference fits
    row = claim_first_order(bad, lim)
    assert row["verdict"] == HOLDS and "exact" in row["measurement"]
    lim.loc[0, "order_closest"] = 2.5
    assert claim_first_order(bad, lim)["verdict"] == CONTRADICTED


def test_ancestral_undetermined_is_not_a_pass():
    k = kp({"euler_ancestral": math.nan}, topics=("food", "people"))
    k["status"] = ["does not converge"] * 2 + ["undetermined"] * 2
    assert claim_ancestral_never(k)["verdict"] == UNTESTABLE
    k["status"] = ["does not converge"] * 2 + ["converges"] * 2
    assert claim_ancestral_never(k)["verdict"] == CONTRADICTED
