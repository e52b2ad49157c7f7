"""The GPU path, tested where it can be on a CPU: failures raised inside diffusers'
own calls (out of memory anywhere, a poisoned CUDA context), dtypes that really
ran, devices refused before anything loads, one model resident at a time,
offload ordering, steps that really ran. CPU torch runs float16 and bfloat16,
so dtype paths are real here; tests/test_cuda.py covers what needs a GPU."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import plan_config, render_in_process, run_cli
from PIL import Image

from sweeper.rendering import devices, pipelines
from sweeper.launching import launch, run
from sweeper.storing import manifest
from sweeper.errors import DeviceFailed
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan
from sweeper.rendering.runtime import this_process

SMALL = dict(width=32, height=32, steps=2, device="cpu")


@pytest.fixture
def fresh(tiny_models, fresh_runtime):
    """Empty pipeline caches for this test (it changes modules and dtypes)."""
    return fresh_runtime


def jobs(*configs: dict) -> list[Job]:
    return [Job(n, plan_config(**{**SMALL, **config})) for n, config in enumerate(configs)]


def rows(out_dir: Path) -> pd.DataFrame:
    manifest.merge(out_dir)
    return pd.read_parquet(out_dir / manifest.MANIFEST)


def init_png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.indices((size, size)).sum(axis=0) * 7 % 256).astype("uint8")).convert("RGB").save(path)
    return path


# --- out of memory anywhere in the call -------------------------------------------------------


def _raise_once(error, when=lambda batch: batch > 1):
    """A forward pre-hook raising `error()` the first time it sees a batch `when` holds;
    it keeps a weak reference to the failed call's input to show it was freed."""
    state = {"raised": False, "inputs": []}

    def hook(module, args, kwargs=None):
        tensor = args[0] if args else next(iter(kwargs.values()))
        if not state["raised"] and when(tensor.shape[0]):
            state["raised"] = True
            state["inputs"].append(weakref.ref(tensor))
            raise error()
        if state["raised"]:
            state.setdefault("alive_at_retry", [ref() is not None for ref in state["inputs"]])

    return hook, state


@pytest.mark.parametrize(
    "where, dtype",
    [("vae", "float16"), ("unet", "bfloat16"), ("text_encoder", "float16"), ("refiner", "float16"), ("cublas", "float32")],
)
def test_out_of_memory_anywhere_in_the_call_recovers_by_halving(tmp_path, fresh, where, dtype):
    refiner = dict(refiner="tiny") if where == "refiner" else {}
    specs_jobs = jobs(dict(dtype=dtype, seed=[0, 1, 2, 3, 4, 5, 6, 7], batch_size=4, prompt=["a fox", "a cat"][:1], **refiner))
    prepared = run.prepare(specs_jobs, tmp_path)
    first = prepared.todo[0]
    base = pipelines.base_pipeline(this_process(), first, "cpu")
    if where == "cublas":
        error = lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")  # noqa: E731
    else:
        error = lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # noqa: E731
    if where == "vae":  # inside the decode, after diffusers upcast the VAE to float32 for it
        hook, state = _raise_once(error)
        handle = base.vae.decoder.register_forward_pre_hook(hook)
    elif where == "text_encoder":
        hook, state = _raise_once(error, when=lambda batch: True)  # prompts are encoded one at a time
        handle = base.text_encoder.register_forward_pre_hook(hook)
    elif where == "refiner":
        hook, state = _raise_once(error)
        handle = pipelines.refiner_pipeline(this_process(), first, base, "cpu").unet.register_forward_pre_hook(hook)
    else:
        hook, state = _raise_once(error)
        handle = base.unet.register_forward_pre_hook(hook)
    calls = []
    seen = [module.register_forward_pre_hook(lambda m, a: calls.append(a[0].dtype)) for module in (base.unet, base.vae.decoder)]
    summary = run.execute(prepared, tmp_path)
    handle.remove()
    for one in seen:
        one.remove()

    assert state["raised"] and summary.rendered == 8 and not summary.failed
    assert state["alive_at_retry"] == [False], "the failed call's tensors were still alive when the retry started"
    df = rows(tmp_path)
    assert set(df.status) == {"ok"} and sorted(df.batch_size) == [2, 2, 2, 2, 4, 4, 4, 4]  # the failed call halved, the next whole
    assert set(df.dtype) == {dtype}
    wanted = pipelines.TORCH_DTYPES[dtype]
    assert {p.dtype for module in base.components.values() if isinstance(module, torch.nn.Module) for p in module.parameters()} == {wanted}
    if dtype != "float16":  # under float16 diffusers decodes in float32 on purpose (force_upcast), then turns back
        assert set(calls) == {wanted}


