"""``convergence verify``: check every stored cell against the checksums of its row.

Lists each problem on its own line (damaged or missing files, unreadable table parts)
and returns them; the CLI exits 1 when there is any. It reads, never repairs:
``convergence run`` with the study's settings recomputes the damaged cells.
"""

from __future__ import annotations

from convergence.config.schema import Config
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store


def verify_store(store: Store) -> tuple[int, list[str]]:
    """(cells stored, one line per problem) for one store."""
    if not store.exists():
        raise ConvergenceError(f"no results in {store.root}: run `convergence run` first")
    try:
        df = store.load()
    except ConvergenceError as e:
        return 0, [str(e)]
    lines = [f"damaged: {store.describe(h)}: {p}" for h, p in store.problems().items()]
    if "hash" in df and df["hash"].duplicated().any():  # the union is deduplicated by design
        lines.append(f"duplicate rows for {int(df['hash'].duplicated().sum())} cells")
    return len(df), lines


def verify_study(cfg: Config) -> list[str]:
    """Print the problems of ``<results_dir>/<name>`` (one a line) and a summary line."""
    store = Store(cfg.study_dir())
    n, problems = verify_store(store)
    for line in problems:
        print(line)
    if problems:
        s = "" if len(problems) == 1 else "s"
        print(f"{store.root}: {len(problems)} problem{s} in {n} cells; `convergence run` with the "
              "study's settings recomputes damaged cells")
    else:
        print(f"{store.root}: {n} cells, every stored file matches its sha256")
    return problems
