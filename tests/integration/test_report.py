"""The report: files, escaping, tables from known numbers, grids, the rendered page in
headless Chromium and the notebook, on a seconds-long study."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cdp import Browser, chromium
from PIL import Image
from test_report_inputs import write_analysis

from convergence.config import ReportConfig, to_config
from convergence.core.errors import ConvergenceError
from convergence.report import build_report, load_study
from convergence.report.data import StudyData
from convergence.report.grids import (
    POINT_COLOURS,
    grid_specs,
    grid_tiles,
    render_grid,
    thumbnail,
)
from convergence.report.tables import batch_workflow, speed_table

REPO = Path(__file__).resolve().parents[2]
XSS = '<script>alert("pwned")</script> a hamburger & <b>fries</b>'


def small_config(results: Path, **over):
    base = {"name": "rep", "results_dir": str(results), "progress": False,
            "prompts": [{"topic": "food", "seed": 4053222918, "text": XSS},
                        {"topic": "people", "seed": 2131956332,
                         "text": "Ultra realistic photo, (Miranda Bloom-Kerr), young, stunning model, "
                                 "blue eyes, blond hair, beautiful face, intricate, highly detailed"}],
            "seeds_per_prompt": 2, "samplers": ["K_EULER", "K_HEUN", "K_EULER_A"],
            "steps": [2, 4, 8, 16], "width": 32, "height": 32, "batch_size": 16}
    base.update(over)
    return to_config(base)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 48-cell study, its analysis files (RMSE, test thresholds) and its report."""
    from convergence.run.runner import run_study
    results = tmp_path_factory.mktemp("results")
    cfg = small_config(results)
    run_study(cfg)
    root = results / cfg.name
    write_analysis(root)
    index = build_report(root, ReportConfig(thumbnail=64))
    return root, index


# -- files and escaping -----------------------------------------------------------------

def img_sources(index: Path) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', index.read_text())


def test_report_writes_page_figures_and_tables(study):
    root, index = study
    assert index == root / "report" / "index.html"
    report = index.parent
    srcs = img_sources(index)
    assert len(srcs) == 3 + 2 * 2  # curves: all + 2 topics; grids: 2 topics × 2 seeds
    for src in srcs:
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        assert (report / html.unescape(src)).is_file(), src
    for stem in ("curves_all", "curves_food", "curves_people"):
        assert (report / "figures" / f"{stem}.png").is_file()
        assert (report / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    for name in ("keypoints_indicative", "keypoints_coherent", "keypoints_converged", "speed",
                 "cheapest", "batch_workflow", "rates", "claims", "cells", "keypoints_guide",
                 "speed_guide", "batch_recipes", "variety"):
        assert len(pd.read_csv(report / "tables" / f"{name}.csv")) > 0, name
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network
    # the only scripts are the viewer's own, inline: its data and its code
    scripts = re.findall(r"<script[^>]*>", text)
    assert scripts == ['<script type="application/json" id="viewer-data">', "<script>"]
    assert len(list((report / "cells").iterdir())) == 48  # every cell, for the viewer


def test_rates_show_an_order_only_where_accepted(study):
    """The fixture accepts one sampler's order: that row shows the number, every other row
    says pre-asymptotic instead of printing a fit."""
    root, index = study
    rates = pd.read_csv(root / "rates.csv")
    shown = pd.read_csv(index.parent / "tables" / "rates.csv")
    assert len(shown) == len(rates)
    section = index.read_text().split('id="rates"')[1].split("<h2")[0]
    accepted = rates[rates["asymptotic"]].iloc[0]
    assert f"{accepted['order']:.3g}" in section
    assert section.count("pre-asymptotic") >= int((~rates["asymptotic"]).sum())


def test_prompt_with_script_tag_is_shown_as_text(study):
    root, index = study
    text = index.read_text()
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; a hamburger &amp; &lt;b&gt;fries&lt;/b&gt;" in text
    assert "<script>alert" not in text and "<b>fries" not in text
    assert "&lt;b&gt;not html&lt;/b&gt;" in text  # claims text from the analysis too


def test_missing_analysis_names_the_command(study, tmp_path):
    root, _ = study
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(root / "cells.parquet", bare / "cells.parquet")
    with pytest.raises(ConvergenceError, match="convergence analyze"):
        build_report(bare)
    with pytest.raises(ConvergenceError, match="convergence run"):
        build_report(tmp_path / "nothing")


def test_bad_report_settings_are_refused(study):
    root, _ = study
    with pytest.raises(ConvergenceError, match="k <= N"):
        build_report(root, ReportConfig(batch_candidates=2, batch_refined=5))


# -- grids ------------------------------------------------------------------------------

def test_thumbnails_shrink_large_and_enlarge_small_by_whole_pixels():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8))
    assert thumbnail(big, 128).size == (128, 128)
    small = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    up = np.asarray(thumbnail(small, 128))
    assert up.shape == (128, 128, 3) and (up[::2, ::2] == np.asarray(small)).all()


