"""Baselines of `convergence check`: one small JSON file per sampler, holding what the
check study measured (NFE, errors against the exact limit, key points, pooled images) and
the study it was measured on, so a changed study is an error rather than a false alarm."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from convergence import __version__
from convergence.core.errors import ConvergenceError
from convergence.tools.check import POOL, Measurement, check_study

FORMAT = 1
#: where baselines are looked up and saved: $CONVERGENCE_BASELINES, else
#: ./results/baselines (the repository keeps the built-in samplers' there)
DEFAULT_DIR = Path("results") / "baselines"


def baseline_dir() -> Path:
    return Path(os.environ.get("CONVERGENCE_BASELINES") or DEFAULT_DIR)


def baseline_path(sampler: str, directory: Path | None = None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sampler)
    return (directory or baseline_dir()) / f"{safe}.json"


def _study() -> dict:
    """What a baseline was measured on: the check study's settings."""
    cfg = check_study()
    return {"size": cfg.width, "cfg": cfg.cfg[0], "schedule": cfg.schedules[0],
            "steps": list(cfg.steps), "prompts": [[p.text, p.topic, p.seed] for p in cfg.prompts],
            "pool": POOL}


def save(m, path: Path) -> Path:
    """Write the measurement ``m`` (check.Measurement) as a baseline."""
    doc = {"format": FORMAT, "sampler": m.sampler, "study": _study(),
           "made_with": {"convergence": __version__, "torch": torch.__version__},
           "nfe": {str(k): v for k, v in m.nfe.items()}, "limit": m.limit,
           "errors": {str(k): float(f"{v:.6g}") for k, v in m.errors.items()},
           "keypoints": m.keypoints, "images": m.images}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


def load(path: Path):
    """The baseline at ``path`` as a check.Measurement; a ConvergenceError when it is not a
    baseline of the current check study."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConvergenceError(f"cannot read baseline {str(path)!r}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConvergenceError(f"{str(path)!r} is not a convergence baseline (format {FORMAT})")
    if doc.get("study") != _study():
        raise ConvergenceError(f"baseline {str(path)!r} was measured on another check study; "
                               f"re-save it with `convergence baseline save {doc.get('sampler')}`")
    return Measurement(doc["sampler"], {int(k): int(v) for k, v in doc["nfe"].items()},
                       doc.get("limit"), {int(k): float(v) for k, v in doc["errors"].items()},
                       doc["keypoints"], doc["images"])
