"""Pipelines in one process: each model loaded once, schedulers swapped without a
reload or a leak of kwargs, the refiner sharing the base's modules."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest

from sweeper.rendering import pipelines
from sweeper.launching import run
from sweeper.planning.plan import Job, plan
from sweeper.rendering.render import render_batch
from sweeper.rendering.runtime import this_process
from sweeper.planning.schedule import Batch

SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
}


def job(num: int, scheduler: str = "euler", refiner: str | None = None, **values) -> Job:
    class_name, kwargs = SCHEDULERS[scheduler]
    config = {
        "model": {"name": "tiny", "id": "tiny-sdxl", "family": "sdxl"},
        "refiner": {"name": "tiny", "id": "tiny-sdxl-refiner", "split": 0.5, "mode": "ensemble"} if refiner else None,
        "scheduler": {"name": scheduler, "class_name": class_name, "label": scheduler, "kwargs": kwargs},
        "prompt": "a red fox", "seed": 0, "guidance": 5.0, "steps": 2, "width": 64, "height": 64,
        "mode": "txt2img", "batch_size": "auto", "dtype": "auto", "device": "cpu", **values,
    }
    return Job(num, config, ())


@pytest.fixture
def fresh_cache(tiny_models, fresh_runtime, monkeypatch):
    """An empty pipeline cache, and a count of every from_pretrained call."""
    calls = []
    for cls in (diffusers.StableDiffusionXLPipeline, diffusers.StableDiffusionXLImg2ImgPipeline):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, *a, _o=original, **k: calls.append(c.__name__) or _o(c, *a, **k)))
    return calls


def test_a_multirun_loads_each_model_once_and_swaps_schedulers(tmp_path, fresh_cache):
    jobs = [job(n, scheduler, guidance=g) for n, (scheduler, g) in enumerate((s, g) for s in SCHEDULERS for g in (3.0, 7.0))]
    prepared = run.prepare(jobs, tmp_path)
    summary = run.execute(prepared, tmp_path)
    assert summary.rendered == 6 and not summary.failed
    assert fresh_cache == ["StableDiffusionXLPipeline"]
    (pipe,) = this_process().pipes()
    assert type(pipe.scheduler).__name__ == "DPMSolverSDEScheduler"  # the last scheduler of the sweep


def test_a_scheduler_swap_starts_from_the_models_own_config(fresh_cache):
    karras, euler = plan([job(0, "dpmpp_2m_karras"), job(1, "euler")])
    pipe = pipelines.base_pipeline(this_process(), karras, "cpu")
    pipelines.set_scheduler(this_process(), pipe, karras, [0])
    assert pipe.scheduler.config.use_karras_sigmas is True
    pipelines.set_scheduler(this_process(), pipe, euler, [0])
    assert type(pipe.scheduler) is diffusers.EulerDiscreteScheduler
    assert pipe.scheduler.config.use_karras_sigmas is False, "kwargs of one scheduler leaked into the next"


def test_the_refiner_reuses_the_bases_text_encoder_2_and_vae(fresh_cache):
    (spec,) = plan([job(0, refiner="tiny")])
    base = pipelines.base_pipeline(this_process(), spec, "cpu")
    refiner = pipelines.refiner_pipeline(this_process(), spec, base, "cpu")
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
    assert pipelines.refiner_pipeline(this_process(), spec, base, "cpu") is refiner
    assert fresh_cache == ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"]


def test_sde_noise_is_per_image_so_batching_keeps_each_image(fresh_cache):
    specs = plan([job(0, "dpmpp_sde_karras", seed=[5, 6])])
    together = render_batch(Batch(tuple(specs)), "cpu", this_process()).images
    alone = np.stack([render_batch(Batch((spec,)), "cpu", this_process()).images[0] for spec in specs])
    levels = np.abs(np.round(together * 255) - np.round(alone * 255))
    assert levels.max() <= 2
    assert np.abs(np.round(alone[0] * 255) - np.round(alone[1] * 255)).max() > 10  # and the seeds still differ


def test_the_invisible_watermark_is_on_only_when_asked(tmp_path, tiny_models):
    # The watermark encoder needs 256 x 256 at least (diffusers skips narrower images).
    size = dict(width=256, height=256, steps=1)
    plain = render_batch(Batch(tuple(plan([job(0, **size)]))), "cpu", this_process()).images
    (marked_spec,) = plan([job(0, watermark=True, **size)])
    marked = render_batch(Batch((marked_spec,)), "cpu", this_process()).images
    assert pipelines.base_pipeline(this_process(), marked_spec, "cpu").watermark is not None
    levels = np.abs(np.round(plain * 255) - np.round(marked * 255))
    assert 0 < levels.mean() < 10  # marked, and still the same picture
    assert marked_spec.watermark and marked_spec.image_id != plan([job(0, **size)])[0].image_id


def test_each_negative_size_conditioning_reaches_the_pipeline_and_changes_the_pixels(fresh_cache):
    """SDXL's negative micro-conditioning: with any one negative size set (plan fills the other two), the picture
    differs from the one without; render dropping the negative_* arguments would give the same picture."""
    cases = [{}, {"negative_original_size": [512, 512]}, {"negative_crops_coords_top_left": [16, 8]}, {"negative_target_size": [128, 128]}]
    levels = [np.round(render_batch(Batch(tuple(plan([job(0, **case)]))), "cpu", this_process()).images[0] * 255) for case in cases]
    plain = levels[0]
    for case, image in zip(cases[1:], levels[1:]):
        assert np.abs(image - plain).max() > 0, f"{case} left the pixels as they were"
