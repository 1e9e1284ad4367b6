"""Claims: each one is fed synthetic per-seed tables that make it hold, and others that
make it fail or leave it inconclusive; verdicts are paired by seed and carry their counts."""

import math

import pandas as pd
import pytest

from convergence.analysis import claims as C
from convergence.analysis.claims import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    NOT_ON_MODEL,
    PRE_ASYMPTOTIC,
    UNTESTABLE,
)

N = 8  # seeds: DECIDABLE_PAIRS (6) is the fewest that can decide


def seeds_table(points, n=N, topic="food", schedule="discrete", cfg=7.5, settled=True,
                tail=0.1):
    """points: sampler -> a list of n converged/indicative steps (None: never), or one
    number for every seed. settled/tail: per sampler dicts or one value."""
    rows = []
    for s, v in points.items():
        steps = v if isinstance(v, list) else [v] * n
        st = settled.get(s, True) if isinstance(settled, dict) else settled
        tr = tail.get(s, 0.1) if isinstance(tail, dict) else tail
        for i, x in enumerate(steps):
            for point in ("indicative", "converged"):
                rows.append({"prompt": f"p{i // 3}", "seed": i, "schedule": schedule, "cfg": cfg,
                             "sampler": s, "topic": topic, "point": point,
                             "steps": math.nan if x is None else x,
                             "settled": st[i] if isinstance(st, list) else st,
                             "tail_ratio": tr[i] if isinstance(tr, list) else tr})
    return pd.DataFrame(rows)


def verdicts(rows):
    return {r["sampler"]: r["verdict"] for r in rows}


def test_sign_test_and_the_seeds_a_claim_needs():
    assert C.sign_p(6, 0) == pytest.approx(2 * 0.5**6) and C.sign_p(5, 0) == pytest.approx(0.0625)
    assert C.DECIDABLE_PAIRS == 6 and C.sign_p(0, 0) == 1.0


def _decision_chance(untied: int, share: float) -> float:
    """The chance that ``untied`` pairs, each the majority's way with probability ``share``,
    give a sign test below ALPHA that way: summed over every outcome k with sign_p itself
    (not the tail quantile seeds_needed uses)."""
    from scipy.stats import binom
    return sum(binom.pmf(k, untied, share) for k in range(untied + 1)
               if k * 2 > untied and C.sign_p(k, untied - k) < C.ALPHA)


@pytest.mark.parametrize("n_for,n_against,n_ties", [(10, 4, 1), (11, 4, 0), (5, 2, 8),
                                                    (4, 9, 2), (12, 3, 0)])
def test_seeds_needed_is_the_fewest_that_decide_with_80_percent_power(n_for, n_against, n_ties):
    need = C.seeds_needed(n_for, n_against, n_ties)
    untied, total = n_for + n_against, n_for + n_against + n_ties
    share = max(n_for, n_against) / untied
    m = next(j for j in range(C.DECIDABLE_PAIRS, 10_000) if math.ceil(j * total / untied) == need)
    assert _decision_chance(m, share) >= C.POWER
    assert all(_decision_chance(j, share) < C.POWER for j in range(C.DECIDABLE_PAIRS, m))


def test_seeds_needed_at_the_edges():
    assert C.seeds_needed(15, 0, 0) == C.DECIDABLE_PAIRS     # all one way: the fewest
    assert C.seeds_needed(3, 0, 12) == 30                    # 6 untied at 3 untied in 15
    assert math.isnan(C.seeds_needed(0, 0, 15))              # ties only: nothing to plan from
    assert C.seeds_needed(7, 7, 1) == math.inf               # an even split never decides
    assert C.seeds_needed(10, 4, 1) < C.seeds_needed(9, 5, 1)   # a closer split needs more


