"""Everything only a GPU can show, in one run: the first thing to run on a lent GPU.

    python scripts/gpu_check.py                 # CUDA: under 8 minutes on one H100/H200
    python scripts/gpu_check.py --device cpu    # the same steps at tiny sizes, so the script never rots

1. The tests marked `cuda` (tests/test_cuda.py): float16 and bfloat16 tiny
   renders, a real out-of-memory error from an oversized batch recovered by
   halving, both offload modes, compile modes, two spawned workers on one GPU.
2. The large-matmul peak of the device, measured (bfloat16 8192^3 on CUDA).
3. Full-size random-weight SDXL (scripts/sdxl_random.py) at 1024x1024, 30
   steps, CFG, rendered through sweeper's own render path: images/s, seconds
   per image and peak memory at batch 1/4/8/16, float16 against bfloat16,
   torch.compile off and on, and the fraction of the measured matmul peak
   (416 TFLOP per image: 6.76 TFLOP per UNet forward x 60 + 10.5 for the decode).
   With --device cpu: the tiny model at 64x64, 2 steps.

The last line is JSON: device, checks_passed, checks_failed, table. Rows that
do not fit the time budget (--budget-s) are listed as skipped, not guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UNET_TFLOP_1024 = 6.76
VAE_DECODE_TFLOP_1024 = 10.5


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def run_cuda_tests(device: str) -> dict:
    """pytest -m cuda, with SWEEPER_TEST_DEVICE=device; counts from its summary line."""
    env = {**os.environ, "SWEEPER_TEST_DEVICE": device, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs", str(REPO / "tests" / "test_cuda.py")]
    tic = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    counts = {kind: int(number) for number, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    log(f"cuda tests ({time.perf_counter() - tic:.0f} s): {summary}")
    if result.returncode not in (0, 5):
        print(result.stdout[-6000:], file=sys.stderr)
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0), "skipped": counts.get("skipped", 0), "summary": summary}


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


def row_specs(model: list[str], size: int, steps: int, device: str, dtype: str, batch: int, compile_mode: str | None):
    """The row's images planned as the command line would plan them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeper.app import config_dir
    from sweeper.plan import Job, plan

    overrides = [
        *model, f"device={device}", f"dtype={dtype}", f"width={size}", f"height={size}", f"steps={steps}", "guidance=5",
        f"seed=[{','.join(map(str, range(batch)))}]", f"batch_size={batch}", f"compile={compile_mode or 'false'}",
    ]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        config = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
    return plan([Job(0, config, tuple(overrides))], auto_device=device)


def measure_row(model: list[str], size: int, steps: int, device: str, dtype: str, batch: int, compile_mode: str | None, peak: float) -> dict:
    """One row: a warm-up call (2 steps: loads, compiles), then one timed call of `steps`."""
    import numpy as np
    import torch

    from sweeper.render import render_batch
    from sweeper.schedule import Batch

    render_device = "cuda:0" if device == "cuda" else device
    warm = row_specs(model, size, 2, device, dtype, batch, compile_mode)
    timed = row_specs(model, size, steps, device, dtype, batch, compile_mode)
    tic = time.perf_counter()
    render_batch(Batch(tuple(warm)), render_device)
    warm_s = time.perf_counter() - tic
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    tic = time.perf_counter()
    output = render_batch(Batch(tuple(timed)), render_device)
    _sync(device)
    seconds = time.perf_counter() - tic
    tflop = (UNET_TFLOP_1024 * steps * 2 + VAE_DECODE_TFLOP_1024) * (size * size) / 1024**2  # per SDXL image, CFG
    achieved = tflop * batch / seconds if device == "cuda" else None  # the tiny model's FLOPs are not SDXL's
    row = {
        "dtype": dtype, "compile": compile_mode or "off", "batch": batch, "images_per_s": round(batch / seconds, 3),
        "s_per_image": round(seconds / batch, 3), "warmup_s": round(warm_s, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "tflops": None if achieved is None else round(achieved, 1),
        "fraction_of_matmul_peak": None if achieved is None else round(achieved / peak, 3),
        "nan": bool(np.isnan(output.images).any()),
    }
    log(f"{dtype} compile={row['compile']} batch {batch}: {row['images_per_s']} img/s, {row['s_per_image']} s/img, "
        f"{row['peak_memory_gb']} GB, {row['tflops']} TFLOP/s ({row['fraction_of_matmul_peak']} of the matmul peak)")
    return row  # the next row's dtype or compile mode is another pipeline: loading it frees this one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, default=450, help="stop adding table rows after this many seconds (default 450)")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    log(f"device {name}, torch {torch.__version__}")
    tests = {"passed": 0, "failed": 0, "skipped": 0, "summary": "not run"} if args.no_tests else run_cuda_tests(args.device)
    peak = matmul_peak(args.device)
    log(f"large matmul: {peak:.1f} TFLOP/s")
    model, size, steps = model_setup(args.device)
    rows_wanted = [(dtype, None, batch) for dtype in ("float16", "bfloat16") for batch in (1, 4, 8, 16)]
    rows_wanted += [("bfloat16", "default", 8), ("bfloat16", "default", 1)]
    if args.device == "cpu":
        rows_wanted = [(dtype, None, batch) for dtype in ("float32", "bfloat16") for batch in (1, 4)]
    table, skipped, failed_rows = [], [], []
    for dtype, compile_mode, batch in rows_wanted:
        if time.perf_counter() - started > args.budget_s:
            skipped.append({"dtype": dtype, "compile": compile_mode or "off", "batch": batch})
            continue
        try:
            table.append(measure_row(model, size, steps, args.device, dtype, batch, compile_mode, peak))
        except Exception as error:  # a row that fails is a failed check, the others still run
            failed_rows.append({"dtype": dtype, "compile": compile_mode or "off", "batch": batch, "error": f"{type(error).__name__}: {error}"[:300]})
            log(f"row {dtype} compile={compile_mode} batch {batch} failed: {failed_rows[-1]['error']}")
    nan_rows = [row for row in table if row["nan"]]
    result = {
        "device": name, "torch": torch.__version__, "size": size, "steps": steps, "matmul_peak_tflops": round(peak, 1),
        "tests": tests, "checks_passed": tests["passed"] + len(table) - len(nan_rows),
        "checks_failed": tests["failed"] + len(failed_rows) + len(nan_rows),
        "table": table, "failed_rows": failed_rows, "skipped_rows": skipped, "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0 if result["checks_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
