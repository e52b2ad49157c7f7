"""What only a GPU can show, on the tiny models: half-precision renders, a real
out-of-memory error recovered by halving, CPU offload, torch.compile modes,
prompt editing's switched embeddings in float16, two spawned workers sharing one GPU.

Marked `cuda` and skipped without CUDA. `scripts/gpu_check.py` runs them on a
GPU; `SWEEPER_TEST_DEVICE=cpu` runs the ones that make sense on a CPU (what
`scripts/gpu_check.py --device cpu` does, so they never rot).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import only_dir, plan_config, run_cli

from sweeper.storing import manifest
from sweeper.rendering import pipelines
from sweeper.launching import run
from sweeper.planning.plan import Job
from sweeper.rendering.runtime import this_process

DEVICE = os.environ.get("SWEEPER_TEST_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="Requires: a CUDA GPU (or SWEEPER_TEST_DEVICE=cpu)"),
]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="Requires: a CUDA GPU (offload, the CUDA allocator, compile in reasonable time)")


@pytest.fixture
def fresh(tiny_models, fresh_runtime):
    yield
    if ON_GPU:
        torch.cuda.empty_cache()


def render(out_dir, **config) -> pd.DataFrame:
    config = {"device": DEVICE, "width": 64, "height": 64, "steps": 4, **config}
    jobs = [Job(0, plan_config(**config))]
    run.execute(run.prepare(jobs, out_dir), out_dir)
    manifest.merge(out_dir)
    return pd.read_parquet(out_dir / manifest.MANIFEST)


def pixels(out_dir, df: pd.DataFrame) -> np.ndarray:
    """The images in seed order (ids differ between dtypes and options, seeds do not)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(out_dir / path).convert("RGB"), dtype=np.int16) for path in df.sort_values("seed").path])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tiny_renders_in_half_precision_match_float32(tmp_path, fresh, dtype):
    half = render(tmp_path / dtype, dtype=dtype, seed=[0, 1, 2, 3])
    (base,) = this_process().pipes()  # the pipeline that rendered them, as it is after its decode
    assert {p.dtype for p in base.unet.parameters()} == {pipelines.TORCH_DTYPES[dtype]}
    assert {p.dtype for p in base.vae.parameters()} == {pipelines.TORCH_DTYPES[dtype]}, "the VAE stayed upcast after the decode"
    full = render(tmp_path / "float32", dtype="float32", seed=[0, 1, 2, 3])
    assert set(half.status) == {"ok"} and set(half.dtype) == {dtype}
    assert set(half.device) == ({"cuda:0"} if ON_GPU else {"cpu"})
    # The same pictures: random weights amplify rounding, so compare means, not pixels.
    assert np.abs(pixels(tmp_path / dtype, half) - pixels(tmp_path / "float32", full)).mean() < 12


@gpu_only
def test_a_real_out_of_memory_error_halves_the_batch_and_every_image_lands(tmp_path, fresh, capsys):
    # Measure one image's peak, then cap the allocator so that a batch of 16 cannot fit.
    torch.cuda.reset_peak_memory_stats()
    render(tmp_path / "one", dtype="float16", width=512, height=512, steps=2, seed=[0], batch_size=1)
    one = torch.cuda.max_memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(0.95, 4 * one / total))
    try:
        df = render(tmp_path / "many", dtype="float16", width=512, height=512, steps=2, seed=list(range(16)), batch_size=16)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert "out of memory with 16 images per call" in capsys.readouterr().err
    assert len(df) == 16 and set(df.status) == {"ok"} and df.batch_size.max() < 16
    (spec,) = run.prepare([Job(0, plan_config(device="cuda", dtype="float16", width=512, height=512))], tmp_path / "x").todo
    assert pipelines.base_pipeline(this_process(), spec, "cuda:0").vae.dtype == torch.float16  # not left upcast by the failed decode


@gpu_only
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_renders_what_the_gpu_alone_renders_in_every_mode(tmp_path, fresh, offload):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.fromarray((np.indices((64, 64)).sum(axis=0) * 5 % 256).astype("uint8")).convert("RGB").save(init)
    plain = render(tmp_path / "plain", seed=[0, 1])
    offloaded = render(tmp_path / offload, seed=[0, 1], offload=offload)
    again = render(tmp_path / f"{offload}-img2img", seed=[0, 1], offload=offload, mode="img2img", init_image=str(init), strength=0.6)
    back = render(tmp_path / f"{offload}-back", seed=[2], offload=offload)  # txt2img again: its hooks come back
    assert all(set(df.status) == {"ok"} for df in (offloaded, again, back))
    assert np.abs(pixels(tmp_path / "plain", plain) - pixels(tmp_path / offload, offloaded)).max() <= 2


@gpu_only
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_modes_render_the_same_images(tmp_path, fresh, mode):
    plain = render(tmp_path / "plain", seed=[0, 1], batch_size=2)
    compiled = render(tmp_path / mode, seed=[0, 1], batch_size=2, compile=mode)
    assert set(compiled.status) == {"ok"}
    assert np.abs(pixels(tmp_path / "plain", plain) - pixels(tmp_path / mode, compiled)).max() <= 3


@gpu_only
@pytest.mark.parametrize("offload", ["none", "model"])
def test_prompt_editing_hands_the_loop_each_steps_embeddings_in_its_dtype_and_device(tmp_path, fresh, offload):
    """A1111's prompt editing on CUDA in float16 (the step-end callback casts the next step's embeddings to the
    loop's dtype and device, model offload's too): an edit after the last step renders the first prompt's image."""
    settings = dict(dtype="float16", seed=[0], batch_size=1, offload=offload)
    edited = render(tmp_path / "edited", prompt=["a [cat:dog:0.99] fox", "a [cat|dog] fox"], **settings)
    plain = render(tmp_path / "plain", prompt=["a cat fox"], **settings)
    assert set(edited.status) == {"ok"} and set(edited.prompt_syntax) == {"a1111"}
    first = edited[edited.prompt == "a [cat:dog:0.99] fox"]
    assert np.array_equal(pixels(tmp_path / "edited", first), pixels(tmp_path / "plain", plain))


@pytest.mark.slow
def test_two_spawned_workers_share_one_gpu_when_asked(tmp_path, tiny_models):
    args = ["-m", "model=tiny", f"device={DEVICE}", "seed=0,1,2,3", "guidance=3,7", "steps=2", "hydra.launcher.num_processes=2"]
    if ON_GPU and torch.cuda.device_count() == 1:
        refused = run_cli(*args, cwd=tmp_path)
        assert refused.returncode == 2 and "processes_per_gpu" in refused.stderr
        args.append("hydra.launcher.processes_per_gpu=2")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(only_dir(tmp_path / "outputs" / "sweeps") / manifest.MANIFEST)
    assert len(df) == 8 and set(df.status) == {"ok"} and set(df["rank"]) == {0, 1}
    assert set(df.device) == ({f"cuda:{i}" for i in range(min(2, torch.cuda.device_count()))} if ON_GPU else {"cpu"})
