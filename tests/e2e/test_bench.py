"""`convergence bench`: floor, harness, loops and their ratios on a tiny study."""

from __future__ import annotations

import re

from inprocess import run_main

from convergence.run.plan import expand
from convergence.tools.bench import bench, floor


def _ratio(lines: list[str], name: str) -> float:
    hit = [re.match(rf"{re.escape(name)} = ([0-9.]+)", line) for line in lines]
    values = [float(m.group(1)) for m in hit if m]
    assert len(values) == 1, (name, lines)
    return values[0]


def test_bench_prints_the_three_ratios(study_config, model32):
    cfg = study_config(samplers=["euler", "heun", "ddim"], steps=[2, 4], seeds_per_prompt=1,
                       batch_size=16)
    lines = bench(cfg, model32, repeats=1)
    text = "\n".join(lines)
    assert "torch thread(s) (cpu" in text and "torch " in text and "k-diffusion " in text
    assert "16 rows per call" in text
    for name in ("harness/floor", "loop/harness", "harness/direct"):
        assert _ratio(lines, name) > 0
    # the hand count: 2 cells x 2 rows; euler 2 + 4, heun 3 + 7, ddim 2 + 4 calls
    assert "for 88 model rows" in text


def test_floor_tries_doubling_row_counts_up_to_the_budget(study_config, model32):
    cells = expand(study_config(), model32.name, {})
    rows = [r for r, _ in floor(model32, cells, 12, repeats=1)]
    assert rows == [1, 2, 4, 8, 12]


def test_bench_cli_writes_its_report(tmp_path, capsys):
    out = tmp_path / "bench.txt"
    code, stdout, err = run_main(
        capsys, "bench", "study=smoke", "samplers=[euler]", "steps=[2]", "seeds_per_prompt=1",
        "threads=1", "--repeats", "1", "--loop-cells", "1", "--clock", "cpu", "--out", str(out))
    assert code == 0, err
    assert out.read_text().startswith("$ convergence bench study=smoke")
    assert "loop/harness = " in stdout and "# clock: cpu seconds" in stdout


def test_bench_bad_override_is_a_one_line_error(capsys):
    code, _, err = run_main(capsys, "bench", "batch_size=many")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "batch_size" in err