def test_a_poisoned_cuda_context_stops_the_process_with_its_images_as_error_rows(tmp_path, fresh):
    prepared = run.prepare(jobs(dict(seed=[0, 1, 2, 3, 4, 5], batch_size=2)), tmp_path)
    base = pipelines.base_pipeline(this_process(), prepared.todo[0], "cpu")
    calls = []

    def poisoned(module, args):
        calls.append(1)
        if len(calls) == 5:  # the second batch (after the warm-up call's 2 steps and the first batch's 2)
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")

    handle = base.unet.register_forward_pre_hook(poisoned)
    with pytest.raises(DeviceFailed, match=r"^rank 0 on cpu: RuntimeError: CUDA error: an illegal memory access was encountered; .*run the same command again"):
        run.execute(prepared, tmp_path)
    handle.remove()
    assert len(calls) == 5, "no batch may run after the CUDA context failed"
    df = rows(tmp_path)
    assert len(df) == 6 and (df.status == "ok").sum() == 2
    assert df[df.status == "error"].error.str.contains("illegal memory access").all()
    assert len(run.prepare(jobs(dict(seed=[0, 1, 2, 3, 4, 5], batch_size=2)), tmp_path).todo) == 4  # a re-run renders the rest


# --- dtype is what the manifest says -----------------------------------------------------------


def test_every_unet_and_vae_call_runs_in_bfloat16_in_every_mode(tmp_path, fresh):
    init = init_png(tmp_path / "init.png")
    mask = init_png(tmp_path / "mask.png")
    configs = [
        dict(dtype="bfloat16", seed=[0, 1]),
        dict(dtype="bfloat16", seed=[0, 1], mode="img2img", init_image=str(init), strength=1.0),
        dict(dtype="bfloat16", seed=[0, 1], mode="inpaint", init_image=str(init), mask_image=str(mask), strength=1.0),
        dict(dtype="bfloat16", seed=[0, 1], refiner="tiny", steps=4),
    ]
    seen: list[tuple[str, torch.dtype, torch.dtype]] = []
    original = pipelines._ready

    def watched(pipe, spec, device):
        pipe = original(pipe, spec, device)
        for name in ("unet", "vae"):
            module = getattr(pipe, name)
            inner = [module] if name == "unet" else [module.encoder, module.decoder]
            for part in inner:
                part.register_forward_pre_hook(lambda m, a, k=None, n=name: seen.append((n, a[0].dtype, next(m.parameters()).dtype)) if a else None)
        return pipe

    pipelines._ready = watched
    try:
        for n, config in enumerate(configs):
            render_in_process(tmp_path / f"out{n}", jobs(config))
    finally:
        pipelines._ready = original
    assert {name for name, _, _ in seen} == {"unet", "vae"}
    assert {(inputs, weights) for _, inputs, weights in seen} == {(torch.bfloat16, torch.bfloat16)}
    for n in range(4):
        df = pd.read_parquet(tmp_path / f"out{n}" / manifest.MANIFEST)
        assert set(df.status) == {"ok"} and set(df.dtype) == {"bfloat16"}


# --- devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_cuda_torch_is_refused_before_anything_loads(tmp_path, device):
    result = run_cli("-m", "model=tiny", f"device={device}", "seed=0,1", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 2
    imports = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith(f"sweeper: error: invalid device={device}: this torch (")
    assert "built without CUDA" in lines[0]
    assert not (tmp_path / "outputs").exists()
    assert "hydra" in imports and "torch" not in imports  # refused from torch/version.py, without importing torch


def test_devices_are_checked_against_the_gpus_and_processes(monkeypatch):
    monkeypatch.setattr(devices, "torch_build", lambda: ("2.11.0+cu130", True))
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)
    cuda = plan([Job(0, plan_config(device="cuda"))])
    pinned = plan([Job(0, plan_config(device="cuda:1"))])
    run.check_devices(cuda, processes=2)
    run.check_devices(pinned, processes=1)
    with pytest.raises(PlanError, match=r"^3 processes would render on this machine's 2 GPU\(s\); start at most 2, or share GPUs on purpose with hydra.launcher.processes_per_gpu=N$"):
        run.check_devices(cuda, processes=3)
    run.check_devices(cuda, processes=4, processes_per_gpu=2)
    with pytest.raises(PlanError, match=r"^invalid device=cuda:1: it pins one GPU, but 2 processes render"):
        run.check_devices(pinned, processes=2)
    with pytest.raises(PlanError, match=r"^invalid device=cuda:2: only 2 GPU\(s\) are visible here \(cuda:0 \.\. cuda:1\)$"):
        run.check_devices(plan([Job(0, plan_config(device="cuda:2"))]))
    monkeypatch.setattr(devices, "torch_build", lambda: ("2.13.0+cpu", False))
    assert devices.auto_device() == "cpu" and launch.num_processes("auto") == 1  # a driver, but a CPU torch
    assert pinned[0].gpu == 1 and cuda[0].gpu is None and pinned[0].image_id == cuda[0].image_id  # where, not what


