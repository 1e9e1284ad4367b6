"""NFE per step and empirical order of every registered sampler, measured by the
`convergence check` study (analytic model, 32x32, CFG 1, Karras schedule, steps 4-256,
against the exact limit of the probability-flow ODE). Writes the README's table.

    .venv/bin/python benchmarks/sampler_table.py [--plugin MODULE] [--out FILE]

An order is printed only where the analysis' one rule accepts it (rates.order_accepted:
the local slopes of the last three doublings and the order fitted over them agree within
rates.SLOPE_TOL), with its step range; otherwise "pre-asymptotic" and the slopes. A
claimed order whose slopes move away from it fails (check.moving_away); "not judged"
marks a row that neither passed nor failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registry import import_plugins
from convergence.samplers.spec import available_samplers
from convergence.tools import check as C

HEAD = ("| sampler | family | NFE claimed | NFE measured | order claimed | order measured "
        "(Karras, vs exact limit) | limit | check |\n|---|---|---|---|---|---|---|---|")


def row(name: str) -> str:
    try:
        report = C.check_sampler(name)
    except ConvergenceError as e:   # e.g. a flow-matching scheduler: the check model is VP
        return f"| {name} | - | - | - | - | not checked: {str(e).split(';')[0]} | - | - |"
    spec, m = report.spec, report.measurement
    by = {r.check: r for r in report.rows}
    nfe = by["nfe"]
    order = by["order"].measured if "order" in by else by["limit"].expected
    limit = m.limit or "-"
    if m.errors:
        top = max(m.errors)
        limit += f" ({m.errors[top]:.1e} at {top})"
    # "pass" never stands for an order that was not judged (issue 28): say which rows were not
    unjudged = [r.check for r in report.rows if r.passed is None and r.check in ("order", "limit")
                and not r.measured.startswith("not measured")]
    verdict = ("pass" if report.passed else "FAIL: " + "; ".join(r.check for r in report.failures()))
    if unjudged:
        verdict += f" ({', '.join(unjudged)} not judged)"
    return (f"| {name} | {spec.family} | {nfe.expected} | {nfe.measured.split(' (')[0]} | "
            f"{C._claimed_order(spec)} | {order} | {limit} | {verdict} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plugin", action="append", default=[])
    ap.add_argument("--out", default="results/measured/sampler_table.md")
    ap.add_argument("--made-by", default=".venv/bin/python benchmarks/sampler_table.py",
                    help="the command written under the table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import_plugins(args.plugin)
    lines = [HEAD]
    for name in available_samplers():
        lines.append(row(name))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\nMade by: `{args.made_by}`\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
