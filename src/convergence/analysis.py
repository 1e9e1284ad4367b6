"""``convergence analyze``: distances, key points, convergence rates and the guide's claims.

Reads the study's cells (never re-runs them) and writes to ``results/<study>/``:
distances.parquet (cell x metric x reference), keypoints.csv, rates.csv, claims.csv and, on
the analytic model, limits.csv and calibration.csv. Every number names its reference.
Definitions and thresholds: docs/analysis.md.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pandas as pd
import torch

from convergence import metrics as M
from convergence.atomic import staged_files
from convergence.claims import evaluate_claims
from convergence.config import Config
from convergence.errors import ConvergenceError
from convergence.keypoints import aggregate, curve_points, deterministic_baseline, forward_changes
from convergence.models import build_model
from convergence.plan import expand
from convergence.rates import bootstrap_b, fit_power
from convergence.references import EXACT_LIMITS
from convergence.samplers.registry import resolve_sampler
from convergence.store import Store

GROUP = ["model", "topic", "prompt", "seed", "sampler", "schedule", "cfg"]
META = ["hash", "model", "topic", "prompt", "seed", "sampler", "schedule", "steps", "cfg", "nfe",
        "seconds"]
POINTS = ("indicative", "coherent", "converged")


def noise_estimate(x: np.ndarray) -> np.ndarray:
    """Residual-noise std per image (Immerkaer 1996: |Laplacian-difference| mean), batched.
    Needs no reference: it is what makes coherence independent of the final image."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    b, c, h, w = t.shape
    k = torch.tensor([[1., -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=torch.float64).reshape(1, 1, 3, 3)
    r = torch.nn.functional.conv2d(t.reshape(b * c, 1, h, w), k).abs().reshape(b, -1).mean(1)
    return (r * math.sqrt(math.pi / 2) / 6).numpy()


def _load_cells(cfg: Config, model) -> tuple[Store, pd.DataFrame]:
    store = Store(Store(f"{cfg.results_dir}/{cfg.name}").root)
    planned = expand(cfg, model.name, model.fingerprint())
    df = store.load()
    if df.empty:
        raise ConvergenceError(f"no cells stored in {store.root}; run `convergence run` first "
                               "with the same overrides")
    done = store.done_hashes()  # damaged files count as missing cells
    missing = [c for c in planned if c.hash not in done]
    if missing:
        ex = "; ".join(f"{c.sampler}/{c.schedule}/{c.steps} steps/seed {c.seed}/{c.topic}"
                       for c in missing[:3])
        msg = (f"{len(missing)} of {len(planned)} planned cells are missing from {store.root} "
               f"(e.g. {ex})")
        bad = [c.hash for c in missing if c.hash in store.damaged]
        if bad:
            msg += (f", {len(bad)} of them damaged ({store.describe(bad[0])}: "
                    f"{store.damaged[bad[0]]})")
        if cfg.analysis.on_missing == "warn":
            warnings.warn(msg + "; analysing the cells that are there", stacklevel=2)
            print(f"warning: {msg}; analysing the cells that are there")
        else:
            raise ConvergenceError(msg + "; run `convergence run` with the same overrides, or set "
                                   "analysis.on_missing=warn to analyse what is there")
    want = {c.hash for c in planned} & done
    df = df[df.hash.isin(want)].reset_index(drop=True)
    if df.empty:
        raise ConvergenceError(f"none of the study's planned cells are in {store.root}")
    return store, df


def _pairs(df: pd.DataFrame, ref: str) -> list[tuple[int, int]]:
    """(row, reference row) pairs of ``df`` for a cell reference name."""
    pairs = []
    if ref in ("highest", "next"):
        for _, g in df.groupby(GROUP, sort=False):
            g = g.sort_values("steps")
            idx = list(g.index)
            if ref == "highest":
                pairs += [(i, idx[-1]) for i in idx[:-1]]
            else:
                pairs += list(zip(idx[:-1], idx[1:], strict=False))
        return pairs
    sampler, _, steps = ref.partition("@")
    name = resolve_sampler(sampler).spec.name
    cand = df[df.sampler == name]
    if cand.empty:
        return []
    steps_n = int(cand.steps.max()) if steps == "max" else int(steps)
    cand = cand[cand.steps == steps_n]
    lookup: dict[tuple, dict] = {}
    for i, r in cand.iterrows():
        lookup.setdefault((r.model, r.prompt, r.seed, r.cfg), {})[r.schedule] = i
    for i, r in df.iterrows():
        hit = lookup.get((r.model, r.prompt, r.seed, r.cfg))
        if hit:
            j = hit.get(r.schedule, hit[sorted(hit)[0]])
            if j != i:
                pairs.append((i, j))
    return pairs


def compute_distances(cfg: Config, model, store: Store, df: pd.DataFrame,
                      samples: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """Long table: one row per cell x metric x reference (plus each cell's noise estimate)."""
    a = cfg.analysis
    names, notes = M.available(list(dict.fromkeys([a.metric, *a.metrics])))
    images = np.stack([store.load_image(h) for h in df.hash]) if any(
        M.get_metric(n).space == "image" for n in names) else None
    refs = list(dict.fromkeys(["next", a.reference, *a.references]))
    out = []
    meta = df[META].copy()

    def emit(rows: np.ndarray, ref_name: str, metric: str, values: np.ndarray,
             ref_hash: list[str]) -> None:
        part = meta.iloc[rows].copy()
        part["reference"] = ref_name
        part["ref_hash"] = ref_hash
        part["metric"] = metric
        part["value"] = values
        out.append(part)

    for ref in refs:
        if ref == "exact":
            continue
        pairs = _pairs(df, ref)
        if not pairs:
            notes.append(f"reference {ref!r}: no matching cells in this study")
            continue
        i, j = np.array(pairs).T
        for n in names:
            spec = M.get_metric(n)
            if spec.space == "image" and ref not in a.image_references and ref != "next":
                continue
            if spec.space == "image" and ref == "next" and n != a.metric:
                continue
            x, r = (samples[i], samples[j]) if spec.space == "sample" else (images[i], images[j])
            emit(i, ref, n, M.compute(n, x, r), list(df.hash.iloc[j]))
    if "exact" in refs:
        from convergence.models.analytic import AnalyticModel
        from convergence.references import exact_limits
        if not isinstance(model, AnalyticModel):
            notes.append(f"exact references: model {model.name!r} has no exact solution; skipped")
        else:
            # diffusers schedulers pick their own start (timestep and noise scale): the
            # exact ODE from the cell's schedule would describe another trajectory
            own = df.sampler.map(lambda n: resolve_sampler(n).spec.family != "diffusers").to_numpy()
            lim = exact_limits(model, store, df[own].to_dict("records"), a.exact_rtol)
            it = iter(lim)
            lim = [next(it) if o else {} for o in own]  # aligned with df again
            if not own.all():
                notes.append("exact references: skipped for diffusers-scheduler samplers "
                             "(they choose their own start)")
            for name in ("exact-denoised", "exact-zero", "exact-end"):
                rows = np.array([k for k, d in enumerate(lim) if name in d], dtype=int)
                if len(rows) == 0:
                    continue
                ref = np.stack([lim[k][name] for k in rows]).astype(np.float64)
                for n in names:
                    spec = M.get_metric(n)
                    if spec.space == "sample":
                        emit(rows, name, n, M.compute(n, samples[rows], ref), [""] * len(rows))
                    elif name in a.image_references:
                        img = model.decode(torch.from_numpy(ref))
                        emit(rows, name, n, M.compute(n, images[rows], img), [""] * len(rows))
    emit(np.arange(len(df)), "self", "noise", noise_estimate(samples), [""] * len(df))
    return pd.concat(out, ignore_index=True), notes


def _deterministic(samplers) -> set[str]:
    """Samplers that are ODE solvers (no fresh noise per step), from the registry."""
    out = set()
    for s in samplers:
        try:
            if not resolve_sampler(s).spec.stochastic:
                out.add(s)
        except Exception:  # a sampler name the registry no longer knows: no baseline from it
            pass
    return out


def group_points(cfg: Config, dist: pd.DataFrame) -> pd.DataFrame:
    """Key points per group (one row per group and point). Non-convergence is judged
    against the deterministic samplers of the same prompt/seed/cfg (keypoints.curve_points)."""
    a = cfg.analysis
    lower = M.get_metric(a.metric).lower_is_better
    d = dist[dist.metric == a.metric]
    to_ref = d[d.reference == a.reference].set_index("hash").value
    to_next = d[d.reference == "next"].set_index("hash").value
    noise = dist[dist.metric == "noise"].set_index("hash").value
    cells = dist.drop_duplicates("hash")[META]
    det = _deterministic(cells.sampler.unique())
    curves = []
    for key, g in cells.groupby(GROUP, sort=False):
        g = g.sort_values("steps")
        steps = list(g.steps)
        ch = forward_changes(steps, [to_next.get(h, math.nan) for h in g.hash])
        pair = tuple(steps[-2:]) if len(steps) >= 2 else ()
        curves.append((dict(zip(GROUP, key, strict=False)), g, steps, ch, pair))
    tops: dict[tuple, dict] = {}
    for k, _g, _steps, ch, pair in curves:
        tops.setdefault((k["model"], k["prompt"], k["seed"], k["cfg"]), {})[
            (k["sampler"], k["schedule"])] = (pair, float(ch[-1]) if len(ch) else math.nan)
    base: dict[tuple, float] = {}
    for ctx, t in tops.items():
        flat = {f"{sm}\0{sc}": v for (sm, sc), v in t.items()}
        det_keys = {f"{sm}\0{sc}" for (sm, sc) in t if sm in det}
        for name, v in deterministic_baseline(flat, det_keys).items():
            base[(*ctx, *name.split("\0"))] = v
    rows = []
    for k, g, steps, ch, _pair in curves:
        dd = [to_ref.get(h, math.nan) for h in g.hash]
        nz = [noise.get(h, math.nan) for h in g.hash]
        bl = base.get((k["model"], k["prompt"], k["seed"], k["cfg"], k["sampler"], k["schedule"]))
        p = curve_points(steps, dd, ch, nz, indicative=a.indicative, converged=a.converged,
                         coherent_noise=a.coherent_noise, coherent_change=a.coherent_change,
                         nonconvergence_change=a.nonconvergence_change, baseline_change=bl,
                         lower_is_better=lower)
        by_steps = g.set_index("steps")
        for point in POINTS:
            s = p[point]
            rows.append({**k, "point": point, "steps": s,
                         "nfe": by_steps.nfe.get(s, math.nan) if s else math.nan,
                         "seconds": by_steps.seconds.get(s, math.nan) if s else math.nan,
                         "does_not_converge": p["does_not_converge"], "settled": p["settled"],
                         "top_change": p["top_change"],
                         "baseline_change": math.nan if bl is None else bl,
                         "tail_ratio": p["tail_ratio"]})
    return pd.DataFrame(rows)


def aggregate_points(cfg: Config, gp: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Median and spread over seeds (and prompts) per topic x sampler x schedule x cfg,
    and over all topics as topic "all"."""
    a = cfg.analysis
    thr = {"indicative": a.indicative, "converged": a.converged,
           "coherent": f"noise<={a.coherent_noise};change<={a.coherent_change}"}
    rows = []
    both = pd.concat([gp, gp.assign(topic="all")], ignore_index=True)
    for (topic, sampler, schedule, cfg_scale), g in both.groupby(
            ["topic", "sampler", "schedule", "cfg"], sort=False):
        c = cells[(cells.sampler == sampler) & (cells.schedule == schedule) & (cells.cfg == cfg_scale)]
        per_steps = c.groupby("steps")[["nfe", "seconds"]].median()
        conv_rows = g[g.point == "converged"]
        never = conv_rows.does_not_converge.astype(bool)
        n_never = int(never.sum())
        n_settled = int(conv_rows.settled.astype(bool).sum())
        converges = n_never * 2 <= len(never)
        # three-way, majority of seeds: a sampler that neither settles nor out-moves the ODE
        # solvers within the sweep is "undetermined", not silently counted as converging
        status = ("does not converge" if n_never * 2 > len(never) else
                  "converges" if n_settled * 2 > len(never) else "undetermined")
        base = {"topic": topic, "sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                "metric": a.metric, "reference": a.reference, "converges": converges,
                "status": status}
        for point in POINTS:
            pts = [None if pd.isna(s) else int(s) for s in g[g.point == point].steps]
            agg = aggregate(pts)
            s = agg["median"]
            if not math.isnan(s):
                s = float(min(x for x in per_steps.index if x >= s))
            rows.append({**base, "point": point, "steps": s,
                         "nfe": per_steps.nfe.get(s, math.nan),
                         "seconds": per_steps.seconds.get(s, math.nan),
                         "threshold": thr[point], "n_seeds": agg["n_seeds"],
                         "n_reached": agg["n_reached"], "steps_lo": agg["lo"],
                         "steps_hi": agg["hi"], "spread": agg["hi"] - agg["lo"]})
        rows.append({**base, "point": "does_not_converge", "steps": math.nan, "nfe": math.nan,
                     "seconds": math.nan,
                     "threshold": "change_at_top>max(deterministic samplers' change_at_top, "
                                  f"converged) (absolute {a.nonconvergence_change} without them)",
                     "n_seeds": len(never), "n_reached": n_never, "n_settled": n_settled,
                     "steps_lo": math.nan, "steps_hi": math.nan, "spread": math.nan,
                     "top_change": float(conv_rows.top_change.median()),
                     "baseline_change": float(conv_rows.baseline_change.median()),
                     "tail_ratio": float(conv_rows.tail_ratio.median())})
    return pd.DataFrame(rows)


def compute_rates(cfg: Config, dist: pd.DataFrame) -> pd.DataFrame:
    """Fits of d = a (x^b - x_ref^b) per group, per topic and over all topics."""
    a = cfg.analysis
    rows = []
    refs = [r for r in dist.reference.unique() if r not in ("next", "self")]
    for metric in a.rate_metrics:
        if not M.get_metric(metric).lower_is_better:
            continue
        for ref in refs:
            d = dist[(dist.metric == metric) & (dist.reference == ref)
                     & (dist.steps >= a.rate_min_steps)]
            if d.empty:
                continue
            ref_x = {}
            if ref == "highest":
                hi = dist.drop_duplicates("hash").set_index("hash")
                ref_x = {h: hi.loc[h] for h in d.ref_hash.unique()}
            for xname in ("nfe", "steps"):
                def units(g, xname=xname, ref=ref, ref_x=ref_x):
                    out, xr = [], math.inf
                    for _, u in g.groupby(["prompt", "seed"]):
                        out.append((u[xname].to_numpy(float), u.value.to_numpy(float)))
                        if ref == "highest":
                            xr = float(ref_x[u.ref_hash.iloc[0]][xname])
                    return out, xr
                for (topic, sampler, schedule, cfg_scale), g in d.groupby(
                        ["topic", "sampler", "schedule", "cfg"]):
                    us, xr = units(g)
                    for (_prompt, seed), u in zip(g.groupby(["prompt", "seed"]).groups, us, strict=False):
                        fa, fb = fit_power(u[0], u[1], xr)
                        rows.append({"level": "group", "topic": topic, "seed": seed,
                                     "sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                                     "x": xname, "reference": ref, "metric": metric, "a": fa,
                                     "b": fb, "b_lo": math.nan, "b_hi": math.nan, "n_seeds": 1})
                    fa, fb, lo, hi = bootstrap_b(us, xr, a.bootstrap)
                    rows.append({"level": "topic", "topic": topic, "seed": math.nan,
                                 "sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                                 "x": xname, "reference": ref, "metric": metric, "a": fa, "b": fb,
                                 "b_lo": lo, "b_hi": hi, "n_seeds": len(us)})
                for (sampler, schedule, cfg_scale), g in d.groupby(["sampler", "schedule", "cfg"]):
                    us, xr = units(g)
                    fa, fb, lo, hi = bootstrap_b(us, xr, a.bootstrap)
                    rows.append({"level": "all", "topic": "all", "seed": math.nan,
                                 "sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                                 "x": xname, "reference": ref, "metric": metric, "a": fa, "b": fb,
                                 "b_lo": lo, "b_hi": hi, "n_seeds": len(us)})
    cols = ["level", "topic", "seed", "sampler", "schedule", "cfg", "x", "reference", "metric",
            "a", "b", "b_lo", "b_hi", "n_seeds"]
    r = pd.DataFrame(rows, columns=cols)
    r["order"] = -r.b
    return r


def limits_table(dist: pd.DataFrame, rates: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Which exact limit each sampler approaches: median distance at its highest steps."""
    d = dist[(dist.metric == metric) & dist.reference.str.startswith("exact")]
    if d.empty:
        return pd.DataFrame()
    rows = []
    for (sampler, schedule), g in d.groupby(["sampler", "schedule"]):
        top = g[g.steps == g.steps.max()]
        med = top.groupby("reference").value.median()
        row = {"sampler": sampler, "schedule": schedule, "steps": int(g.steps.max()),
               "metric": metric, "closest": med.idxmin()}
        r = rates[(rates.level == "all") & (rates.sampler == sampler)
                  & (rates.schedule == schedule) & (rates.reference == row["closest"])
                  & (rates.x == "nfe") & (rates.metric == metric)]
        row["order_closest"] = float(r.order.iloc[0]) if len(r) else math.nan
        row["order_closest_lo"] = float(-r.b_hi.iloc[0]) if len(r) else math.nan
        row["order_closest_hi"] = float(-r.b_lo.iloc[0]) if len(r) else math.nan
        for ref, v in med.items():
            row[f"d_{ref}"] = float(v)
            r = rates[(rates.level == "all") & (rates.sampler == sampler)
                      & (rates.schedule == schedule) & (rates.reference == ref)
                      & (rates.x == "nfe") & (rates.metric == metric)]
            row[f"order_{ref}"] = float(r.order.iloc[0]) if len(r) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_table(cfg: Config, model, dist: pd.DataFrame, samples: np.ndarray,
                      df: pd.DataFrame) -> pd.DataFrame:
    """Coherence heuristic vs the analytic model's ground truth, over every cell of the study:
    coherent = Mahalanobis/d to the nearest component <= truth_mahalanobis (near a mode, no
    residual noise) AND one picture holds >= truth_responsibility of the posterior at the
    model's sigma_min (not a blend of two pictures). The configured thresholds come first
    (``configured``), then a grid for context."""
    a = cfg.analysis
    x = torch.from_numpy(samples).to(torch.float64)
    mahal = model.mahalanobis_per_dim(x)[0].numpy()
    uncond = model.encode_prompts(list(df.prompt), list(df.topic)).uncond
    resp = model.responsibilities(x, model.sigma_min, uncond).max(1).values.numpy()
    truth = (mahal <= a.truth_mahalanobis) & (resp >= a.truth_responsibility)
    d = dist[dist.metric == a.metric]
    nxt = d[d.reference == "next"].set_index("hash").value
    noise = dist[dist.metric == "noise"].set_index("hash").value.reindex(df.hash).to_numpy()
    change = np.full(len(df), math.nan)
    for _, g in df.groupby(GROUP):
        g = g.sort_values("steps")
        change[list(g.index)] = forward_changes(list(g.steps), [nxt.get(h, math.nan) for h in g.hash])
    rows = []
    grid = sorted({a.coherent_noise, *np.round(np.quantile(noise, np.linspace(0.05, 0.95, 10)), 4)})
    for tn in grid:
        for tc in sorted({a.coherent_change, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3}):
            pred = (noise <= tn) & (change <= tc)
            tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
            fn, tnn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
            rows.append({"coherent_noise": tn, "coherent_change": tc,
                         "truth_mahalanobis": a.truth_mahalanobis,
                         "truth_responsibility": a.truth_responsibility, "tp": tp, "fp": fp, "fn": fn,
                         "tn": tnn, "accuracy": (tp + tnn) / len(df),
                         "precision": tp / (tp + fp) if tp + fp else math.nan,
                         "recall": tp / (tp + fn) if tp + fn else math.nan,
                         # mean of recall and specificity: robust to the class imbalance
                         "balanced_accuracy": (tp / max(tp + fn, 1) + tnn / max(tnn + fp, 1)) / 2,
                         "configured": tn == a.coherent_noise and tc == a.coherent_change})
    out = pd.DataFrame(rows)
    return pd.concat([out[out.configured], out[~out.configured]], ignore_index=True)


def _write_csv(put, name: str, df: pd.DataFrame) -> None:
    put(name, df.to_csv(index=False).encode())


def analyze_study(cfg: Config) -> dict[str, pd.DataFrame]:
    """Analyse a generated study and write its tables (see the module docstring)."""
    a = cfg.analysis
    if a.on_missing not in ("error", "warn"):
        raise ConvergenceError(f"analysis.on_missing must be 'error' or 'warn', got {a.on_missing!r}")
    if not M.get_metric(a.metric).lower_is_better:
        raise ConvergenceError(f"analysis.metric={a.metric!r} is a similarity (higher is better); "
                               "key points need a distance: rmse, mse or gmsd")
    ref = a.reference
    if ref == "exact":
        raise ConvergenceError("analysis.reference=exact is ambiguous: use exact-denoised, "
                               "exact-zero or exact-end")
    if ref not in ("highest", *EXACT_LIMITS) and "@" not in ref:
        raise ConvergenceError(f"unknown analysis.reference {ref!r}: use highest, exact-denoised, "
                               "exact-zero, exact-end or SAMPLER@STEPS")
    if ref in EXACT_LIMITS and "exact" not in a.references:
        raise ConvergenceError(f"analysis.reference={ref} needs 'exact' in analysis.references")
    model = build_model(cfg.model, cfg.width, cfg.height)
    store, df = _load_cells(cfg, model)
    samples = np.stack([store.load_sample(h) for h in df.hash]).astype(np.float64)
    dist, notes = compute_distances(cfg, model, store, df, samples)
    gp = group_points(cfg, dist)
    kp = aggregate_points(cfg, gp, df)
    rates = compute_rates(cfg, dist)
    lim = limits_table(dist, rates, a.metric) if model.name == "analytic" else pd.DataFrame()
    claims = evaluate_claims(kp, rates, dist, metric=a.metric, indicative=a.indicative,
                             few_steps=a.few_steps, limits=lim)
    out = {"distances": dist, "keypoints": kp, "rates": rates, "claims": claims}
    # all tables replace the previous ones together, and only once every one is computed
    with staged_files(store.root) as put:
        buf = io.BytesIO()
        dist.to_parquet(buf, index=False)
        put("distances.parquet", buf.getvalue())
        _write_csv(put, "keypoints.csv", kp)
        _write_csv(put, "rates.csv", rates)
        _write_csv(put, "claims.csv", claims)
        if model.name == "analytic":
            cal = calibration_table(cfg, model, dist, samples, df)
            _write_csv(put, "calibration.csv", cal)
            out["calibration"] = cal
            c = cal.iloc[0]
            notes.append(f"coherence calibration (configured thresholds vs ground truth): TP={c.tp} "
                         f"FP={c.fp} FN={c.fn} TN={c.tn} precision={c.precision:.3f} "
                         f"recall={c.recall:.3f}")
            if not lim.empty:
                _write_csv(put, "limits.csv", lim)
                out["limits"] = lim
    _print_summary(cfg, store, kp, claims, notes)
    return out


def _print_summary(cfg: Config, store: Store, kp: pd.DataFrame, claims: pd.DataFrame,
                   notes: list[str]) -> None:
    a = cfg.analysis
    for n in notes:
        print(n)
    t = kp[(kp.topic == "all") & kp.point.isin(POINTS)].set_index(
        ["sampler", "schedule", "cfg", "point"]).steps.unstack().reindex(columns=list(POINTS))
    conv = kp[(kp.topic == "all")].groupby(["sampler", "schedule", "cfg"]).status.first()
    t["convergence"] = conv
    print(f"key points (median steps over seeds and topics; {a.metric} vs {a.reference}; "
          f"indicative<={a.indicative}, converged<={a.converged}):")
    print(t.to_string())
    print("guide's claims:")
    for _, r in claims.iterrows():
        print(f"  [{r.verdict}] {r.claim}: {r.value}")
    print(f"wrote {store.root}/distances.parquet, keypoints.csv, rates.csv, claims.csv")