def dist_rows(values, reference="highest", n=N, cfg=7.5, schedule="discrete"):
    """values: (sampler, steps) -> a list of n distances or one for every seed."""
    rows = []
    for (s, steps), v in values.items():
        for i, x in enumerate(v if isinstance(v, list) else [v] * n):
            rows.append({"metric": "rel_rmse", "reference": reference, "steps": steps,
                         "sampler": s, "value": x, "cfg": cfg, "schedule": schedule,
                         "prompt": f"p{i // 3}", "seed": i})
    return pd.DataFrame(rows)


def own_curve(samplers, d25, d50):
    """Distances to each sampler's own 100-step image at 25 and 50 steps (lists per seed or
    one value), 12 steps far above both."""
    return dist_rows({k: v for s in samplers for k, v in
                      (((s, 12), 1.0), ((s, 25), d25), ((s, 50), d50))})


def test_converge_holds_and_fails_for_a_deterministic_sampler_on_its_own_curve():
    # order 1 on 25, 50, 100: (1/50 - 1/100) / (1/25 - 1/100) = 1/3 of the distance remains
    ok = own_curve(["euler"], 0.3, 0.1)
    assert verdicts(C.claims_converge(ok, "rel_rmse", 0.015, 7.5, "discrete")) == {"euler": HOLDS}
    # a deterministic sampler whose distance does not shrink: it does not converge
    bad = own_curve(["euler"], 0.3, 0.25)
    rows = C.claims_converge(bad, "rel_rmse", 0.015, 7.5, "discrete")
    assert verdicts(rows) == {"euler": CONTRADICTED} and rows[0]["n_against"] == N
    # the same with a converging deterministic sampler in the study: nothing changes
    both = pd.concat([bad, own_curve(["heun"], 0.3, 0.01)])
    assert verdicts(C.claims_converge(both, "rel_rmse", 0.015, 7.5, "discrete")) == {
        "euler": CONTRADICTED, "heun": HOLDS}
    # within `converged` at 50 steps counts as converged, however little it shrank
    done = own_curve(["euler"], 0.012, 0.010)
    assert verdicts(C.claims_converge(done, "rel_rmse", 0.015, 7.5, "discrete")) == {
        "euler": HOLDS}
    half = own_curve(["euler"], 0.3, [0.1, 0.25] * (N // 2))
    assert verdicts(C.claims_converge(half, "rel_rmse", 0.015, 7.5, "discrete")) == {
        "euler": INCONCLUSIVE}


def test_converge_for_an_ancestral_sampler_is_the_exception():
    moving = own_curve(["euler_ancestral"], 0.3, 0.28)
    assert verdicts(C.claims_converge(moving, "rel_rmse", 0.015, 7.5, "discrete")) == {
        "euler_ancestral": HOLDS}
    settles = own_curve(["euler_ancestral"], 0.3, 0.05)
    assert verdicts(C.claims_converge(settles, "rel_rmse", 0.015, 7.5, "discrete")) == {
        "euler_ancestral": CONTRADICTED}
    # a blown-up image a doubling below (rel_rmse 2: dpm_2_ancestral at CFG 7.5) decides nothing
    blown = own_curve(["dpm_2_ancestral"], 2.0, 0.2)
    rows = C.claims_converge(blown, "rel_rmse", 0.015, 7.5, "discrete")
    assert verdicts(rows) == {"dpm_2_ancestral": INCONCLUSIVE} and rows[0]["n_ties"] == N


def test_fewer_steps_paired_by_seed():
    earlier = seeds_table({"heun": 20, "dpm_2": 30, "euler": 50, "lms": 40})
    rows = C.claims_fewer_steps(earlier, 7.5, "discrete", "converged", C.Q_FEWER)
    assert verdicts(rows) == {"heun": HOLDS, "dpm_2": HOLDS}
    assert rows[0]["n_for"] == N and rows[0]["n_against"] == 0
    assert rows[0]["p_value"] == pytest.approx(2 * 0.5**N)
    assert "schedule=discrete" in rows[0]["cells"] and rows[0]["schedule"] == "discrete"
    later = seeds_table({"heun": 100, "euler": 50, "lms": 40})
    assert verdicts(C.claims_fewer_steps(later, 7.5, "discrete", "converged", C.Q_FEWER)) == {
        "heun": CONTRADICTED}


def test_fewer_steps_counts_censored_seeds_and_is_inconclusive_on_few_pairs():
    # issue 28: dpm_2 earlier than euler on 5 seeds, later on 2, 8 never in both: not a
    # "contradicted" from medians of censored values; 5 against 2 decides nothing
    dpm = [20, 20, 30, 30, 40, 100, 100] + [None] * 8
    eul = [30, 30, 40, 40, 50, 50, 50] + [None] * 8
    rows = C.claims_fewer_steps(seeds_table({"dpm_2": dpm, "euler": eul}, n=15), 7.5,
                                "discrete", "converged", C.Q_FEWER)
    r = rows[0]
    assert (r["verdict"], r["n_for"], r["n_against"], r["n_ties"]) == (INCONCLUSIVE, 5, 2, 8)
    # a seed that never converges is later than one that does: that pair counts
    never = seeds_table({"dpm_2": [None] * N, "euler": 50})
    assert verdicts(C.claims_fewer_steps(never, 7.5, "discrete", "converged", C.Q_FEWER)) == {
        "dpm_2": CONTRADICTED}


def test_low_steps_judged_on_every_swept_step_count():
    d = dist_rows({("heun", 4): 500.0, ("heun", 8): 0.1, ("lms", 4): 0.6, ("lms", 8): 0.3,
                   ("dpm_2", 4): 900.0, ("dpm_2", 8): 1.2})
    rows = C.claims_low_steps(d, "rel_rmse", 8, 7.5, "discrete")
    # heun is worse than lms at 4 steps but better at 8: not "not recommended at <= 8"
    assert verdicts(rows) == {"heun": CONTRADICTED, "dpm_2": HOLDS}
    assert "4 steps" in rows[0]["value"] and "8 steps" in rows[0]["value"]


def test_towards_k_uses_the_converged_threshold():
    # issue 28: 0.038 and 0.069 at 100 steps are within `indicative` (0.1), not converged
    d = dist_rows({("ddim", 4): 1.0, ("ddim", 50): 0.2, ("ddim", 100): 0.038,
                   ("plms", 4): 1.0, ("plms", 50): 0.02, ("plms", 100): 0.01}, "heun@max")
    rows = C.claims_towards_k(d, "rel_rmse", 0.015, 7.5, "ddim_uniform")
    assert verdicts(rows) == {"ddim": CONTRADICTED, "plms": HOLDS}
    mixed = dist_rows({("ddim", 50): 0.2, ("ddim", 100): [0.01, 0.05] * (N // 2)}, "heun@max")
    assert verdicts(C.claims_towards_k(mixed, "rel_rmse", 0.015, 7.5, "ddim_uniform")) == {
        "ddim": INCONCLUSIVE}


def people(scene_steps, people_steps, sampler="euler"):
    return pd.concat([seeds_table({sampler: scene_steps}, topic="food"),
                      seeds_table({sampler: people_steps}, topic="people")])


def test_people_later_needs_a_model_with_faces():
    s = people(20, 50)
    rows = C.claims_people_later(s, 7.5, "discrete", ())
    assert verdicts(rows) == {"euler": NOT_ON_MODEL} and "faces" in rows[0]["details"]
    assert verdicts(C.claims_people_later(s, 7.5, "discrete", ("faces",))) == {"euler": HOLDS}
    assert verdicts(C.claims_people_later(people(50, 20), 7.5, "discrete", ("faces",))) == {
        "euler": CONTRADICTED}
    assert verdicts(C.claims_people_later(people([20, 50] * 4, [50, 20] * 4), 7.5, "discrete",
                                          ("faces",))) == {"euler": INCONCLUSIVE}


def limits(orders):
    return pd.DataFrame([{"sampler": s, "closest": True, "limit": "exact-denoised",
                          "order": o if ok else math.nan, "asymptotic": ok, "slopes": "1,2,3",
                          "x_lo": 24, "x_hi": 96, "cfg": 7.5, "schedule": "karras"}
                         for s, (o, ok) in orders.items()])


def test_order_claim_only_from_asymptotic_orders():
    rows = C.claims_order(limits({"euler": (1.0, True), "heun": (2.0, True)}), 7.5, "karras")
    assert verdicts(rows) == {"euler": HOLDS} and rows[0]["source"] == "harness"
    rows = C.claims_order(limits({"euler": (2.5, True), "heun": (2.0, True)}), 7.5, "karras")
    assert verdicts(rows) == {"euler": CONTRADICTED}
    rows = C.claims_order(limits({"euler": (1.6, False), "heun": (2.0, True)}), 7.5, "karras")
    assert verdicts(rows) == {"euler": PRE_ASYMPTOTIC} and "pre-asymptotic" in rows[0]["value"]
    # a gap inside the ±rates.SLOPE_TOL an accepted order is known to: nothing decided
    rows = C.claims_order(limits({"euler": (0.87, True), "heun": (0.95, True)}), 1.0, "karras")
    assert verdicts(rows) == {"euler": INCONCLUSIVE} and "tolerance" in rows[0]["details"]


def test_cfg_scales_and_schedules_are_never_mixed():
    s = pd.concat([seeds_table({"heun": 20, "euler": 50}, cfg=1.0),
                   seeds_table({"heun": 60, "euler": 50}, cfg=7.5),
                   seeds_table({"heun": 60, "euler": 50}, cfg=1.0, schedule="karras")])
    c = C.evaluate_claims(pd.DataFrame(), s, pd.DataFrame(), metric="rel_rmse", indicative=0.1,
                          few_steps=8)
    fewer = c[(c.claim == C.Q_FEWER) & (c.sampler == "heun")]
    got = {(r.cfg, r.schedule): r.verdict for r in fewer.itertuples()}
    assert got == {(1.0, "discrete"): HOLDS, (1.0, "karras"): CONTRADICTED,
                   (7.5, "discrete"): CONTRADICTED}
    assert fewer.cells.str.contains("schedule=karras").sum() == 1


def test_every_claim_degrades_on_empty_or_partial_tables():
    empty = pd.DataFrame()
    c = C.evaluate_claims(empty, empty, empty, metric="rel_rmse", indicative=0.1, few_steps=8)
    assert len(c) == 7 and (c.verdict == UNTESTABLE).all() and (c.details != "").all()
    assert set(c.source) == {"guide", "harness"}
    s = seeds_table({"dpmpp_2m": 20})  # none of the guide's samplers
    c = C.evaluate_claims(empty, s, empty, metric="rel_rmse", indicative=0.1, few_steps=8)
    assert (c.verdict == UNTESTABLE).all() and len(c) == 7


def test_the_report_shows_the_seeds_each_claim_needs(tmp_path):
    """claims.csv's seeds_needed reaches the report's claims table as 'seeds to decide':
    the number, 'no number (even split)' for inf, blank where no comparison decided."""
    from convergence.analysis.tables import columns, conform
    from convergence.report.data import StudyData
    from convergence.report.tables import claims_table

    def row(sampler, n_for, n_against, n_ties):
        c = C.Comparison("euler", n_for, n_against, n_ties)
        return C._row(C.Q_FEWER, "guide", sampler, 7.5, "converged step", "sampler=x",
                      "#a", c.text(), c.verdict(), comparison=c)

    rows = [row("heun", 5, 3, 7), row("dpm_2", 7, 7, 1),
            C._row(C.Q_LATER, "guide", "ddim", 7.5, "m", "", "#a", "", NOT_ON_MODEL)]
    claims = conform("claims", pd.DataFrame(rows, columns=columns("claims")))
    study = StudyData(tmp_path, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), None, claims)
    shown = claims_table(study).shown.set_index("sampler")["seeds to decide"]
    assert shown.to_dict() == {"heun": "235", "dpm_2": "no number (even split)", "ddim": ""}