def test_each_process_takes_its_gpu_and_the_pinned_one(monkeypatch):
    monkeypatch.setattr(devices, "usable_gpus", lambda: 2)
    assert [launch._gpu(rank) for rank in range(4)] == [0, 1, 0, 1]
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    (spec,) = plan([Job(0, plan_config(device="cuda:1"))], auto_device="cuda")
    assert run.render_device(spec, gpu=0) == "cuda:1" and chosen == ["cuda:1"]
    (spec,) = plan([Job(0, plan_config(device="cuda"))], auto_device="cuda")
    assert run.render_device(spec, gpu=1) == "cuda:1"


# --- one model resident at a time ---------------------------------------------------------------


def test_switching_models_frees_the_previous_one_and_each_loads_once(tmp_path, fresh):
    # Jobs alternate between two models; the schedule groups them, so each loads once.
    configs = [dict(model=model, seed=seed) for seed in range(3) for model in ("tiny", "tiny-sd")]
    prepared = run.prepare(jobs(*configs), tmp_path)
    first = pipelines.base_pipeline(this_process(), prepared.todo[0], "cpu")
    gone = weakref.ref(first)
    unet = weakref.ref(first.unet)
    del first
    summary = run.execute(prepared, tmp_path)
    assert summary.rendered == 6
    assert [key[0] for key in this_process().loads] == ["tiny-sdxl", "tiny-sd"]
    gc.collect()
    assert gone() is None and unet() is None, "the first model is still held after the switch"
    assert len([key for key in this_process().residents if key[0] == "base"]) == 1


# --- offload and the options that change modules -----------------------------------------------


class _Recorder:
    """A stand-in pipeline that records what is done to it (offload needs a GPU)."""

    def __init__(self, calls: list) -> None:
        self.calls, self.scheduler = calls, type("S", (), {"config": {}})()
        self.unet = self.vae = self

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def test_offload_hooks_go_on_after_the_modules_are_final_and_move_with_the_pipeline(fresh):
    (spec,) = plan([Job(0, plan_config(fuse_qkv=True, channels_last=True))])
    spec = dataclasses.replace(spec, offload="model", device="cuda")
    calls: list[str] = []
    base, img2img = _Recorder(calls), _Recorder(calls)
    pipelines._ready(base, spec, "cuda:0")
    assert calls == ["set_progress_bar_config", "fuse_qkv_projections", "to", "to"]  # fused, channels_last; offload hooks come after
    calls.clear()
    for pipe in (base, base, img2img, base):
        pipelines.activate(this_process(), pipe, spec, "cuda:0")
    assert calls == ["enable_model_cpu_offload"] * 3  # once per switch between pipelines sharing modules


def test_compile_with_offload_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(devices, "torch_build", lambda: ("2.11.0+cu130", True))
    with pytest.raises(PlanError, match=r"^invalid compile=true: torch.compile and offload=model do not mix"):
        plan([Job(0, plan_config(device="cuda", offload="model", compile=True))])


# --- what really ran ----------------------------------------------------------------------------


def test_the_manifest_records_the_steps_each_model_really_ran(tmp_path, fresh):
    from sweeper.planning.validate import split_steps

    render_in_process(tmp_path, jobs(
        dict(refiner="tiny", steps=4, seed=0),
        dict(refiner="tiny", steps=10, seed=0, scheduler="dpmpp_2m_karras"),
        dict(steps=4, seed=0, mode="img2img", init_image=str(init_png(tmp_path / "init.png")), strength=0.5),
    ))
    df = pd.read_parquet(tmp_path / manifest.MANIFEST).sort_values("job_num")
    euler, karras, img2img = df.to_dict("records")
    assert (euler["base_steps"], euler["refiner_steps"]) == split_steps(4, 0.8, "ensemble") == (3, 1)
    assert karras["base_steps"] + karras["refiner_steps"] == 10 and karras["refiner_steps"] >= 1
    assert img2img["base_steps"] == 2 and pd.isna(img2img["refiner_steps"])  # int(4 * 0.5)
