"""Decoded float images (issue 14): latent models store the VAE-decoded picture as floats,
and the analysis measures key points and image metrics on it, never on the 8-bit PNG."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_pipeline import IMAGE_SIZE, save_tiny_sd_pipeline

from convergence.analysis.distances import compute_distances
from convergence.config.schema import AnalysisConfig
from convergence.core.store import CHECKSUMS, Store
from convergence.run.runner import run_study
from convergence.tools.verify import verify_store

PROMPT = "a hamburger with a bowl of french fries"
SEED = 4053222918
CFG = 7.5
STEPS = 8
#: Stored decoded image vs StableDiffusionPipeline(output_type="np") for the same scheduler,
#: prompt and seed: they differ by the harness's float32 reduction order in the sampler
#: (latents within 5e-6 relative, tests/integration/test_diffusers_pipelines.py): measured here at most
#: 1.4e-6 (fp32, CPU, 1 and 2 threads, DDIM and Euler). 1e-4 (1/40 of an 8-bit level)
#: leaves room for other BLAS builds and is far below what the 8-bit PNG could show.
PIPELINE_ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny SD pipeline, its model, and a 2-cell study of it (DDIMScheduler at 4 and 8
    steps, the pipeline's own scheduler class) stored by the ordinary runner."""
    from conftest import make_config

    from convergence.config.schema import ModelConfig
    from convergence.models import build_model
    work = tmp_path_factory.mktemp("decoded")
    path = save_tiny_sd_pipeline(work / "sd")
    model = build_model(ModelConfig(name="diffusers", path=str(path), device="cpu"),
                        IMAGE_SIZE, IMAGE_SIZE)
    cfg = make_config(work, model={"name": "diffusers", "path": str(path), "device": "cpu"},
                      prompts=[{"topic": "food", "seed": SEED, "text": PROMPT}],
                      seeds_per_prompt=1, samplers=["DDIMScheduler"], steps=[4, STEPS],
                      width=IMAGE_SIZE, height=IMAGE_SIZE)
    store = run_study(cfg, model).store
    return model, store


@pytest.mark.portable
def test_stored_float_image_is_the_pipelines_decoded_image(tiny):
    model, store = tiny
    rows = store.load().set_index("steps")
    row = rows.loc[STEPS]
    h = row["hash"]
    assert row["decoded"] == f"decoded/{h}.npy" and row[CHECKSUMS["decoded"]]
    assert (row.display_lo, row.display_hi) == (0.0, 1.0)
    decoded = store.load_decoded(h)
    assert decoded.dtype == np.float32 and decoded.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)

    import diffusers
    pipe = model.pipe
    pipe.scheduler = diffusers.DDIMScheduler.from_config(model.scheduler_config)
    theirs = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=CFG, height=IMAGE_SIZE,
                  width=IMAGE_SIZE, generator=torch.Generator("cpu").manual_seed(SEED),
                  output_type="np").images[0]
    assert theirs.std() > 0.01  # a picture, not a constant
    assert np.abs(decoded - theirs).max() <= PIPELINE_ATOL
    # the PNG is this float image rounded to 8 bits (the same floats, so no level apart)
    png = store.load_image(h).astype(int)
    assert np.abs(np.round(decoded.astype(np.float64) * 255) - png).max() == 0
    # float16 would round these values by up to 2^-12 (store.DECODED_DTYPE's comment)
    half = np.abs(decoded.astype(np.float16).astype(np.float32) - decoded).max()
    assert 0 < half <= 2.0**-12


def test_verify_and_run_catch_a_damaged_float_image(tiny, tmp_path):
    _, stored = tiny
    shutil.copytree(stored.root, tmp_path / "s")
    store = Store(tmp_path / "s")
    h = store.load().hash.tolist()
    path = store.decoded_path(h[0])
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one float
    path.write_bytes(bytes(data))
    store.decoded_path(h[1]).unlink()
    n, problems, _ = verify_store(store)
    assert n == 2 and len(problems) == 2
    text = "\n".join(problems)
    assert f"decoded float image decoded/{h[0]}.npy does not match its sha256" in text
    assert f"decoded float image decoded/{h[1]}.npy is missing" in text
    assert store.done_hashes() == set()  # `convergence run` recomputes both


def test_analytic_model_stores_no_second_copy(study_config, model32):
    store = run_study(study_config(samplers=["euler"], steps=[4], seeds_per_prompt=1),
                      model32).store
    rows = store.load()
    assert (rows["decoded"] == "").all() and not (store.root / "decoded").exists()
    assert verify_store(store)[1] == []


