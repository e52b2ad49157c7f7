"""Everything only a GPU can show, in one run: the first thing to run on a lent GPU.

    python scripts/gpu_check.py                 # CUDA: under 8 minutes on one H100/H200
    python scripts/gpu_check.py --device cpu    # the same steps at tiny sizes, so the script never rots

1. The tests marked `cuda` (tests/test_cuda.py): float16 and bfloat16 tiny
   renders, a real out-of-memory error from an oversized batch recovered by
   halving, both offload modes, compile modes, A1111 prompt editing in float16
   (with and without offload), two spawned workers on one GPU.
2. Dtype drift: the tiny model's float16 and bfloat16 images against its float32
   ones (and those against the CPU's), with SDPA and eager attention, measured
   against the distance between two seeds' images. On the first H200 run
   (2026-12-04) tiny half-precision renders came out as far from float32 as
   another seed (mean 49 levels) while the CPU drifts 0.1-0.6: this says which
   kernel or dtype makes the difference.
3. The large-matmul peak of the device, measured (bfloat16 8192^3 on CUDA).
4. Full-size random-weight SDXL (scripts/sdxl_random.py) at 1024x1024, 30
   steps, CFG, rendered through sweeper's own render path: images/s, seconds
   per image and peak memory at batch 1/4/8/16, float16 against bfloat16,
   torch.compile off and on, and the fraction of the measured matmul peak
   (416 TFLOP per image: 6.76 TFLOP per UNet forward x 60 + 10.5 for the decode).
   With --device cpu: the tiny model at 64x64, 2 steps.
5. Full-size random-weight FLUX.1-dev (scripts/flux_random.py: the real
   transformer and VAE configs, built on the GPU in bfloat16, in memory, never
   saved) at 1024x1024, 28 steps, batch 1/2/4, eager then compiled, called
   through diffusers' FluxPipeline directly: seconds per
   image beside the goal (under 4 s on one H200) and xDiT's published H100
   anchor (6.7 s eager, 4.3 s compiled), peak memory, and the fraction of the
   measured matmul peak (2093 TFLOP per image: 74.4 TFLOP per transformer
   forward x 28 + 10.5 for the decode). The text encoders are not built (T5-XXL
   is 4.7 B parameters and runs once per prompt, not per step): random
   prompt_embeds (B, 512, 4096) and pooled_prompt_embeds (B, 768) are passed in.
   Runs before the SDXL rows, which a tight --budget-s then skips.
   With --device cpu: 1 double + 1 single block of width 32, 64x64, 2 steps, float32.

6. Scoring overhead (score=[clip,aesthetic]): a random-weight CLIP ViT-L/14 of
   openai/clip-vit-large-patch14's config (bench.clip_l_random, built on the GPU,
   no hub) with the aesthetic head scores 16 random 1024x1024 images as the render
   loop would; its milliseconds per image over the SDXL table's fastest seconds
   per image is the overhead, against the goal of at most 5%.
   With --device cpu: the tiny scorers on 64x64 images, against the tiny table.

The last line is JSON: device, checks_passed, checks_failed, table, flux_table, scoring. Rows that
do not fit the time budget (--budget-s) are listed as skipped, not guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UNET_TFLOP_1024 = 6.76
VAE_DECODE_TFLOP_1024 = 10.5
FLUX_GOAL_S_PER_IMAGE = 4.0  # issue 28: FLUX.1-dev, 1024x1024, 28 steps, on one H200
FLUX_H100_S_PER_IMAGE = {"off": 6.7, "default": 4.3}  # xDiT's published FLUX.1-dev on one H100, eager and compiled


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def run_cuda_tests(device: str, timeout_s: float) -> dict:
    """pytest -m cuda with SWEEPER_TEST_DEVICE=device, judged strictly from its JUnit XML: a non-zero
    exit, a timeout, a failure, or a skip on CUDA (every test there must run) fails the check. On the
    CPU only the tests that say they need a CUDA GPU may skip."""
    import tempfile
    import xml.etree.ElementTree as ElementTree

    env = {**os.environ, "SWEEPER_TEST_DEVICE": device, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                   f"--junitxml={report}", str(REPO / "tests" / "test_cuda.py")]
        tic = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log(f"cuda tests: timed out after {timeout_s:.0f} s")
            return {"passed": 0, "failed": 1, "skipped": 0, "expected": None, "summary": f"timed out after {timeout_s:.0f} s"}
        cases = ElementTree.parse(report).getroot().iter("testcase") if report.exists() else []
        outcomes = [_outcome(case) for case in cases]
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    passed = sum(1 for kind, _ in outcomes if kind == "passed")
    allowed_skips = sum(1 for kind, why in outcomes if kind == "skipped" and device == "cpu" and "Requires: a CUDA GPU" in why)
    expected = len(outcomes) - allowed_skips
    failed = expected - passed
    if result.returncode != 0 or not outcomes:
        failed = max(failed, 1)
    log(f"cuda tests ({time.perf_counter() - tic:.0f} s, exit {result.returncode}): {passed} of {expected} expected passed; {summary}")
    if failed:
        print(result.stdout[-6000:], result.stderr[-2000:], file=sys.stderr)
    return {"passed": passed, "failed": failed, "skipped": len(outcomes) - passed - sum(1 for k, _ in outcomes if k == "failed"),
            "expected": expected, "exit": result.returncode, "summary": summary}


def _outcome(case) -> tuple[str, str]:
    """(passed|failed|skipped, message) of one JUnit testcase element."""
    for child in case:
        if child.tag in ("failure", "error"):
            return "failed", child.get("message", "")
        if child.tag == "skipped":
            return "skipped", child.get("message", "")
    return "passed", ""


def matmul_peak(device: str) -> float:
    """TFLOP/s of a large bfloat16 matmul (float32 on the CPU), the practical ceiling."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    repeats = 20 if device == "cuda" else 3
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - tic) / 1e12


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_setup(device: str) -> tuple[list[str], int, int]:
    """(model overrides, size, steps): SDXL with random weights on CUDA, the tiny model on the CPU."""
    if device == "cuda":
        sys.path.insert(0, str(HERE))
        from sdxl_random import sdxl_random_dir

        model_dir = sdxl_random_dir("cuda", "bfloat16", log=log)  # loaded in each row's dtype
        return ["model=sdxl", f"model.id={model_dir}", "model.name=sdxl-random"], 1024, 30
    return ["model=tiny"], 64, 2


