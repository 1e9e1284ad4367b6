"""The weight digest in a real model's fingerprint: changed weights give new cells."""

from __future__ import annotations

import os

import pytest

import convergence.models.weights as W


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "pipe"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "model.safetensors").write_bytes(b"\x01" * 1000)
    (root / "unet" / "config.json").write_text("{}")
    return root


def test_digest_follows_the_weights_and_caches_by_size_and_mtime(folder, monkeypatch):
    calls = []
    real = W._file_sha256
    monkeypatch.setattr(W, "_file_sha256", lambda p: calls.append(p) or real(p))
    first = W.weights_digest(str(folder))
    assert first and len(calls) == 1
    assert W.weights_digest(str(folder)) == first and len(calls) == 1  # cached
    (folder / "unet" / "config.json").write_text('{"a": 1}')           # not a weight file
    assert W.weights_digest(str(folder)) == first
    w = folder / "unet" / "model.safetensors"
    st = w.stat()
    w.write_bytes(b"\x02" + b"\x01" * 999)                            # same size, one byte
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = W.weights_digest(str(folder))
    assert changed != first and len(calls) == 2


def test_no_local_files_means_no_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.weights_digest("someone/not-cached-model") is None


@pytest.mark.slow
def test_diffusers_fingerprint_has_the_weight_digest(tmp_path, monkeypatch):
    """The fingerprint (cell hashes) of the tiny pipeline changes with its weights."""
    from tiny_pipeline import save_tiny_sd_pipeline

    from convergence.config.schema import ModelConfig
    from convergence.models import build_model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = save_tiny_sd_pipeline(tmp_path / "sd")
    cfg = ModelConfig(name="diffusers", path=str(path), device="cpu")
    before = build_model(cfg, 32, 32).fingerprint()
    assert before["weights"] == W.weights_digest(str(path))
    vae = next(path.glob("vae/*.safetensors"))
    data = bytearray(vae.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: still loads
    vae.write_bytes(bytes(data))
    assert build_model(cfg, 32, 32).fingerprint()["weights"] != before["weights"]
