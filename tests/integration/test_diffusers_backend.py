"""The diffusers backend on a tiny randomly initialised SD pipeline, built and saved here.

The central check: the harness's images equal what ``StableDiffusionPipeline`` itself
makes for the same prompt, seed, steps and guidance.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_pipeline import IMAGE_SIZE, assert_same_image, save_tiny_sd_pipeline

PROMPT = "a hamburger with a bowl of french fries"
SEED = 4053222918
CFG = 7.5


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny SD pipeline saved as a diffusers folder (safetensors), once per session."""
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "sd")


def _model_cfg(path, **kw):
    from convergence.config.schema import ModelConfig
    return ModelConfig(name="diffusers", path=str(path), device="cpu", **kw)


@pytest.fixture(scope="session")
def tiny_model(tiny_sd_path):
    from convergence.models import build_model
    return build_model(_model_cfg(tiny_sd_path), IMAGE_SIZE, IMAGE_SIZE)


def _cells(sampler, schedule, steps, seeds=(SEED,), cfg=CFG):
    from convergence.run.plan import Cell
    return [Cell("diffusers", "h", "food", PROMPT, s, sampler, schedule, steps, cfg,
                 IMAGE_SIZE, IMAGE_SIZE) for s in seeds]


def _pipeline(model, scheduler_cls, **config):
    """The loaded pipeline itself, with one of diffusers' schedulers from the model's config
    (``from_config``, as a diffusers user swaps schedulers)."""
    import diffusers
    pipe = model.pipe
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(model.scheduler_config, **config)
    return pipe


def _pipeline_latents(model, scheduler_cls, steps, latents=None, **config):
    pipe = _pipeline(model, scheduler_cls, **config)
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=CFG, height=IMAGE_SIZE,
               width=IMAGE_SIZE, generator=torch.Generator("cpu").manual_seed(SEED),
               latents=latents, output_type="latent")
    return out.images


def test_loads_offline_as_an_sd_model(tiny_model, tiny_sd_path):
    m = tiny_model
    assert m.latent_shape(IMAGE_SIZE, IMAGE_SIZE) == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    assert m.sigma_min == pytest.approx(0.0292, abs=1e-3)
    assert m.sigma_max == pytest.approx(14.61, abs=0.01)
    fp = m.fingerprint()
    assert fp["path"] == str(tiny_sd_path) and fp["dtype"] == "float32"
    assert fp["schedule"]["beta_schedule"] == "scaled_linear"
    # the fingerprint goes into every cell hash: a second load of the same folder must give
    # the same hash (no object reprs or addresses in it), or every run would recompute
    from convergence.models import build_model
    from convergence.run.plan import fingerprint_hash
    again = build_model(_model_cfg(tiny_sd_path), IMAGE_SIZE, IMAGE_SIZE).fingerprint()
    assert fingerprint_hash(fp) == fingerprint_hash(again)
    assert list(tiny_sd_path.glob("unet/*.safetensors")), "fixture must be safetensors"


