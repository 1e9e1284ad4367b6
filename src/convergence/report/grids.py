"""Labelled sampler × steps image grids, like the guide's figures.

Drawn with PIL (not matplotlib) so a grid is exactly ``columns × thumbnail`` pixels: a
sweep of 512×512 images becomes a readable page-width figure instead of a 100 MB PNG.
Sweeps wider or taller than the configured limits are split into several tiles.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from convergence.report.data import POINTS, StudyData

#: Okabe–Ito colours: distinguishable with the common colour-vision deficiencies
POINT_COLOURS = {"indicative": (230, 159, 0), "coherent": (86, 180, 233),
                 "converged": (0, 158, 115)}
BG = (255, 255, 255)
FG = (20, 20, 20)
MUTED = (110, 110, 110)
NO_CONV = (170, 30, 30)


@lru_cache(maxsize=16)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu from matplotlib's bundled fonts: present wherever the package installs."""
    from matplotlib import font_manager
    path = font_manager.findfont(font_manager.FontProperties(
        family="DejaVu Sans", weight="bold" if bold else "normal"), fallback_to_default=True)
    return ImageFont.truetype(path, size)


def _text_width(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.FreeTypeFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=f)
    return int(right - left)


def fit_lines(text: str, width_px: int, f: ImageFont.FreeTypeFont, max_lines: int = 3) -> list[str]:
    """Wrap ``text`` to ``width_px`` and cut it to ``max_lines`` with an ellipsis.

    The guide's prompts run to 200+ characters; the full prompt stays in the HTML."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    words = " ".join(str(text).split())
    avg = max(1.0, _text_width(probe, "abcdefghijklmnopqrstuvwxyz", f) / 26)
    chars = max(8, int(width_px / avg))
    while True:
        lines = textwrap.wrap(words, chars) or [""]
        cut = len(lines) > max_lines
        lines = lines[:max_lines]
        if cut:
            lines[-1] = lines[-1][: max(0, chars - 1)].rstrip() + "…"
        if chars <= 8 or all(_text_width(probe, ln, f) <= width_px for ln in lines):
            return lines
        chars -= 2


def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Downscale large images smoothly; enlarge small ones by whole pixels only, so a
    64×64 cell stays an honest 64×64 (no invented detail)."""
    w, h = img.size
    if max(w, h) > size:
        scale = size / max(w, h)
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    k = max(1, size // max(w, h))
    return img.resize((w * k, h * k), Image.NEAREST) if k > 1 else img


@dataclass
class GridSpec:
    """One grid: the cells of one (topic, prompt, seed, cfg), rows × columns."""

    topic: str
    prompt: str
    seed: int
    cfg: float
    rows: list[tuple[str, str]]       # (sampler, schedule)
    steps: list[int]
    cells: pd.DataFrame


def grid_specs(study: StudyData) -> list[GridSpec]:
    """Every grid the study has: one per topic, prompt, seed and CFG scale."""
    df = study.cells
    out = []
    order = {s: i for i, s in enumerate(study.samplers)}
    for topic in study.topics:
        sub = df[df["topic"] == topic]
        for (prompt, seed, cfg), g in sub.groupby(["prompt", "seed", "cfg"], sort=True):
            rows = sorted({(r.sampler, r.schedule) for r in g.itertuples()},
                          key=lambda r: (order.get(r[0], len(order)), r[1]))
            out.append(GridSpec(topic, str(prompt), int(seed), float(cfg), rows,
                                sorted(int(s) for s in g["steps"].unique()), g))
    return out


def keypoint_marks(study: StudyData, spec: GridSpec) -> dict[tuple[str, str, int], list[str]]:
    """(sampler, schedule, steps) -> key points to frame on that cell: those of the seed
    the grid shows (keypoints_seed.csv). Only an older analysis without per-seed points
    falls back to the median over seeds, framed on the first swept step at or above it."""
    per_seed = study.keypoints_seed is not None and not study.keypoints_seed.empty
    kp = study.keypoints_seed if per_seed else study.keypoints
    if kp is None or kp.empty:
        return {}
    kp = kp[kp["topic"] == spec.topic]
    if per_seed:
        kp = kp[(kp["prompt"] == spec.prompt) & (kp["seed"].astype(int) == spec.seed)]
    if "cfg" in kp:
        kp = kp[(kp["cfg"].astype(float) - spec.cfg).abs() < 1e-9]
    marks: dict[tuple[str, str, int], list[str]] = {}
    for r in kp.itertuples():
        if pd.isna(r.steps) or r.point not in POINT_COLOURS:
            continue
        at = [s for s in spec.steps if s >= float(r.steps) - 1e-9]
        if at:
            marks.setdefault((r.sampler, r.schedule, at[0]), []).append(r.point)
    return marks


def point_measures(study: StudyData) -> str:
    """Which measure decided each point ("key points by lpips (indicative), ...")."""
    kp = study.keypoints
    if kp.empty or "metric" not in kp:
        return ""
    m = kp.drop_duplicates("point").set_index("point").metric
    return "key points by " + ", ".join(f"{m[p]} ({p})" for p in POINTS if p in m)


def _marks_label(study: StudyData) -> str:
    per_seed = study.keypoints_seed is not None and not study.keypoints_seed.empty
    return "(this seed)" if per_seed else "(median over seeds)"


def non_converging(study: StudyData, spec: GridSpec) -> set[tuple[str, str]]:
    """Rows whose analysis says 'does not converge' (ancestral / SDE samplers)."""
    kp = study.keypoints
    if kp.empty or "converges" not in kp:
        return set()
    kp = kp[(kp["topic"] == spec.topic) & (kp["point"] == "converged")]
    return {(r.sampler, r.schedule) for r in kp.itertuples()
            if str(r.converges).lower() in ("false", "0", "0.0")}


def render_grid(study: StudyData, spec: GridSpec, *, thumb: int = 128, mark: bool = True,
                columns: slice | None = None, rows: slice | None = None,
                part: str = "") -> Image.Image:
    """Draw one grid (or one tile of it) as an RGB image."""
    steps = spec.steps[columns] if columns else spec.steps
    row_keys = spec.rows[rows] if rows else spec.rows
    marks = keypoint_marks(study, spec) if mark else {}
    no_conv = non_converging(study, spec)
    label_f = font(max(14, thumb // 7), bold=True)
    small_f = font(max(12, thumb // 9))
    title_f = font(max(16, thumb // 6), bold=True)
    # frames hug the thumbnail and are thinner than the padding, so frames on
    # neighbouring cells stay apart instead of merging into one band
    pad = max(6, thumb // 14)
    frame = max(3, pad * 5 // 9)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_width(probe, s, label_f) for s, _ in row_keys]
                  + [_text_width(probe, sch, small_f) for _, sch in row_keys]
                  + [_text_width(probe, "does not converge", small_f) if no_conv else 60]) + 3 * pad
    cell = thumb + 2 * pad
    # rows are at least as tall as their label block (sampler, schedule, "does not converge")
    row_h = max(cell, label_f.size + 2 * (small_f.size + 2) + 2 * pad)
    grid_w = label_w + len(steps) * cell
    legend_w = (sum(_text_width(probe, p, small_f) + small_f.size + 4 * pad for p in POINTS)
                + _text_width(probe, _marks_label(study), small_f) + 2 * pad)
    width = max(grid_w, 480, legend_w if marks else 0)
    title_lines = fit_lines(spec.prompt, width - 2 * pad, title_f, max_lines=3)
    line_h = title_f.size + pad
    sub = " · ".join(p for p in (f"topic: {spec.topic}", f"seed {spec.seed}",
                                 f"cfg {spec.cfg:g}", point_measures(study), part) if p)
    sub_lines = fit_lines(sub, width - 2 * pad, small_f, max_lines=2)
    head_h = pad + len(title_lines) * line_h + len(sub_lines) * (small_f.size + 3) + 2 * pad
    colhead_h = label_f.size + 2 * pad
    legend_h = (small_f.size + 3 * pad) if marks or no_conv else 0
    height = head_h + colhead_h + len(row_keys) * row_h + legend_h + pad
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    y = pad
    for ln in title_lines:
        d.text((pad, y), ln, fill=FG, font=title_f)
        y += line_h
    for ln in sub_lines:
        d.text((pad, y), ln, fill=MUTED, font=small_f)
        y += small_f.size + 3
    y = head_h
    d.text((pad, y + pad), "steps →", fill=MUTED, font=small_f)
    for j, s in enumerate(steps):
        t = str(s)
        x0 = label_w + j * cell + (cell - _text_width(d, t, label_f)) // 2
        d.text((x0, y + pad // 2), t, fill=FG, font=label_f)
    y0 = head_h + colhead_h
    by_key = {(r.sampler, r.schedule, int(r.steps)): r for r in spec.cells.itertuples()}
    for i, (sampler, schedule) in enumerate(row_keys):
        ry = y0 + i * row_h
        lines = [schedule] + (["does not converge"] if (sampler, schedule) in no_conv else [])
        ty = ry + (row_h - label_f.size - len(lines) * (small_f.size + 2)) // 2
        d.text((pad, ty), sampler, fill=FG, font=label_f)
        for n, note in enumerate(lines):
            d.text((pad, ty + label_f.size + 2 + n * (small_f.size + 2)), note,
                   fill=NO_CONV if n else MUTED, font=small_f)
        for j, s in enumerate(steps):
            cx, cy = label_w + j * cell + pad, ry + (row_h - thumb) // 2
            r = by_key.get((sampler, schedule, s))
            if r is None:
                d.rectangle([cx, cy, cx + thumb - 1, cy + thumb - 1], outline=MUTED)
                d.text((cx + pad, cy + thumb // 2 - small_f.size // 2), "not run",
                       fill=MUTED, font=small_f)
                continue
            with Image.open(study.root / r.image) as im:
                t = thumbnail(im.convert("RGB"), thumb)
            img.paste(t, (cx + (thumb - t.width) // 2, cy + (thumb - t.height) // 2))
            for k, point in enumerate(p for p in POINTS if p in marks.get((sampler, schedule, s), [])):
                inset = (k - 1) * frame
                d.rectangle([cx + inset, cy + inset, cx + thumb - 1 - inset, cy + thumb - 1 - inset],
                            outline=POINT_COLOURS[point], width=frame)
    if legend_h:
        ly = height - legend_h + pad
        lx = pad
        for point in POINTS:
            d.rectangle([lx, ly, lx + small_f.size, ly + small_f.size],
                        outline=POINT_COLOURS[point], width=max(2, frame))
            lx += small_f.size + pad
            d.text((lx, ly), point, fill=FG, font=small_f)
            lx += _text_width(d, point, small_f) + 3 * pad
        d.text((lx, ly), _marks_label(study), fill=MUTED, font=small_f)
    return img


def grid_tiles(study: StudyData, spec: GridSpec, *, thumb: int = 128, max_columns: int = 12,
               max_rows: int = 16, mark: bool = True) -> list[Image.Image]:
    """The grid, split into tiles of at most ``max_columns`` × ``max_rows`` cells."""
    ncol = max(1, math.ceil(len(spec.steps) / max_columns))
    nrow = max(1, math.ceil(len(spec.rows) / max_rows))
    cw = math.ceil(len(spec.steps) / ncol)
    rh = math.ceil(len(spec.rows) / nrow)
    tiles = []
    for a in range(nrow):
        for b in range(ncol):
            part = f"part {a * ncol + b + 1}/{ncol * nrow}" if ncol * nrow > 1 else ""
            tiles.append(render_grid(study, spec, thumb=thumb, mark=mark,
                                     columns=slice(b * cw, (b + 1) * cw),
                                     rows=slice(a * rh, (a + 1) * rh), part=part))
    return tiles


def grid_filename(spec: GridSpec, index: int = 0) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.topic)[:40]
    return f"grid_{safe}_seed{spec.seed}_cfg{spec.cfg:g}" + (f"_part{index + 1}" if index else "") + ".png"


def write_grids(study: StudyData, out_dir: Path, *, thumb: int = 128, max_columns: int = 12,
                max_rows: int = 16, mark: bool = True) -> list[tuple[GridSpec, list[Path]]]:
    """Write every grid as PNG; returns each spec with its tile files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in grid_specs(study):
        paths = []
        for i, tile in enumerate(grid_tiles(study, spec, thumb=thumb, max_columns=max_columns,
                                            max_rows=max_rows, mark=mark)):
            p = out_dir / grid_filename(spec, i)
            tile.save(p, compress_level=3)  # level 6+ triples the time for ~10% smaller files
            paths.append(p)
        written.append((spec, paths))
    return written
