"""The interactive viewer on the report page: every cell's image and numbers, browsable.

Static grids cannot show the number behind a cell, flip one sampler through its step
counts or put two samplers side by side (A1111's X/Y-plot users fight 200-megapixel grid
images for this). The page gets one small JSON block (columns of numbers, image paths)
and a few kilobytes of plain JavaScript; the cell images are files in ``report/cells/``
that the browser loads only when they are shown (``loading="lazy"``), so a 5 000-cell
study stays a light page that works from ``file://`` with no server and no network.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
from markupsafe import Markup
from PIL import Image

from convergence.report.data import POINTS, StudyData
from convergence.report.grids import POINT_COLOURS, grid_specs, keypoint_marks
from convergence.report.guide import is_real_model

#: longest side (pixels) of a viewer image; smaller images are linked as stored (exact
#: pixels, drawn without smoothing), larger ones are scaled down once to this size
VIEW_SIZE = 256

#: how a reference is named in the cell's numbers
REF_LABELS = {"highest": "its own highest step count", "next": "the next step count (change)",
              "exact-denoised": "the exact ODE solution (denoised)",
              "exact-zero": "the exact ODE solution at σ=0", "exact-end": "the exact ODE end point"}


def write_cell_images(study: StudyData, out_dir: Path, size: int = VIEW_SIZE) -> dict[str, str]:
    """Put every cell's image under ``out_dir`` (report/cells/); returns hash -> file name.

    Images no larger than ``size`` are hard-linked (copied across file systems): the store
    is content-addressed, so a link is the same picture at no cost. Larger ones (512×512
    from Stable Diffusion) become one JPEG of ``size`` pixels: 5 000 of them stay ~100 MB
    instead of ~2 GB, and the page only loads the ones on screen."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for h, rel_path in zip(study.cells["hash"], study.cells["image"], strict=True):
        src = study.root / rel_path
        with Image.open(src) as im:
            small = max(im.size) <= size
            if small:
                name = f"{h}{src.suffix}"
                _link_or_copy(src, out_dir / name)
            else:
                name = f"{h}.jpg"
                scale = size / max(im.size)
                im.convert("RGB").resize((max(1, round(im.width * scale)),
                                          max(1, round(im.height * scale))), Image.LANCZOS
                                         ).save(out_dir / name, quality=90)
        names[h] = name
    return names


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _num(v) -> float | None:
    """A JSON number with 4 significant digits (the page shows 3), or null."""
    if v is None or pd.isna(v) or not math.isfinite(float(v)):
        return None
    return float(f"{float(v):.4g}")


def _references(study: StudyData) -> list[str]:
    """The report metric's references: the key points' one first, 'next' last."""
    d = study.distances
    refs = set(d.loc[d["metric"] == study.metric, "reference"].dropna().astype(str))
    first = [r for r in (study.reference,) if r in refs]
    return first + sorted(refs - {study.reference, "next"}) + (["next"] if "next" in refs else [])


def viewer_data(study: StudyData, images: dict[str, str], cells_dir: str = "cells") -> dict:
    """Everything the viewer shows, per topic and seed, as plain lists (small JSON).

    A cell is ``[image, nfe, seconds, d_ref1, d_ref2, ...]`` (distances in the order of
    ``refs``; ``"ref"`` where the cell is that reference itself) or ``null`` when not run.
    ``marks`` lists ``[row, column, point]`` frames from :func:`grids.keypoint_marks`, so
    the viewer frames exactly the cells the static grid of the same seed frames."""
    refs = _references(study)
    labels = [REF_LABELS.get(r) or (f"{r[:-4]} at its highest step count" if r.endswith("@max")
                                    else r.replace("@", " at ") + " steps") for r in refs]
    d = study.distances
    d = d[d["metric"] == study.metric]
    values = {(h, r): v for h, r, v in zip(d["hash"], d["reference"].astype(str), d["value"],
                                           strict=True)}
    # a cell that is some group's reference (its own highest step, heun@max) has no
    # distance to it: say so. Being the "next" step count of another cell is not that.
    is_ref = {(h, r) for h, r in zip(d["ref_hash"], d["reference"].astype(str), strict=True)
              if r != "next"} if "ref_hash" in d else set()
    order = {s: i for i, s in enumerate(study.samplers)}
    several_cfg = study.cells["cfg"].nunique() > 1
    topics = []
    by_topic: dict[str, list] = {}
    for spec in grid_specs(study):
        by_topic.setdefault(spec.topic, []).append(spec)
    for topic in study.topics:
        specs = by_topic.get(topic, [])
        if not specs:
            continue
        rows = sorted({r for s in specs for r in s.rows},
                      key=lambda r: (order.get(r[0], len(order)), r[1]))
        steps = sorted({st for s in specs for st in s.steps})
        several_prompts = len({s.prompt for s in specs}) > 1
        prompts = list(dict.fromkeys(s.prompt for s in specs))
        views = []
        for spec in specs:
            by_key = {(r.sampler, r.schedule, int(r.steps)): r for r in spec.cells.itertuples()}
            grid = []
            for sampler, schedule in rows:
                line = []
                for st in steps:
                    c = by_key.get((sampler, schedule, st))
                    if c is None:
                        line.append(None)
                        continue
                    dist = ["ref" if (c.hash, r) in is_ref and (c.hash, r) not in values
                            else _num(values.get((c.hash, r))) for r in refs]
                    line.append([f"{cells_dir}/{images[c.hash]}", int(c.nfe), _num(c.seconds),
                                 *dist])
                grid.append(line)
            marks = [[rows.index((sa, sc)), steps.index(st), p]
                     for (sa, sc, st), ps in keypoint_marks(study, spec).items()
                     if (sa, sc) in rows and st in steps for p in ps]
            label = f"seed {spec.seed}"
            if several_prompts:
                label = f"prompt {prompts.index(spec.prompt) + 1} · " + label
            if several_cfg:
                label += f" · cfg {spec.cfg:g}"
            views.append({"label": label, "seed": spec.seed, "cfg": spec.cfg,
                          "prompt": spec.prompt, "cells": grid, "marks": marks})
        topics.append({"name": str(topic), "steps": steps, "views": views,
                       "rows": [[sa, sc] for sa, sc in rows]})
    real = is_real_model(study)
    return {"metric": study.metric, "refs": refs,
            "refLabels": labels,
            "points": list(POINTS),
            "colours": {p: "rgb({},{},{})".format(*POINT_COLOURS[p]) for p in POINTS},
            "secondsLabel": "s per image" if real else "s (this model on this machine)",
            "topics": topics}


def script_json(data: dict) -> Markup:
    """JSON safe inside ``<script type="application/json">``: '<', '>' and '&' are escaped
    as \\u sequences, so a prompt such as ``</script><script>...`` stays text."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