def row_specs(model: list[str], size: int, steps: int, device: str, dtype: str, batch: int, compile_mode: str | None, extra: tuple[str, ...] = ()):
    """The row's images planned as the command line would plan them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeper.app import config_dir
    from sweeper.planning.plan import Job, plan

    overrides = [
        *model, f"device={device}", f"dtype={dtype}", f"width={size}", f"height={size}", f"steps={steps}", "guidance=5",
        f"seed=[{','.join(map(str, range(batch)))}]", f"batch_size={batch}", f"compile={compile_mode or 'false'}", *extra,
    ]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        config = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    return plan([Job(0, config, tuple(overrides))], auto_device=device)


def measure_row(model: list[str], size: int, steps: int, device: str, dtype: str, batch: int, compile_mode: str | None, peak: float) -> dict:
    """One row: a warm-up call (2 steps: loads, compiles), then one timed call of `steps`."""
    import numpy as np
    import torch

    from sweeper.rendering import pipelines
    from sweeper.rendering.render import render_batch
    from sweeper.rendering.runtime import this_process
    from sweeper.planning.schedule import Batch

    runtime = this_process()  # one base model resident: the next row's dtype or compile mode replaces this one
    render_device = "cuda:0" if device == "cuda" else device
    warm = row_specs(model, size, 2, device, dtype, batch, compile_mode)
    timed = row_specs(model, size, steps, device, dtype, batch, compile_mode)
    tic = time.perf_counter()
    render_batch(Batch(tuple(warm)), render_device, runtime)
    warm_s = time.perf_counter() - tic
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    tic = time.perf_counter()
    output = render_batch(Batch(tuple(timed)), render_device, runtime)
    _sync(device)
    seconds = time.perf_counter() - tic
    tflop = (UNET_TFLOP_1024 * steps * 2 + VAE_DECODE_TFLOP_1024) * (size * size) / 1024**2  # per SDXL image, CFG
    base = pipelines.base_pipeline(runtime, timed[0], render_device)  # the resident pipeline that just rendered
    ran = {"unet": _dtype_name(base.unet.dtype), "vae": _dtype_name(base.vae.dtype), "device": str(base.unet.device)}
    achieved = tflop * batch / seconds if device == "cuda" else None  # the tiny model's FLOPs are not SDXL's
    row = {
        "dtype": ran["unet"], "asked_dtype": dtype, "vae_dtype": ran["vae"], "ran_on": ran["device"], "compile": compile_mode or "off", "batch": batch, "images_per_s": round(batch / seconds, 3),
        "s_per_image": round(seconds / batch, 3), "warmup_s": round(warm_s, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "tflops": None if achieved is None else round(achieved, 1),
        "fraction_of_matmul_peak": None if achieved is None else round(achieved / peak, 3),
        "nan": bool(np.isnan(output.images).any()),
    }
    log(f"{dtype} compile={row['compile']} batch {batch}: {row['images_per_s']} img/s, {row['s_per_image']} s/img, "
        f"{row['peak_memory_gb']} GB, {row['tflops']} TFLOP/s ({row['fraction_of_matmul_peak']} of the matmul peak)")
    return row


def flux_setup(device: str) -> dict:
    """FLUX.1-dev with random weights, built in memory: full size in bfloat16 on CUDA, the tiny config in float32 on
    the CPU; its size, steps and FLOPs per image."""
    sys.path.insert(0, str(HERE))
    import flux_random

    tiny = device == "cpu"
    dtype, size, steps = ("float32", 64, 2) if tiny else ("bfloat16", 1024, 28)
    tic = time.perf_counter()
    pipe = flux_random.build(device, dtype, tiny=tiny)
    pipe.set_progress_bar_config(disable=True)
    _sync(device)
    counts = flux_random.parameter_counts(pipe)
    flops = flux_random.image_flops(size, steps, tiny=tiny)
    info = {"model": "flux-tiny" if tiny else "flux-random", "dtype": dtype, "size": size, "steps": steps,
            "built_s": round(time.perf_counter() - tic, 1), "parameters": counts,
            "text_encoders": "not built: random prompt_embeds (B, %d, %d) and pooled_prompt_embeds (B, %d) passed in"
                             % (flux_random.configs(tiny)[2], pipe.transformer.config.joint_attention_dim, pipe.transformer.config.pooled_projection_dim),
            "transformer_tflop_per_forward": _significant(flops["transformer_forward"] / 1e12),
            "vae_decode_tflop": _significant(flops["vae_decode"] / 1e12), "tflop_per_image": _significant(flops["image"] / 1e12)}
    log(f"{info['model']}: built on {device} in {dtype} in {info['built_s']} s (in memory, not saved); parameters: "
        + ", ".join(f"{name} {count / 1e6:.4g} M" for name, count in counts.items())
        + f"; {info['tflop_per_image']:.6g} TFLOP per image; text encoders {info['text_encoders']}")
    return {"pipe": pipe, "flops": flops, "info": info, "compiled": None,
            "prompt_embeds": lambda batch: flux_random.random_prompt_embeds(pipe, batch, device, tiny=tiny)}


def measure_flux_row(flux: dict, device: str, batch: int, compile_mode: str | None, peak: float) -> dict:
    """One FLUX row: a warm-up call (2 steps: compiles when asked), then one timed call of the full steps."""
    import numpy as np
    import torch

    pipe, info = flux["pipe"], flux["info"]
    if compile_mode and flux["compiled"] != compile_mode:
        pipe.transformer.compile(mode=compile_mode)  # in place, as sweeper compiles the UNet; rows after it stay compiled
        flux["compiled"] = compile_mode
    embeds, pooled = flux["prompt_embeds"](batch)

    def call(steps: int) -> np.ndarray:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(batch)]
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=info["size"], width=info["size"], num_inference_steps=steps,
                    guidance_scale=3.5, generator=generators, output_type="np").images

    tic = time.perf_counter()
    call(2)
    _sync(device)
    warm_s = time.perf_counter() - tic
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    images = call(info["steps"])
    _sync(device)
    seconds = time.perf_counter() - tic
    achieved = flux["flops"]["image"] * batch / seconds / 1e12
    compiled = compile_mode or "off"
    full_size = info["model"] == "flux-random"
    row = {
        "model": info["model"], "dtype": _dtype_name(pipe.transformer.dtype), "asked_dtype": info["dtype"], "vae_dtype": _dtype_name(pipe.vae.dtype),
        "ran_on": str(pipe.transformer.device), "compile": compiled, "batch": batch, "images": int(images.shape[0]),
        "s_per_image": round(seconds / batch, 3), "images_per_s": round(batch / seconds, 3), "warmup_s": round(warm_s, 3),
        "goal_s_per_image": FLUX_GOAL_S_PER_IMAGE if full_size else None,
        "meets_goal": seconds / batch < FLUX_GOAL_S_PER_IMAGE if full_size else None,
        "h100_anchor_s_per_image": FLUX_H100_S_PER_IMAGE.get(compiled) if full_size else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "tflop_per_image": info["tflop_per_image"], "tflops": _significant(achieved), "fraction_of_matmul_peak": _significant(achieved / peak),
        "nan": bool(np.isnan(images).any()),
    }
    goal = f" (goal < {FLUX_GOAL_S_PER_IMAGE} s on one H200; H100 anchor {row['h100_anchor_s_per_image']} s)" if full_size else ""
    log(f"{info['model']} {row['dtype']} compile={compiled} batch {batch}: {row['s_per_image']} s/img{goal}, {row['images_per_s']} img/s, "
        f"{row['peak_memory_gb']} GB, {row['tflops']} TFLOP/s ({row['fraction_of_matmul_peak']} of the matmul peak)")
    return row


def flux_rows(device: str, peak: float, over_budget, result: dict, save) -> None:
    """The FLUX table: eager rows first (cheap), then compiled ones; a row past the budget is skipped. The pipeline
    is freed at the end so the SDXL rows' peak memory is theirs alone."""
    import gc

    import torch

    wanted = [(None, 1), (None, 2), (None, 4), ("default", 1), ("default", 2), ("default", 4)] if device == "cuda" else [(None, 1), (None, 2)]
    flux = None
    for compile_mode, batch in wanted:
        model = "flux-tiny" if device == "cpu" else "flux-random"
        if over_budget():
            result["skipped_rows"].append({"model": model, "dtype": "float32" if device == "cpu" else "bfloat16", "compile": compile_mode or "off", "batch": batch})
            continue
        try:
            if flux is None:
                flux = flux_setup(device)
                result["flux"] = flux["info"]
            row = measure_flux_row(flux, device, batch, compile_mode, peak)
            row["problems"] = row_problems(row, device)
            result["flux_table"].append(row)
        except Exception as error:  # a row that fails is a failed check, the others still run
            failed = {"model": model, "compile": compile_mode or "off", "batch": batch, "error": f"{type(error).__name__}: {error}"[:300]}
            result["failed_rows"].append(failed)
            log(f"{model} row compile={compile_mode} batch {batch} failed: {failed['error']}")
        save()
    del flux
    gc.collect()
    if device == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()