def test_wide_sweeps_are_tiled_and_grids_stay_page_sized(study):
    root, _ = study
    s = load_study(root)
    spec = grid_specs(s)[0]
    assert [r[0] for r in spec.rows] == ["euler", "heun", "euler_ancestral"]  # the study's order
    whole = grid_tiles(s, spec, thumb=128, max_columns=12, mark=False)
    assert len(whole) == 1
    assert whole[0].width < 300 + 4 * (128 + 20)  # labels + 4 thumbnails, nothing bigger
    tiles = grid_tiles(s, spec, thumb=128, max_columns=3, mark=False)
    assert len(tiles) == 2  # 4 step counts, at most 3 columns a tile
    assert all(t.width < whole[0].width for t in tiles)


def test_keypoint_frames_are_drawn_where_the_analysis_puts_them(study):
    root, _ = study
    s = load_study(root)
    spec = grid_specs(s)[0]
    marked = np.asarray(render_grid(s, spec, thumb=64, mark=True))
    plain = np.asarray(render_grid(s, spec, thumb=64, mark=False))
    kp = s.keypoints[(s.keypoints["topic"] == spec.topic) & s.keypoints["steps"].notna()]
    assert len(kp) > 0
    for point in kp["point"].unique():
        colour = np.array(POINT_COLOURS[point])
        extra = (marked == colour).all(-1).sum() - (plain == colour).all(-1).sum()
        assert extra > 4 * 60, point  # at least one whole frame around a 64 px thumbnail


# -- tables from known numbers ----------------------------------------------------------

def synthetic_study(cells: pd.DataFrame, keypoints: pd.DataFrame) -> StudyData:
    return StudyData(Path("/nonexistent"), cells, pd.DataFrame(columns=["metric"]), keypoints,
                     None, None, {}, "rmse")


def test_batch_workflow_reproduces_the_guides_example():
    # the guide: 60 s per image at -s100, 6 s at -s10; 100 candidates, refine 3
    kp = pd.DataFrame([
        {"topic": "anime", "sampler": "lms", "schedule": "discrete", "cfg": 7.5, "point": p,
         "steps": s, "nfe": s, "seconds": t, "metric": "rmse"}
        for p, s, t in (("indicative", 10, 6.0), ("coherent", 20, 12.0), ("converged", 100, 60.0))])
    cells = pd.DataFrame({"sampler": ["lms"] * 2, "schedule": ["discrete"] * 2, "cfg": [7.5] * 2,
                          "topic": ["anime"] * 2, "steps": [10, 100], "nfe": [10, 100],
                          "seconds": [6.0, 60.0]})  # 0.6 s per model call
    t = batch_workflow(synthetic_study(cells, kp), n=100, k=3)
    row = t.data.iloc[0]
    assert row["A_seconds"] == pytest.approx(6000) and row["B_seconds"] == pytest.approx(780)
    assert row["speedup_seconds"] == pytest.approx(6000 / 780)
    assert row["B_nfe"] == pytest.approx(100 * 10 + 3 * 100)
    assert "N = 100" in t.note and "k = 3" in t.note


