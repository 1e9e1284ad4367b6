"""The report: labelled grids, distance curves, the guide's TL;DR tables and one
self-contained HTML page under ``results/<study>/report/``.

It only reads the store and the analysis outputs (``convergence analyze``), so it can be
re-rendered in seconds and every number on the page is also in a CSV beside it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from convergence.config.schema import Config, ReportConfig
from convergence.core.atomic import staged_dir
from convergence.core.errors import ConvergenceError
from convergence.report.curves import curve_figure, write_curves
from convergence.report.data import StudyData, load_study
from convergence.report.grids import (
    grid_specs,
    grid_tiles,
    point_measures,
    render_grid,
    write_grids,
)
from convergence.report.guide import batch_recipes, keypoints_guide_layout, speed_vs_guide
from convergence.report.html import render
from convergence.report.tables import (
    _fmt_num,
    _fmt_steps,
    batch_headline,
    batch_workflow,
    cheapest_table,
    claims_table,
    keypoint_tables,
    rates_table,
    speed_table,
)
from convergence.report.variety import variety_table
from convergence.report.viewer import script_json, viewer_data, write_cell_images

__all__ = ["write_report", "build_report", "load_study", "StudyData", "curve_figure",
           "grid_specs", "grid_tiles", "render_grid", "keypoint_tables", "speed_table",
           "cheapest_table", "batch_workflow"]

#: largest width (CSS px) an image is shown at; bigger PNGs are scaled down by the browser
PAGE_WIDTH = 1260


def check_report_config(rc: ReportConfig) -> None:
    """Reject settings that would draw nothing or nonsense, naming the value."""
    if rc.thumbnail < 16:
        raise ConvergenceError(f"report.thumbnail must be >= 16 pixels, got {rc.thumbnail}")
    if rc.viewer_size < 16:
        raise ConvergenceError(f"report.viewer_size must be >= 16 pixels, got {rc.viewer_size}")
    if rc.max_grid_columns < 1 or rc.max_grid_rows < 1:
        raise ConvergenceError("report.max_grid_columns and report.max_grid_rows must be >= 1")
    if rc.batch_candidates < 1 or not 0 <= rc.batch_refined <= rc.batch_candidates:
        raise ConvergenceError(f"batch workflow needs N >= 1 and 0 <= k <= N, got "
                               f"N={rc.batch_candidates}, k={rc.batch_refined}")


def write_report(cfg: Config) -> Path:
    """`convergence report`: render results/<study>/report/index.html; returns its path."""
    return build_report(cfg.study_dir(), cfg.report)


def build_report(root: Path | str, rc: ReportConfig | None = None,
                 out_dir: Path | str | None = None) -> Path:
    """Render the report of the study stored in ``root`` into ``out_dir`` (root/report)."""
    rc = rc or ReportConfig()
    check_report_config(rc)
    study = load_study(root, rc.metric)
    dest = Path(out_dir) if out_dir else study.root / "report"
    # built aside and swapped in whole: a failure leaves the previous report as it was
    with staged_dir(dest) as out:
        _render(study, rc, out)
    return dest / "index.html"


def _render(study: StudyData, rc: ReportConfig, out: Path) -> Path:
    """Write the report's files into the empty folder ``out``."""
    (out / "tables").mkdir(parents=True, exist_ok=True)

    kp_tables = keypoint_tables(study)
    speed = speed_table(study)
    cheapest = cheapest_table(study)
    batch = batch_workflow(study, rc.batch_candidates, rc.batch_refined)
    rates = rates_table(study)
    claims = claims_table(study)
    guide_kp = keypoints_guide_layout(study)
    speed_guide = speed_vs_guide(study)
    recipes = batch_recipes(study, batch, rc.batch_candidates, rc.batch_refined)
    variety = variety_table(study)
    tables = [*kp_tables, speed, cheapest, batch, guide_kp, speed_guide, recipes,
              *(t for t in (rates, claims, variety) if t is not None)]
    for t in tables:
        t.data.to_csv(out / "tables" / f"{t.key}.csv", index=False)
    study.cells.drop(columns=[c for c in ("sample",) if c in study.cells]).to_csv(
        out / "tables" / "cells.csv", index=False)

    curves = [{"label": label, "png": rel(png, out), "svg": rel(svg, out),
               "width": min(PAGE_WIDTH, Image.open(png).width)}
              for label, png, svg in write_curves(study, out / "figures")]
    grids = _grid_context(study, write_grids(study, out / "grids", thumb=rc.thumbnail,
                                             max_columns=rc.max_grid_columns,
                                             max_rows=rc.max_grid_rows, mark=rc.mark_keypoints), out)
    viewer = _viewer_context(study, out, rc)
    page = render(
        name=study.name, title=_title(study), varied=_varied(study),
        description=study.study.get("config", {}).get("description", ""),
        summary=_summary(study), metric=study.metric, reference=study.reference,
        measures=point_measures(study),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        warnings=_warnings(study), claims=claims, cheapest=cheapest, keypoints=kp_tables,
        speed=speed, batch=batch, rates=rates, curves=curves, grids=grids, viewer=viewer,
        guide_kp=guide_kp, speed_guide=speed_guide, recipes=recipes, variety=variety,
        batch_best=_batch_best(batch), marks_note=_marks_note(study), n=rc.batch_candidates, k=rc.batch_refined,
        files=sorted(rel(p, out) for p in out.rglob("*")
                     if p.is_file() and p.name != "index.html" and p.parent.name != "cells"))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _grid_context(study: StudyData, written, out: Path) -> list[dict]:
    """Grids grouped by topic: the first seed shown, the others folded away."""
    by_topic: dict[str, dict] = {}
    for spec, paths in written:
        t = by_topic.setdefault(spec.topic, {"topic": spec.topic, "prompts": [], "first": [],
                                             "more": [], "key": (spec.seed, spec.cfg)})
        if spec.prompt not in t["prompts"]:
            t["prompts"].append(spec.prompt)
        entries = [{"src": rel(p, out), "seed": spec.seed, "cfg": f"{spec.cfg:g}",
                    "width": min(PAGE_WIDTH, Image.open(p).width)} for p in paths]
        (t["first"] if (spec.seed, spec.cfg) == t["key"] else t["more"]).extend(entries)
    return [by_topic[t] for t in study.topics if t in by_topic]