DRIFT_SEEDS = 4


def dtype_drift(device: str) -> dict:
    """How far the tiny model's half-precision images are from its float32 ones (mean |difference|,
    0..255), on `device` with each attention kernel and against the CPU's float32, measured against how
    far apart two seeds' images are. Rounding drift is a small fraction of that distance (on the CPU
    ~0.1-0.6 levels against ~45); drift as large as another seed's image means a broken dtype path."""
    import numpy as np

    from sweeper.rendering.render import render_batch
    from sweeper.rendering.runtime import Runtime
    from sweeper.planning.schedule import Batch

    def images(render_device: str, dtype: str, attention: str) -> np.ndarray:
        specs = row_specs(["model=tiny"], 64, 4, render_device.split(":")[0], dtype, DRIFT_SEEDS, None, (f"attention={attention}",))
        return render_batch(Batch(tuple(specs)), render_device, Runtime()).images * 255

    render_device = "cuda:0" if device == "cuda" else device
    reference = images("cpu", "float32", "sdpa")
    seed_distance = float(np.mean([np.abs(reference[i] - reference[(i + 1) % DRIFT_SEEDS]).mean() for i in range(DRIFT_SEEDS)]))
    drift = {}
    for attention in ("sdpa", "eager") if device == "cuda" else ("sdpa",):  # the attention kernels differ on CUDA
        full = reference if device == "cpu" and attention == "sdpa" else images(render_device, "float32", attention)
        drift[f"float32_{attention}_vs_cpu_float32"] = round(float(np.abs(full - reference).mean()), 2)
        for dtype in ("float16", "bfloat16"):
            drift[f"{dtype}_{attention}_vs_float32"] = round(float(np.abs(images(render_device, dtype, attention) - full).mean()), 2)
    problems = [f"{name}: {value} levels, {value / seed_distance:.0%} of another seed's distance"
                for name, value in drift.items() if value > seed_distance / 4]
    log(f"dtype drift (another seed: {seed_distance:.1f} levels): {drift}")
    return {"seed_distance": round(seed_distance, 2), "drift": drift, "problems": problems}