def test_prompt_embeddings_once_per_batch(tiny_model, monkeypatch):
    """The text encoder runs when the batch starts, never per step."""
    from convergence.run.runner import sample_batch
    calls = []
    enc = tiny_model.pipe.text_encoder
    orig = enc.forward
    monkeypatch.setattr(enc, "forward", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    monkeypatch.setattr(tiny_model, "_encoded", type(tiny_model._encoded)())
    res = sample_batch(tiny_model, _cells("euler", "discrete", 6, seeds=(1, 2)))
    assert res.nfe == 6
    assert len(calls) == 2  # one call for the prompts, one for the "" negative prompt
    again = sample_batch(tiny_model, _cells("euler", "discrete", 6, seeds=(1, 2)))
    assert len(calls) == 2  # the same prompt list again: its embeddings are kept
    assert torch.equal(res.samples, again.samples)


def test_kept_prompt_embeddings_equal_fresh_ones(tiny_model, monkeypatch):
    """A kept prompt list's embeddings are the ones encoding it again gives (bit for bit),
    and only the last ENCODED_KEPT lists are kept."""
    from convergence.models.diffusers_backend import ENCODED_KEPT
    monkeypatch.setattr(tiny_model, "_encoded", type(tiny_model._encoded)())
    lists = [[PROMPT, f"prompt {i}"] for i in range(ENCODED_KEPT + 1)]
    first = tiny_model.encode_prompts(lists[0], ["food", "x"])
    assert tiny_model.encode_prompts(lists[0], ["food", "x"]) is first
    fresh = tiny_model._encode(lists[0])
    for kept, new in ((first.cond, fresh.cond), (first.uncond, fresh.uncond)):
        assert torch.equal(kept["encoder_hidden_states"], new["encoder_hidden_states"])
    for prompts in lists[1:]:
        tiny_model.encode_prompts(prompts, ["food", "x"])
    assert len(tiny_model._encoded) == ENCODED_KEPT and tuple(lists[0]) not in tiny_model._encoded


@pytest.mark.parametrize("scheduler_cls, steps", [("DDIMScheduler", 10),
                                                  ("EulerDiscreteScheduler", 10)])
def test_diffusers_scheduler_equals_pipeline(tiny_model, scheduler_cls, steps):
    """Harness (DDIMScheduler / EulerDiscreteScheduler adapters) == the pipeline, fp32."""
    from convergence.run.runner import sample_batch
    res = sample_batch(tiny_model, _cells(scheduler_cls, "discrete", steps))
    ref = _pipeline_latents(tiny_model, scheduler_cls, steps)
    assert res.nfe == steps and res.model_evals == 2 * steps
    theirs = assert_same_image(tiny_model, res.samples, ref)
    assert theirs.std() > 0.01  # a real image, not a constant


def test_guide_euler_equals_pipeline_euler(tiny_model):
    """The guide's K_EULER (k-diffusion euler on the 'discrete' schedule) is diffusers'
    EulerDiscreteScheduler with linspace timesteps (its default, and what SD 1.5's config
    gives): same seed, same start (noise * sigma_max), same steps (integer for 10 steps)."""
    from convergence.run.runner import sample_batch
    res = sample_batch(tiny_model, _cells("K_EULER", "discrete", 10))
    ref = _pipeline_latents(tiny_model, "EulerDiscreteScheduler", 10)
    assert_same_image(tiny_model, res.samples, ref)


def test_guide_ddim_equals_pipeline_ddim(tiny_model):
    """The guide's DDIM (CompVis ``ddim`` on ``ddim_uniform``) takes DDIMScheduler's steps
    (SD config: steps_offset=1, leading spacing, final ā_0) and its start, z_T = noise
    (x = noise * sqrt(1 + sigma_0²)). It returns the VE sample at sigma(ā_0); the
    pipeline's latent there is z_0 = x * sqrt(ā_0), undone here."""
    from convergence.run.runner import sample_batch
    from convergence.samplers.schedules import get_sigmas
    steps = 10
    res = sample_batch(tiny_model, _cells("DDIM", "ddim_uniform", steps))
    s_end = float(get_sigmas(tiny_model, "ddim_uniform", steps)[-1])
    ref = _pipeline_latents(tiny_model, "DDIMScheduler", steps)
    ours = res.samples / math.sqrt(s_end**2 + 1)
    assert_same_image(tiny_model, ours, ref)


def test_sampler_backend_switches_family(tiny_model, study_config):
    from convergence.run.plan import expand
    for backend, names in (("k-diffusion", {"ddim", "euler"}),
                           ("diffusers", {"DDIMScheduler", "EulerDiscreteScheduler"})):
        cfg = study_config(samplers=["DDIM", "K_EULER"], steps=[4],
                           model={"name": "diffusers", "path": "x", "sampler_backend": backend})
        cells = expand(cfg, tiny_model.name, tiny_model.fingerprint())
        assert {c.sampler for c in cells} == names


def test_fp16_nan_names_the_cell(tiny_model, monkeypatch):
    """A NaN/inf from an fp16 UNet is reported as an error naming the cell."""
    from convergence.core.errors import ConvergenceError
    from convergence.run.runner import sample_batch
    unet = tiny_model.unet

    def overflowing(z, t, **kw):
        assert z.dtype == torch.float16  # the UNet input is cast to the model dtype
        return (z.new_full(z.shape, 6e4) * 2,)  # fp16 max is 65504: overflows to inf

    monkeypatch.setattr(unet, "forward", overflowing)
    monkeypatch.setattr(tiny_model, "dtype", torch.float16)
    cells = _cells("euler", "discrete", 4, seeds=(7, 8))
    with pytest.raises(ConvergenceError) as e:
        sample_batch(tiny_model, cells)
    msg = str(e.value)
    assert "NaN/inf" in msg and cells[0].hash in msg and "seed=7" in msg


def test_missing_path_and_non_diffusers_folder(tmp_path):
    from convergence.core.errors import ConvergenceError
    from convergence.models import build_model
    with pytest.raises(ConvergenceError, match="does not exist"):
        build_model(_model_cfg(tmp_path / "nope"), 32, 32)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "weights.txt").write_text("x")
    with pytest.raises(ConvergenceError, match="not a diffusers pipeline folder"):
        build_model(_model_cfg(tmp_path / "plain"), 32, 32)
    with pytest.raises(ConvergenceError, match="model.path"):
        build_model(_model_cfg(None), 32, 32)