def test_batch_workflow_leaves_out_samplers_that_never_converge():
    kp = pd.DataFrame([
        {"topic": "food", "sampler": "euler_ancestral", "schedule": "discrete", "cfg": 7.5,
         "point": p, "steps": s, "nfe": s, "seconds": s / 10, "metric": "rmse"}
        for p, s in (("indicative", 10), ("coherent", 20), ("converged", np.nan))])
    cells = pd.DataFrame({"sampler": ["euler_ancestral"], "schedule": ["discrete"], "cfg": [7.5],
                          "topic": ["food"], "steps": [10], "nfe": [10], "seconds": [1.0]})
    t = batch_workflow(synthetic_study(cells, kp), n=100, k=3)
    assert t.data.empty


def test_speed_table_measures_nfe_per_step_and_ratios_to_euler():
    rows = []
    for sampler, nfe, sec_per_nfe in (("euler", lambda n: n, 0.01), ("heun", lambda n: 2 * n - 1, 0.01)):
        for steps in (10, 20, 40):
            rows.append({"sampler": sampler, "schedule": "discrete", "steps": steps, "nfe": nfe(steps),
                         "model_evals": 2 * nfe(steps), "seconds": sec_per_nfe * nfe(steps),
                         "model_seconds": 0.009 * nfe(steps), "cfg": 7.5, "topic": "t",
                         "width": 64, "height": 64, "device": "cpu"})
    t = speed_table(synthetic_study(pd.DataFrame(rows), pd.DataFrame()))
    d = t.data.set_index("sampler")
    assert d.loc["euler", "nfe_per_step"] == pytest.approx(1.0)
    assert d.loc["heun", "nfe_per_step"] == pytest.approx(2.0)
    assert d.loc["heun", "model_evals_per_step"] == pytest.approx(4.0)
    assert d.loc["heun", "nfe_per_step_vs_euler"] == pytest.approx(2.0)
    assert d.loc["heun", "it_per_s_vs_euler"] == pytest.approx(70 / 137, rel=1e-6)
    assert d.loc["heun", "guide_it_per_s_vs_euler"] == pytest.approx(0.95 / 1.86)
    assert d.loc["euler", "model_share"] == pytest.approx(0.9)


# -- the rendered page, the notebook and the command ------------------------------------

def find_patch(shot: np.ndarray, patch: np.ndarray) -> bool:
    """Whether ``patch`` appears pixel-exact in ``shot`` (the grid PNG drawn 1:1).

    Candidates come from the patch's rarest colour in the screenshot, so white margins
    and text do not swamp the search."""
    def packed(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.int32)
        return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]

    flat, want = packed(shot), packed(patch)
    values, counts = np.unique(flat, return_counts=True)
    freq = dict(zip(values.tolist(), counts.tolist(), strict=True))
    py, px = min(np.ndindex(*want.shape), key=lambda p: freq.get(int(want[p]), 0) or 1 << 40)
    if any(int(v) not in freq for v in np.unique(want)):
        return False  # some colour of the patch is nowhere on the page
    h, w = patch.shape[:2]
    ys, xs = np.nonzero(flat == want[py, px])
    for y, x in zip(ys - py, xs - px, strict=True):
        if 0 <= y and 0 <= x and y + h <= shot.shape[0] and x + w <= shot.shape[1] \
                and (shot[y:y + h, x:x + w] == patch).all():
            return True
    return False


@pytest.fixture(scope="module")
def page(study, tmp_path_factory):
    """The report opened from file:// in headless Chromium (DevTools over a pipe)."""
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed and could not be: `make test` installs it "
                    "(apt-get install -y chromium, needs root)")
    root, index = study
    with Browser(exe, tmp_path_factory.mktemp("profile"), 1400, 1000) as b:
        b.open(index.as_uri())
        yield b


def centre(b: Browser, selector: str) -> tuple[float, float]:
    """Scroll ``selector`` into view; its centre in viewport pixels."""
    return tuple(b.eval(f"""(() => {{ const e = document.querySelector({selector!r});
        e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2]; }})()"""))


def fmt3(v: float) -> str:
    """The viewer's number format (3 significant digits)."""
    return f"{float(f'{v:.3g}'):g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.2e}"