def _significant(value: float) -> float:
    """Four significant digits: the tiny model's TFLOP counts are millionths."""
    return float(f"{value:.4g}")


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def row_problems(row: dict, device: str) -> list[str]:
    """Why a measured row does not count as a passed check: NaN pixels, or not what was asked for."""
    problems = ["NaN in the images"] if row["nan"] else []
    if row["dtype"] != row["asked_dtype"]:
        problems.append(f"the UNet or transformer ran in {row['dtype']}, not {row['asked_dtype']}")
    if row["vae_dtype"] != row["asked_dtype"]:
        problems.append(f"the VAE stayed {row['vae_dtype']} after the call")
    if not row["ran_on"].startswith(device):
        problems.append(f"the UNet or transformer ran on {row['ran_on']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, default=450, help="stop adding table rows after this many seconds (default 450)")
    parser.add_argument("--tests-timeout-s", type=float, default=300, help="the pytest step fails past this (default 300)")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the result here, rewritten after every row")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    log(f"device {name}, torch {torch.__version__}")
    result = {"device": name, "torch": torch.__version__, "tests": {"summary": "not run"}, "table": [], "flux_table": [], "failed_rows": [], "skipped_rows": []}

    def save() -> None:
        drift_ok = "dtype_drift" in result and not result["dtype_drift"]["problems"]
        rows = result["table"] + result["flux_table"] + ([result["scoring"]] if "scoring" in result else [])
        result["checks_passed"] = result["tests"].get("passed", 0) + sum(1 for row in rows if not row["problems"]) + drift_ok
        result["checks_failed"] = (result["tests"].get("failed", 0) + len(result["failed_rows"])
                                   + sum(1 for row in rows if row["problems"])
                                   + len(result.get("dtype_drift", {}).get("problems", [])))
        result["wall_s"] = round(time.perf_counter() - started, 1)
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=1))

    if not args.no_tests:
        result["tests"] = run_cuda_tests(args.device, args.tests_timeout_s)
        save()
    result["dtype_drift"] = dtype_drift(args.device)
    save()
    peak = matmul_peak(args.device)
    result["matmul_peak_tflops"] = round(peak, 3)
    log(f"large matmul: {peak:.1f} TFLOP/s")
    flux_rows(args.device, peak, lambda: time.perf_counter() - started > args.budget_s, result, save)
    model = None  # built for the first row that fits the budget
    # Most telling first: a row past the budget is skipped, not guessed.
    rows_wanted = [(dtype, None, batch) for batch in (1, 4) for dtype in ("bfloat16", "float16")]
    rows_wanted += [("bfloat16", None, 8), ("float16", None, 8), ("bfloat16", "default", 1), ("bfloat16", "default", 8),
                    ("bfloat16", None, 16), ("float16", None, 16)]
    if args.device == "cpu":
        rows_wanted = [("float32", None, 1), ("bfloat16", None, 2)]
    for dtype, compile_mode, batch in rows_wanted:
        if time.perf_counter() - started > args.budget_s:
            result["skipped_rows"].append({"dtype": dtype, "compile": compile_mode or "off", "batch": batch})
            continue
        if model is None:
            model, size, steps = model_setup(args.device)
            result.update(size=size, steps=steps)
        try:
            row = measure_row(model, size, steps, args.device, dtype, batch, compile_mode, peak)
            row["problems"] = row_problems(row, args.device)
            result["table"].append(row)
        except Exception as error:  # a row that fails is a failed check, the others still run
            failed = {"dtype": dtype, "compile": compile_mode or "off", "batch": batch, "error": f"{type(error).__name__}: {error}"[:300]}
            result["failed_rows"].append(failed)
            log(f"row {dtype} compile={compile_mode} batch {batch} failed: {failed['error']}")
        save()
    if result["table"]:
        try:
            result["scoring"] = scoring_row(args.device, min(row["s_per_image"] for row in result["table"]))
        except Exception as error:  # a failed check, not a crash: the table stands
            result["failed_rows"].append({"scoring": True, "error": f"{type(error).__name__}: {error}"[:300]})
    save()
    print(json.dumps(result))
    return 0 if result["checks_failed"] == 0 and result["table"] else 1