def _viewer_context(study: StudyData, out: Path, rc: ReportConfig) -> dict:
    """The viewer's JSON and legend; its images go to report/cells/."""
    images = write_cell_images(study, out / "cells", rc.viewer_size)
    data = viewer_data(study, images)
    native = int(max(study.cells["width"].max(), study.cells["height"].max()))
    data |= {"thumb": rc.thumbnail, "minThumb": min(rc.thumbnail, 48),
             "view": max(rc.viewer_size, rc.thumbnail),
             "frameWidth": max(2, rc.thumbnail // 32),
             "pixelated": native <= min(rc.viewer_size, rc.thumbnail)}
    return {"json": script_json(data), "colours": data["colours"], "marks_note": _marks_note(study)}


def _marks_note(study: StudyData) -> str:
    """Where the key-point frames come from: each seed's own points when the analysis
    wrote them (keypoints_seed.csv), else the median over seeds."""
    if study.keypoints_seed is not None and not study.keypoints_seed.empty:
        return "each seed's own key points: the frames follow the seed shown"
    return "median over seeds, on the first swept step at or after it"


def _title(study: StudyData) -> str:
    """The study as run: its name, the model(s) and size(s) of its cells (a study file's
    description may name another model than the one the command line chose)."""
    c = study.cells
    if not len(c):
        return f"Convergence report: {study.name}"
    models = ", ".join(sorted(map(str, c["model"].unique())))
    sizes = ", ".join(sorted({f"{int(w)}×{int(h)}" for w, h in zip(c["width"], c["height"],
                                                                      strict=True)}))
    return f"Convergence report: {study.name} · model {models} · {sizes}"


def _varied(study: StudyData) -> str:
    """What the study varies (the axes with more than one value) and what it holds fixed."""
    c = study.cells
    if not len(c):
        return ""
    axes = [("sampler", "samplers"), ("schedule", "schedules"), ("steps", "step counts"),
            ("cfg", "CFG scales"), ("topic", "topics"), ("seed", "seeds")]
    varied, fixed = [], []
    for col, label in axes:
        values = sorted(c[col].unique(), key=lambda v: (isinstance(v, str), v))
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:8])
        if len(values) > 8:
            shown += ", …"
        if len(values) > 1:
            varied.append(f"{len(values)} {label} ({shown})")
        else:
            fixed.append(f"{col} {shown}")
    return "varies " + ("; ".join(varied) or "nothing") + (" · fixed: " + ", ".join(fixed)
                                                           if fixed else "")


def _summary(study: StudyData) -> str:
    c = study.cells
    steps = ", ".join(str(s) for s in sorted(c["steps"].unique()))
    model = str(c["model"].iloc[0]) if "model" in c and len(c) else "?"
    return (f"{len(c)} cells · model {model} · {c['topic'].nunique()} topics · "
            f"{c['seed'].nunique()} seeds · {c['sampler'].nunique()} samplers · steps {steps} · "
            f"cfg {', '.join(f'{v:g}' for v in sorted(c['cfg'].unique()))} · "
            f"{int(c['width'].iloc[0])}×{int(c['height'].iloc[0])} px")


def _warnings(study: StudyData) -> list[str]:
    w = list(study.notes)
    if study.stale:
        w.append(f"{', '.join(study.stale)} are older than cells.parquet: the store changed after "
                 "the analysis; run `convergence analyze` again for up-to-date key points.")
    missing = [n for n, v in (("rates.csv", study.rates), ("claims.csv", study.claims)) if v is None]
    if missing:
        w.append(f"{', '.join(missing)} not found: those sections are left out.")
    return w


def _batch_best(batch) -> list[dict]:
    best = batch_headline(batch)
    return [{"topic": "all topics" if r.topic == "all" else r.topic, "sampler": r.sampler, "ind": _fmt_steps(r.indicative_steps),
             "conv": _fmt_steps(r.converged_steps), "A": f"{r.A_nfe:,.0f}",
             "B": f"{r.B_nfe:,.0f}", "sp_s": _fmt_num(r.speedup_seconds, 2) + "×",
             "sp_n": _fmt_num(r.speedup_nfe, 2) + "×"} for r in best.itertuples()]
