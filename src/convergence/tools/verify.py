"""``convergence verify``: check every stored cell against its row, its row against the
manifest and its cell hash, and print the study digest.

Lists each problem on its own line, each naming the command that resolves it, and returns
them; the CLI exits 1 when there is any. It only reads (a read-only store works, and
Hydra writes no output folder for it): ``convergence run`` recomputes damaged and edited
cells, ``convergence store compact`` sets foreign and unreadable part files aside and
folds duplicate rows. The digest (core/manifest.py, docs/store.md) is a Merkle root over
every cell's hash and file checksums: equal stores give equal digests.
"""

from __future__ import annotations

from convergence.config.schema import Config
from convergence.core.errors import ConvergenceError
from convergence.core.manifest import MANIFEST, study_digest
from convergence.core.store import Store
from convergence.run import plan  # noqa: F401  (registers the row/hash check)

RUN = "`convergence run` with the study's settings recomputes it"
COMPACT = "`convergence store compact` sets it aside in quarantine/"


def verify_store(store: Store) -> tuple[int, list[str], str]:
    """(cells stored, one line per problem, study digest) for one store."""
    if not store.exists():
        raise ConvergenceError(f"no results in {store.root}: run `convergence run` first")
    try:
        df = store.load()
    except ConvergenceError as e:
        return 0, [str(e)], ""
    lines = [f"{why}; {COMPACT}" + (" (its cells are recomputed by `convergence run`)"
                                    if "unreadable" in why else "")
             for why in store.bad_parts.values()]
    if not (store.root / MANIFEST).exists():
        lines.append(f"no {MANIFEST} (stored before manifests): `convergence store compact` "
                     "records one for the rows as they are")
    lines += [f"damaged: {store.describe(h)}: {p}; {RUN}" for h, p in store.problems().items()]
    raw = store.raw_rows()
    if "hash" in raw:
        dup = int(raw["hash"].duplicated().sum())
        if dup:
            lines.append(f"{dup} cells have more than one row (computed twice); "
                         "`convergence store compact` keeps the newest")
    return len(df), lines, study_digest(df.to_dict("records")) if len(df) else study_digest([])


def verify_study(cfg: Config) -> list[str]:
    """Print the problems of ``<results_dir>/<name>`` (one a line), the study digest and a
    summary line."""
    store = Store(cfg.study_dir(), read_only=True)
    n, problems, digest = verify_store(store)
    for line in problems:
        print(line)
    if digest:
        print(f"study digest: sha256:{digest} ({n} cells; docs/store.md says how to recompute it)")
    if problems:
        s = "" if len(problems) == 1 else "s"
        print(f"{store.root}: {len(problems)} problem{s} in {n} cells; each line names the "
              "command that resolves it")
    else:
        print(f"{store.root}: {n} cells, every stored file matches its sha256 and every row is "
              "the one its writer recorded")
    return problems
