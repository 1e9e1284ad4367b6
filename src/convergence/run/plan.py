"""Expand a study into cells, each with a stable content hash, and group them into
batches that share one sigma schedule (same sampler, schedule, steps, cfg, size) so a
batch runs prompts and seeds side by side. Batches are sized in model rows (a CFG cell
is two rows per call); the runner runs batches side by side within the same budget."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from itertools import product

from convergence.config.schema import Config
from convergence.core.store import register_row_check
from convergence.samplers.schedules import canonical_schedule
from convergence.samplers.spec import resolve_sampler

#: bump when a change to the harness alters images for the same cell
#: (3: the analytic model's denoiser sums its terms in another order, last-bit changes;
#: 4: it sums them in a fixed order of its own, models/fixed_order.py;
#: 5: the ComfyUI-named samplers compute what ComfyUI's functions compute, and CFG++
#: evaluates the negative prompt at CFG 1, issue 29)
HASH_VERSION = 5


@dataclass(frozen=True)
class Cell:
    model: str
    model_hash: str
    topic: str
    prompt: str
    seed: int
    sampler: str
    schedule: str
    steps: int
    cfg: float
    width: int
    height: int

    @property
    def hash(self) -> str:
        return _cell_hash(HASH_VERSION, asdict(self))

    @property
    def batch_key(self) -> tuple:
        return (self.sampler, self.schedule, self.steps, self.cfg, self.width, self.height)

    @property
    def group_key(self) -> tuple:
        """Cells differing only in steps form one convergence curve."""
        return (self.model, self.topic, self.prompt, self.seed, self.sampler, self.schedule,
                self.cfg)


def _cell_hash(version: int, cell_fields: dict) -> str:
    payload = json.dumps({"v": version, **cell_fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_KINDS = {"str": str, "int": int, "float": float}


def row_matches_hash(row: dict) -> bool:
    """Whether a stored row's cell fields give its cell hash, under this or an earlier
    HASH_VERSION (older rows stay valid rows of their own version): an edited row does not."""
    try:
        cell = {f.name: _KINDS[str(f.type)](row[f.name]) for f in fields(Cell)}
    except (KeyError, TypeError, ValueError):
        return False
    return any(_cell_hash(v, cell) == row.get("hash") for v in range(HASH_VERSION, 0, -1))


register_row_check(row_matches_hash)


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompt_seeds(cfg: Config) -> list[tuple]:
    """(prompt, seed) pairs of the sweep."""
    pairs = []
    for p in cfg.prompts:
        if cfg.seeds is not None:
            seeds = list(cfg.seeds)
        else:
            seeds = [int(p.seed) + i for i in range(cfg.seeds_per_prompt)]
        pairs += [(p, s) for s in seeds]
    return pairs


def expand(cfg: Config, model_name: str, model_fingerprint: dict) -> list[Cell]:
    """All cells of the study (deduplicated, in a stable order)."""
    mh = fingerprint_hash(model_fingerprint)
    schedules = [canonical_schedule(s) for s in cfg.schedules]  # fails naming the value
    cells: dict[str, Cell] = {}
    for sampler_name, schedule, cfg_scale in product(cfg.samplers, schedules, cfg.cfg):
        resolved = resolve_sampler(sampler_name, backend=cfg.model.sampler_backend)
        sched = resolved.schedule or schedule
        if sched == "native" or resolved.spec.family == "diffusers":
            # diffusers schedulers choose their own timesteps from the model's config
            sched = resolved.spec.native_schedule
        for (prompt, seed), steps in product(prompt_seeds(cfg), cfg.steps):
            cell = Cell(model_name, mh, prompt.topic, prompt.text, int(seed),
                        resolved.spec.name, sched, int(steps), float(cfg_scale),
                        cfg.width, cfg.height)
            cells.setdefault(cell.hash, cell)
    return list(cells.values())


def rows_per_cell(cell: Cell) -> int:
    """Model rows a cell adds to each call: two with classifier-free guidance."""
    return 1 if cell.cfg == 1.0 else 2


def batches(cells: list[Cell], row_budget: int) -> list[list[Cell]]:
    """Group cells that share a sigma schedule, then chunk so a batch's rows fit
    ``row_budget`` (at least one cell; one cell for samplers whose rows are coupled, so
    no cell depends on its batch-mates)."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.batch_key, []).append(c)
    out = []
    for key, group in groups.items():
        size = max(1, row_budget // rows_per_cell(group[0]))
        if not resolve_sampler(key[0]).spec.rows_independent:
            size = 1
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return out