SCORING_GOAL = 0.05  # issue 29: CLIP-L scoring costs at most 5% of a sweep's render time


def scoring_row(device: str, render_s_per_image: float) -> dict:
    """Scoring overhead (module docstring, 6): CLIP-L on CUDA, the tiny scorers on the CPU."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench import clip_l_random, scoring_ms_per_image

    from sweeper.scoring import models

    if device == "cuda":
        scorer, size, name = clip_l_random("cuda:0"), 1024, "clip-l-random"
    else:
        scorer, size, name = models.load(models.Scoring(("clip", "aesthetic"), "tiny-clip", "tiny-aesthetic", "tiny-clip", "tiny-clip"), "cpu")[0], 64, "tiny-clip"
    arrays = list(np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8))
    ms = scoring_ms_per_image(scorer, arrays, ["a photograph of an astronaut riding a horse"] * len(arrays), "cuda:0" if device == "cuda" else device)
    overhead = ms / 1000 / render_s_per_image
    row = {"scorer": name, "size": size, "ms_per_image": round(ms, 2), "render_s_per_image": render_s_per_image, "overhead": round(overhead, 6),
           "goal": SCORING_GOAL if device == "cuda" else None}
    row["problems"] = [f"scoring costs {overhead:.1%} of rendering, over the {SCORING_GOAL:.0%} goal"] if device == "cuda" and overhead > SCORING_GOAL else []
    log(f"scoring ({name}, {size} px): {ms:.1f} ms/image, {overhead:.2%} of {render_s_per_image} s/image rendering")
    return row


if __name__ == "__main__":
    sys.exit(main())
