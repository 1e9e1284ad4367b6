"""Page weight and load time of the report of a 5 000-cell study, in headless Chromium.

The viewer must stay light at scale: one JSON block for all cells, images loaded only
when shown. This runs a real 5 000-cell study on the embedded model (5 topics × 10 seeds
× 4 samplers × 25 step counts, 32×32, analysis on rmse with the highest-step reference
only, to keep it minutes on a laptop CPU), builds its report and opens it from file://:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_report_page.py [results_dir]

Prints (and results/measured/report_page_5000.txt records) the report build time, the
page and JSON bytes, load and DOMContentLoaded times, the requests and bytes fetched at
load, and the time to switch the seed and to flip the step slider.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from cdp import Browser, chromium  # noqa: E402

from convergence.analysis import analyze_study  # noqa: E402
from convergence.config import ReportConfig, to_config  # noqa: E402
from convergence.report import build_report  # noqa: E402
from convergence.run.runner import run_study  # noqa: E402

PROMPTS = [{"topic": "anime", "seed": 3031912972, "text": "an anime girl"},
           {"topic": "nature", "seed": 1458228930, "text": "valley landscape wallpaper"},
           {"topic": "food", "seed": 4053222918, "text": "a hamburger with a bowl of french fries"},
           {"topic": "animals", "seed": 3721629802, "text": "grown tiger, full body"},
           {"topic": "people", "seed": 2131956332, "text": "Ultra realistic photo, blue eyes"}]


def study_config(results: Path):
    return to_config({"name": "page5000", "results_dir": str(results), "progress": False,
                      "threads": 1, "prompts": PROMPTS, "seeds_per_prompt": 10,
                      "samplers": ["K_EULER", "K_LMS", "K_HEUN", "K_EULER_A"],
                      "steps": list(range(2, 27)), "width": 32, "height": 32, "batch_size": 64,
                      "analysis": {"metric": "rmse", "metrics": ["rmse"], "references": ["highest"]}})


def measure(index: Path, repeats: int = 5) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as profile, Browser(chromium(), Path(profile), 1400, 1000) as b:
        loads, dcls = [], []
        for i in range(repeats):  # the first load is cold (disk cache, font cache)
            mark = len(b.events)
            b.open(index.as_uri() + f"?run={i}")
            t = b.eval("(() => { const n = performance.getEntriesByType('navigation')[0];"
                       " return [n.loadEventEnd, n.domContentLoadedEventEnd]; })()")
            loads.append(t[0])
            dcls.append(t[1])
            if i == 0:
                urls = [e["params"]["request"]["url"] for e in b.events[mark:]
                        if e.get("method") == "Network.requestWillBeSent"]
        files = [Path(unquote(urlparse(u).path)) for u in urls if u.startswith("file://")]
        out |= {"load_ms_first": loads[0], "load_ms_median_warm": statistics.median(loads[1:]),
                "dcl_ms_median_warm": statistics.median(dcls[1:]),
                "requests_at_load": len(urls),
                "cell_images_at_load": sum("/cells/" in u for u in urls),
                "bytes_at_load": sum(f.stat().st_size for f in files if f.is_file()),
                "non_file_requests": [u for u in urls if not u.startswith(("file://", "data:"))],
                "problems": b.problems()}
        b.eval("document.getElementById('viewer').scrollIntoView()")
        switch, flip = [], []
        for v in range(1, 6):
            switch.append(b.eval(f"""(() => {{ const s = document.getElementById('v-seed');
                const t0 = performance.now(); s.value = '{v}'; s.dispatchEvent(new Event('change'));
                return performance.now() - t0; }})()"""))
            flip.append(b.eval(f"""(() => {{ const s = document.getElementById('v-step');
                const t0 = performance.now(); s.value = '{v}'; s.dispatchEvent(new Event('input'));
                return performance.now() - t0; }})()"""))
        out |= {"seed_switch_ms_median": statistics.median(switch),
                "slider_flip_ms_median": statistics.median(flip),
                "grid_cells_in_dom": b.eval("document.querySelectorAll('#v-grid button').length")}
    return out


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    cfg = study_config(results)
    t0 = time.perf_counter()
    run_study(cfg)
    t_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyze_study(cfg)
    t_an = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = build_report(results / cfg.name, ReportConfig())
    t_rep = time.perf_counter() - t0
    text = index.read_text(encoding="utf-8")
    start = text.index('id="viewer-data">') + len('id="viewer-data">')
    json_bytes = len(text[start:text.index("</script>", start)].encode())
    cells = len(list((index.parent / "cells").iterdir()))
    m = measure(index)
    lines = [f"cells: {cells} (5 topics x 10 seeds x 4 samplers x 25 step counts, 32x32)",
             f"run {t_run:.0f} s, analyze {t_an:.0f} s, report build {t_rep:.1f} s",
             f"index.html: {index.stat().st_size / 1e3:.0f} kB, of which viewer JSON "
             f"{json_bytes / 1e3:.0f} kB",
             f"at load: {m['requests_at_load']} requests, {m['cell_images_at_load']} cell images, "
             f"{m['bytes_at_load'] / 1e6:.2f} MB read; non-file requests: {m['non_file_requests']}",
             f"load event: first {m['load_ms_first']:.0f} ms, warm median {m['load_ms_median_warm']:.0f} ms "
             f"(DOMContentLoaded {m['dcl_ms_median_warm']:.0f} ms)",
             f"viewer: {m['grid_cells_in_dom']} grid cells in the DOM; seed switch "
             f"{m['seed_switch_ms_median']:.1f} ms, slider flip {m['slider_flip_ms_median']:.1f} ms (median of 5)",
             f"console errors / exceptions: {m['problems'] or 'none'}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
