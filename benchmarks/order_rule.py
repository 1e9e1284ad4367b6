"""Which rule accepts an order of accuracy: candidate rules measured on recorded curves.

An order is a measurement only where the local slopes of successive doublings agree
(issue 14). This compares candidate rules on

- the check study's Karras runs of every deterministic built-in sampler (analytic model
  32x32, CFG 1, the check ladder (4-256), rmse to the exact limit; stored in
  results/baselines/*.json
  by `convergence baseline save all`), against each sampler's claimed (theoretical) order;
- the issue's euler-on-discrete curve (local slopes 2.0, 3.2, 5.6, 0.37, 0.64, 1.20, 0.97);
- optionally the studies given with --study (their distances.parquet: the orders studies
  made by the loop in README's "Measured on the analytic model", and the default study,
  `convergence all study=default threads=1`), counting the curves each rule accepts.

    .venv/bin/python benchmarks/order_rule.py [--study RESULTS/NAME ...] [--out FILE]

Candidates: "fit" rules accept when each of the last W slopes lies within +-tol of the
order fitted over their span (the analysis' rule before issue 14: W=3, 0.3); "agree" rules
when the last W slopes and that fitted order agree within tol (max - min) less the seed
margin of rates.slope_tolerance (W=3, rates.SLOPE_TOL is rates.order_accepted since issue
28; W=2, 0.1 before it). Every rule also needs an order of at least rates.MIN_ORDER.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from convergence.analysis import rates as R
from convergence.samplers.spec import resolve_sampler
from convergence.tools.check import ORDER_TOLERANCE

BASELINES = Path(__file__).parents[1] / "results" / "baselines"
ISSUE_SLOPES = (2.0, 3.2, 5.6, 0.37, 0.64, 1.20, 0.97)
#: issue 28's euler on `discrete`, seed 1: drifting by 0.1 per doubling
ISSUE28_SLOPES = (0.91, 0.81, 0.72)
#: (name, window, tol, kind)
CANDIDATES = (("fit3 +-0.3 (issue 14 before)", 3, 0.3, "fit"),
              ("fit3 +-0.1", 3, 0.1, "fit"),
              ("agree2 0.1 (issue 28 before)", 2, 0.1, "agree"),
              ("agree3 0.1", 3, 0.1, "agree"),
              ("agree3 0.2", 3, 0.2, "agree"),
              (f"agree3 {R.SLOPE_TOL:g} (chosen)", 3, R.SLOPE_TOL, "agree"))


def judge(units, x_ref: float, window: int, tol: float, kind: str) -> float | None:
    """The order a candidate accepts on a curve (median over units), or None."""
    if kind == "agree":
        fit = R.asymptotic_fit(units, x_ref, window=window, tol=tol)
        return fit["order"] if fit["asymptotic"] else None
    fit = R.asymptotic_fit(units, x_ref, window=window, tol=math.inf)   # the span's fit
    order = fit["order_fit"]
    sl = np.array([float(v) for v in fit["slopes"].split(",") if v], dtype=np.float64)
    last = sl[-window:]   # the last three (at least two), as the analysis had it
    ok = (len(sl) >= 2 and np.isfinite(order) and order >= R.MIN_ORDER
          and np.all(np.abs(last - order) <= tol + 1e-12))
    return float(order) if ok else None


def check_curves() -> list[tuple[str, float | None, np.ndarray, np.ndarray]]:
    """(sampler, claimed order, steps, errors) of every stored baseline with errors."""
    out = []
    for path in sorted(BASELINES.glob("*.json")):
        doc = json.loads(path.read_text())
        if not doc.get("errors"):
            continue
        n = sorted(int(k) for k in doc["errors"])
        spec = resolve_sampler(doc["sampler"]).spec
        if spec.nfe_per_step is None:   # adaptive: its tolerance, not the steps, sets the error
            continue
        out.append((doc["sampler"], spec.order, np.array(n, dtype=np.float64),
                    np.array([doc["errors"][str(k)] for k in n])))
    return out


def study_curves(folder: Path):
    """((topic or "all", sampler, schedule, cfg, reference), units, x_ref) of a study's rate
    curves (rate metric against NFE, seeds pooled per topic and over all topics, as
    compute_rates fits them, with the study's analysis.rate_min_steps)."""
    d = pd.read_parquet(folder / "distances.parquet")
    cells = pd.read_parquet(folder / "cells.parquet").set_index("hash")
    cfg = json.loads((folder / "study.json").read_text())
    a = cfg["config"]["analysis"]
    d = d[(d.metric == a.get("rate_metrics", ["rmse"])[0])
          & (d.steps >= a.get("rate_min_steps", 0))
          & ~d.reference.isin(["next", "self"]) & ~d.reference.str.contains("@")]
    d = pd.concat([d.assign(level="all"), d.assign(level=d.topic)])
    for (level, sampler, schedule, cfg_scale, ref), g in d.groupby(
            ["level", "sampler", "schedule", "cfg", "reference"]):
        units = [(u.nfe.to_numpy(float), u.value.to_numpy(float)) for _, u in g.groupby(["prompt", "seed"])]
        x_ref = float(cells.loc[g.ref_hash.iloc[0], "nfe"]) if ref == "highest" else math.inf
        yield (level, sampler, schedule, cfg_scale, ref), units, x_ref


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", action="append", default=[], type=Path)
    ap.add_argument("--out", default="results/measured/order_rule.txt")
    ap.add_argument("--made-by", default="", help="the command that ran this one (a line)")
    args = ap.parse_args()
    names = [c[0] for c in CANDIDATES]
    curves = list(check_curves())
    ladder = sorted({int(k) for _, _, n, _ in curves for k in n})
    lo, hi = ladder[0], ladder[-1]
    lines = [f"check study (Karras, CFG 1, steps {lo}-{hi}, vs exact limit): order each rule "
             "accepts",
             f"{'sampler':28s} {'claim':>5s}  "
             f"{f'local slopes {lo}->{ladder[1]} ... {ladder[-2]}->{hi}':40s} " + " | ".join(names)]
    stats = {c: {"accepted": [], "refused": [], "off": []} for c in names}
    for sampler, claim, n, e in curves:
        _, sl = R.local_slopes(n, e)
        got = [judge([(n, e)], math.inf, w, t, k) for _, w, t, k in CANDIDATES]
        lines.append(f"{sampler:28s} {fmt(claim):>5s}  {' '.join(f'{v:5.2f}' for v in sl):40s} "
                     + " | ".join(f"{fmt(v):>{len(c)}s}" for c, v in zip(names, got, strict=True)))
        for c, v in zip(names, got, strict=True):
            stats[c]["refused" if v is None else "accepted"].append(sampler)
            if v is not None and claim is not None:
                stats[c]["off"].append((abs(v - claim), sampler, v))
    lines += ["", "per rule: accepted / refused; largest |accepted - claimed order|; accepted "
              f"orders more than the check's ORDER_TOLERANCE {ORDER_TOLERANCE} off the claim "
              "(`convergence check` would fail them)"]
    for c in names:
        off = sorted(stats[c]["off"], reverse=True)
        bad = [f"{s} {v:.2f}" for d, s, v in off if d > ORDER_TOLERANCE]
        lines.append(f"  {c:30s} {len(stats[c]['accepted']):2d} / {len(stats[c]['refused']):2d}; "
                     f"max off {off[0][0]:.2f} ({off[0][1]}); fail: {', '.join(bad) or 'none'}")
    for issue, sl in (("14", ISSUE_SLOPES), ("28", ISSUE28_SLOPES)):
        x = 6.0 * 2.0 ** np.arange(len(sl) + 1)
        d = 1e-2 * np.cumprod([1.0] + [2**-s for s in sl])
        lines += ["", f"issue {issue}'s euler-on-discrete curve, slopes {', '.join(map(str, sl))}:"]
        lines += [f"  {c:30s} {fmt(judge([(x, d)], math.inf, w, t, k))}" for c, w, t, k in CANDIDATES]
    for folder in args.study:
        rows = [(key, [judge(u, xr, w, t, k) for _, w, t, k in CANDIDATES])
                for key, u, xr in study_curves(folder)]
        c = json.loads((folder / "study.json").read_text())["config"]
        lines += ["", f"study {folder.name} ({', '.join(c['samplers'])}; {', '.join(c['schedules'])}; "
                  f"steps {c['steps']}; cfg {c['cfg']}; {c['width']}x{c['height']}; "
                  f"{len(c['prompts'])} prompts x {c['seeds_per_prompt']} seeds)"]
        lines += [f"study {folder.name}: orders accepted (against NFE, seeds pooled per topic "
                  f"and over all topics), {sum(any(v is not None for v in r) for _, r in rows)} of "
                  f"{len(rows)} curves accepted by some rule"]
        for (level, sampler, schedule, cfg_scale, ref), got in rows:
            if any(v is not None for v in got):
                lines.append(f"  {level:8s} {sampler:16s} {schedule:12s} cfg {cfg_scale:g} {ref:15s} "
                             + " | ".join(f"{fmt(v):>5s}" for v in got))
        lines.append("  accepted per rule: " + ", ".join(
            f"{c.split(' (')[0]} {sum(r[i] is not None for _, r in rows)}" for i, c in enumerate(names)))
    cmd = " ".join(["benchmarks/order_rule.py", *(f"--study {s}" for s in args.study)])
    made = f"# made by: {args.made_by}\n" if args.made_by else ""
    text = made + f"# .venv/bin/python {cmd}\n" + "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
