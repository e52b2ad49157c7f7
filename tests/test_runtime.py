"""The runtime: one owner for a process's pipelines, their caches and the seed nonce."""

from __future__ import annotations

import gc
import weakref

from conftest import plan_config

from sweeper.launching import run
from sweeper.planning.plan import Job, plan
from sweeper.rendering.render import render_batch
from sweeper.rendering.runtime import Runtime
from sweeper.planning.schedule import Batch

SMALL = dict(width=32, height=32, steps=2, device="cpu")


def specs(**config) -> list:
    return plan([Job(0, plan_config(**{**SMALL, **config}))])


def test_two_runtimes_in_one_process_share_nothing(tiny_models, tmp_path):
    one, two = Runtime(), Runtime()
    (spec,) = specs(seed=0)
    render_batch(Batch((spec,)), "cpu", one)
    (first,) = one.pipes()
    assert len(one.embeddings) == 1 and one.resident(first).schedulers and one.resident(first).warmed
    assert not two.residents and not two.embeddings and not two.loads, "rendering with one runtime filled the other"

    out = render_batch(Batch((spec,)), "cpu", two)
    (second,) = two.pipes()
    assert second is not first and one.pipes() == [first], "the second runtime loaded its own model and left the first one's alone"
    assert out.warmup_seconds is not None and out.load_seconds is not None  # the first call of this runtime's pipeline, whatever the other did
    assert all(key[0] is first for key in one.embeddings) and all(key[0] is second for key in two.embeddings)
    assert one.resident(first).schedulers is not two.resident(second).schedulers


def test_the_seed_nonce_is_the_runtimes(tmp_path):
    jobs = [Job(0, plan_config(seed=-1, **SMALL))]
    seeds = [run.prepare(jobs, tmp_path, runtime=Runtime(seed_nonce=nonce)).specs[0].seed for nonce in (1, 1, 2)]
    assert seeds[0] == seeds[1] != seeds[2]


def test_a_new_model_evicts_the_old_one_and_everything_cached_for_it(tiny_models):
    runtime = Runtime()
    (sdxl,) = specs(seed=0)
    assert render_batch(Batch((sdxl,)), "cpu", runtime).warmup_seconds is not None
    (old,) = runtime.pipes()
    gone, unet = weakref.ref(old), weakref.ref(old.unet)
    assert runtime.embeddings and runtime.resident(old).schedulers
    del old

    (sd,) = specs(model="tiny-sd", seed=0)
    out = render_batch(Batch((sd,)), "cpu", runtime)
    gc.collect()
    assert gone() is None and unet() is None, "the first model is still held after the switch"
    (new,) = runtime.pipes()
    assert [key[0] for key in runtime.loads] == ["tiny-sdxl", "tiny-sd"]
    assert [key[1][0] for key in runtime.residents] == ["tiny-sd"]
    assert len(runtime.embeddings) == 1 and all(key[0] is new for key in runtime.embeddings), "embeddings of the old model stayed"
    assert out.warmup_seconds is not None and runtime.hooked is None