def test_page_renders_in_headless_chromium(study, page, tmp_path):
    root, _ = study
    top = np.asarray(Image.open(page.screenshot(tmp_path / "top.png")).convert("RGB"))
    assert top.shape[:2] == (1000, 1400)
    assert top.std() > 20, "the page is blank"
    assert (top < 100).all(-1).mean() > 0.005, "no text on the page"
    # open every fold and load its lazy images now, as scrolling through the page would
    page.eval("""document.querySelectorAll('details').forEach(d => d.open = true);
        Promise.all([...document.querySelectorAll('img[loading=lazy]')].map(i => {
            i.loading = 'eager'; return i.decode().catch(() => null); }))""")
    whole = np.asarray(Image.open(page.screenshot(tmp_path / "all.png", full_page=True)).convert("RGB"))
    grid = np.asarray(Image.open(sorted((root / "report" / "grids").glob("*.png"))[0]).convert("RGB"))
    # a patch of the first grid's first thumbnail row, labels and images: the grid loaded
    patch = grid[grid.shape[0] // 3: grid.shape[0] // 3 + 24, 40:200]
    assert find_patch(whole, patch), "the grid image is not on the rendered page"


def viewer_cell(root: Path, topic_index: int, row: int, col: int) -> pd.Series:
    """The stored cell the viewer shows at (row, col) of a topic's first seed."""
    s = load_study(root)
    spec = [g for g in grid_specs(s) if g.topic == s.topics[topic_index]][0]
    sampler, schedule = spec.rows[row]
    c = spec.cells
    return c[(c["sampler"] == sampler) & (c["schedule"] == schedule)
             & (c["steps"] == spec.steps[col])].iloc[0]


def test_viewer_hover_shows_the_cells_distance(study, page):
    root, _ = study
    page.mouse(*centre(page, '#v-grid button.v-cell[data-r="1"][data-c="2"]'))
    tip = page.eval("[document.getElementById('v-tip').hidden, "
                    "document.getElementById('v-tip').getAttribute('data-cell'), "
                    "document.getElementById('v-tip').innerText]")
    assert tip[0] is False and tip[1] == "1,2"
    cell = viewer_cell(root, 0, 1, 2)
    d = pd.read_parquet(root / "distances.parquet")
    dist = d[(d["hash"] == cell["hash"]) & (d["metric"] == "rmse") & (d["reference"] == "highest")]
    assert f"{cell['sampler']} · {cell['schedule']}, {cell['steps']} steps" in tip[2]
    assert f"rmse to its own highest step count\t{fmt3(dist['value'].iloc[0])}" in tip[2]
    assert f"NFE\t{cell['nfe']}" in tip[2]


def test_viewer_step_slider_flips_to_the_right_cell(study, page):
    root, _ = study
    page.eval("document.getElementById('v-topic').value = '0';"
              "document.getElementById('v-topic').dispatchEvent(new Event('change'))")
    page.mouse(*centre(page, "#v-step"), kind="mousePressed")  # focus the slider as a user would
    page.eval("document.getElementById('v-step').value = '0';"
              "document.getElementById('v-step').dispatchEvent(new Event('input'))")
    seen = []
    for col in range(3):
        if col:
            page.key("ArrowRight", 39)
        state = page.eval("[document.querySelector('#v-a img').getAttribute('src'), "
                          "document.querySelector('#v-a .v-nums').innerText, "
                          "document.getElementById('v-step-label').textContent]")
        cell = viewer_cell(root, 0, 0, col)
        assert state[0] == f"cells/{cell['hash']}.png", col
        assert f"{cell['steps']} steps" in state[2]
        assert f"NFE\t{cell['nfe']}" in state[1]
        seen.append(state[0])
    assert len(set(seen)) == 3
    loaded = page.eval("[...document.querySelectorAll('#v-a img, #v-b img')].map(i => i.complete && i.naturalWidth)")
    assert all(loaded), "a pane image did not load"


def test_viewer_page_has_no_errors_and_no_network(study, page):
    root, _ = study
    assert page.problems() == []
    urls = page.requests()
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    # lazy: the page does not fetch every cell image up front
    cells = [u for u in urls if "/cells/" in u]
    assert len(cells) < len(load_study(root).cells)


def test_notebook_runs_with_the_documented_command(study, tmp_path):
    """docs/report.md's command: `jupyter execute` (nbclient, in the dev extras)."""
    import nbformat
    root, _ = study
    jupyter = Path(sys.executable).parent / "jupyter"
    out = tmp_path / "executed"
    r = subprocess.run([str(jupyter), "execute", f"--output={out}",
                        "notebooks/convergence_report.ipynb"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "CONVERGENCE_STUDY": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    nb = nbformat.read(out.with_suffix(".ipynb"), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3 + 2  # curves (all + 2 topics) and one grid per topic
    html_tables = " ".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "guide it/s (M1 Max)" in html_tables  # the guide tables are drawn


def test_cli_report_prints_where_the_report_is(study):
    root, _ = study
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "convergence.cli", "report", f"name={root.name}",
                        f"results_dir={root.parent}", "report.thumbnail=32"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"report: {root / 'report' / 'index.html'}" in r.stdout


def test_curves_and_tables_read_the_key_point_reference_and_all_topics(study):
    from convergence.report.curves import curve_data, thresholds
    from convergence.report.tables import cheapest_table, keypoint_tables
    root, _ = study
    s = load_study(root)
    assert s.metric == "rmse" and s.reference == "highest"
    data = curve_data(s)
    assert len(data) and data["median"].max() <= 1.0  # "next" (values > 1) and noise left out
    assert set(thresholds(s)) == {"indicative", "converged"}  # coherence has no d threshold
    ind = keypoint_tables(s)[0]
    assert list(ind.shown.columns) == ["sampler", "food", "people", "all topics"]
    assert "noise<=0.06, change<=0.04" in keypoint_tables(s)[1].note
    cheap = cheapest_table(s).data
    assert set(cheap["topic"]) == {"food", "people", "all topics"}


def test_report_of_the_real_analysis(tmp_path):
    """The whole pipeline: run, `analyze` as the CLI does it, report."""
    analysis = pytest.importorskip("convergence.analysis")
    from convergence.run.runner import run_study
    cfg = small_config(tmp_path, steps=[4, 10, 20], samplers=["K_EULER", "K_HEUN"],
                       analysis={"metrics": ["rmse"]})
    run_study(cfg)
    analysis.analyze_study(cfg)
    index = build_report(tmp_path / cfg.name, ReportConfig(thumbnail=32))
    srcs = img_sources(index)
    assert len(srcs) == 3 + 4 and all((index.parent / html.unescape(s)).is_file() for s in srcs)
    text = index.read_text()
    assert "The guide&#39;s claims, checked against this study" in text
    s = load_study(tmp_path / cfg.name)
    assert s.reference == "highest" and s.metric == cfg.analysis.metric
    from convergence.report.curves import curve_data
    assert set(curve_data(s)["sampler"]) == {"euler", "heun"}
    # the viewer frames each seed's own key points: the same cells as that seed's grid
    import json

    from convergence.report.grids import keypoint_marks
    data = json.loads(re.search(
        r'<script type="application/json" id="viewer-data">(.*?)</script>', text, re.S).group(1))
    specs = {(g.topic, g.seed): g for g in grid_specs(s)}
    assert s.keypoints_seed is not None and "the frames follow the seed shown" in text
    for topic in data["topics"]:
        for view in topic["views"]:
            spec = specs[(topic["name"], view["seed"])]
            want = {(spec.rows.index((sa, sc)), spec.steps.index(st), p)
                    for (sa, sc, st), ps in keypoint_marks(s, spec).items() for p in ps}
            assert {tuple(m) for m in view["marks"]} == want
    kp = pd.read_csv(index.parent / "tables" / "keypoints_indicative.csv")
    assert set(kp["sampler"]) == {"euler", "heun"} and set(kp["topic"]) == {"food", "people", "all"}


def test_viewer_images_link_small_cells_and_shrink_large_ones(study, tmp_path):
    from convergence.report.viewer import write_cell_images
    root, _ = study
    s = load_study(root)
    same = write_cell_images(s, tmp_path / "same", size=32)  # the study's 32×32 images
    h = s.cells["hash"].iloc[0]
    assert same[h] == f"{h}.png"
    assert (tmp_path / "same" / same[h]).read_bytes() == (root / s.cells["image"].iloc[0]).read_bytes()
    small = write_cell_images(s, tmp_path / "small", size=16)  # as if they were larger
    assert small[h] == f"{h}.jpg"
    with Image.open(tmp_path / "small" / small[h]) as im:
        assert im.size == (16, 16) and im.format == "JPEG"