def test_size_must_fit_the_vae(tiny_model):
    from convergence.core.errors import ConvergenceError
    with pytest.raises(ConvergenceError, match="multiple of 8"):
        tiny_model.validate_size(36, 32)


def test_study_through_the_cli(tiny_sd_path, tmp_path, cli, monkeypatch):
    """A small study (2 samplers x 4 step counts) through `convergence all` (run, analyze,
    report), offline. One torch thread: far faster on a shared 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = tmp_path / "results"
    study = ["model=diffusers", f"model.path={tiny_sd_path}", "model.device=cpu",
             "study=smoke", "name=tiny", f"results_dir={results}", "samplers=[DDIM,K_EULER]",
             "steps=[2,4,8,16]", "seeds_per_prompt=1", f"width={IMAGE_SIZE}",
             f"height={IMAGE_SIZE}", "progress=false"]
    r = cli("all", *study)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ran 16 cells" in r.stdout
    import pandas as pd
    from inprocess import main_status

    from convergence.analysis.inputs import META_COLUMNS
    from convergence.core.store import Store
    store = Store(results / "tiny")
    table = pd.read_parquet(store.table_path)
    assert len(table) == 16 and set(table["sampler"]) == {"ddim", "euler"}
    assert sorted(table.loc[table.sampler == "euler", "nfe"].unique()) == [2, 4, 8, 16]
    assert (results / "tiny" / "report" / "index.html").is_file()
    # a store written before the runner recorded the cells' metadata: the analysis fills
    # it from the configured pipeline (model.path), and finds the same key points
    points = pd.read_csv(results / "tiny" / "keypoints_seed.csv")
    store.table_path.unlink()
    store.append_rows(table.drop(columns=list(META_COLUMNS)).to_dict("records"))
    assert main_status("analyze", *study) == 0
    pd.testing.assert_frame_equal(pd.read_csv(results / "tiny" / "keypoints_seed.csv"), points)


@pytest.mark.parametrize("path_kind", ["missing", "plain"])
def test_cli_bad_path_is_one_line(tmp_path, capsys, path_kind):
    """In-process (a subprocess costs ~20 s of imports here): exit 2, one line, the path."""
    from convergence.cli import main
    path = tmp_path / "nope"
    if path_kind == "plain":
        path.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["run", "model=diffusers", f"model.path={path}", "study=smoke",
              f"results_dir={tmp_path}", "progress=false"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err