def _latent_study(tmp_path, decoded: bool):
    """Two cells of one curve (4 and 8 steps) with the same latent, whose decoded floats
    differ by 0.3 of an 8-bit level: below the PNG's resolution (both PNGs are equal)."""
    store = Store(tmp_path / "latent")
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((4, 4, 4)).astype(np.float32)
    base = (np.round(rng.uniform(0.1, 0.9, (16, 16, 3)) * 255) / 255).astype(np.float32)
    rows = []
    for steps, shift in ((4, 0.3 / 255), (8, 0.0)):
        h = f"cell{steps}"
        img = base + np.float32(shift) * (np.indices((16, 16))[0] % 2)[..., None]
        png = np.round(img * 255).astype(np.uint8)
        rows.append({"hash": h, "model": "diffusers", "topic": "t", "prompt": "p", "seed": 1,
                     "sampler": "euler", "schedule": "karras", "steps": steps, "cfg": 7.5,
                     "nfe": float(steps), "seconds": 0.0, "family": "k-diffusion",
                     "display_lo": 0.0, "display_hi": 1.0,
                     **store.write_image(h, png), **store.write_sample(h, latent),
                     **store.write_decoded(h, img if decoded else None)})
    store.append_rows(rows)
    return store, pd.DataFrame(rows), np.stack([latent, latent]).astype(np.float64)


LPIPS_TOO_SMALL = "lpips: left out, the pictures (16 px) are smaller than AlexNet's 32 px minimum"
A = AnalysisConfig(metrics=["rel_rmse", "rmse", "psnr", "gmsd"], references=["highest"],
                   image_references=["highest"])


def test_analysis_measures_the_float_image_not_the_png(tmp_path):
    store, cells, samples = _latent_study(tmp_path, decoded=True)
    assert (store.load_image("cell4") == store.load_image("cell8")).all()
    dist, notes = compute_distances(A, store, cells, samples)
    v = dist[(dist.reference == "highest") & (dist.hash == "cell4")].set_index("metric").value
    # on the floats the pictures differ (the PNGs, equal, would give 0 and psnr = inf)
    assert v["rel_rmse"] > 0 and v["gmsd"] > 0 and np.isfinite(v["psnr"])
    # the key-point metric sees the picture, the rate metric the (equal) latents
    assert v["rmse"] == 0
    # 16 px pictures: the indicative point's LPIPS is left out with its one line, nothing else
    assert notes == [LPIPS_TOO_SMALL]


def test_store_without_float_images_falls_back_to_the_png_with_a_note(tmp_path):
    store, cells, samples = _latent_study(tmp_path, decoded=False)
    cells = cells.assign(display_lo=-np.inf, display_hi=np.inf)  # as an older runner stored
    dist, notes = compute_distances(A, store, cells, samples)
    v = dist[(dist.reference == "highest") & (dist.hash == "cell4")].set_index("metric").value
    assert v["rel_rmse"] == 0 and v["psnr"] == np.inf  # the equal PNGs
    assert len(notes) == 2 and "2 of 2 cells have no float picture" in notes[0]
    assert notes[1] == LPIPS_TOO_SMALL


def test_report_variety_measures_the_float_images(tmp_path):
    """Two seeds whose pictures differ below one 8-bit level: the report's variety in an
    image metric sees the difference (their PNGs are equal: psnr would be inf)."""
    from convergence.report.data import StudyData
    from convergence.report.variety import pairwise_variety
    store, cells, _ = _latent_study(tmp_path, decoded=True)
    cells = cells.assign(steps=8, seed=[1, 2])
    study = StudyData(store.root, cells, pd.DataFrame(), pd.DataFrame(), None, None, {}, "psnr")
    v = pairwise_variety(study).iloc[0]
    assert v["n_pairs"] == 1 and np.isfinite(v["mean"]) and v["mean"] > 40


def test_pairs_scored_in_chunks_give_the_same_distances(tmp_path, monkeypatch):
    """Real-model pictures are large, so metrics see bounded chunks of pairs: one pair per
    chunk gives every value bit for bit as one chunk does (metrics are per row)."""
    from convergence.analysis import distances
    store, cells, samples = _latent_study(tmp_path, decoded=True)
    whole, _ = compute_distances(A, store, cells, samples)
    monkeypatch.setattr(distances, "CHUNK_BYTES", 1)
    pd.testing.assert_frame_equal(compute_distances(A, store, cells, samples)[0], whole)
