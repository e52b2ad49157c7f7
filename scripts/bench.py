"""Benchmark: sweeper against the diffusers loops a user would write.

The same images are rendered three times, each in a cold subprocess timed
wall to wall (interpreter start, imports and model loading included):

  loop          a temp script: import diffusers, `StableDiffusionXLPipeline.from_pretrained`
                once, then for every (seed, guidance) one call with its own
                `torch.Generator().manual_seed(seed)` and `image.save(...)`;
  batched_loop  the same, as a careful user writes it: for every guidance the prompt
                encoded once (`pipe.encode_prompt`), then one call per chunk of seeds
                with the embeddings repeated to the chunk and one generator per seed;
                chunks as large as the batch sweeper picks (`schedule.auto_batch_size`,
                or --batch-size when it is an int);
  sweeper       `python -m sweeper -m model=tiny seed=range(0,S) guidance=a,b,.. steps=..
                width=.. height=.. hydra.sweep.dir=<tmp>` (HF_HUB_OFFLINE=1).

Per-image times (`*_ms_per_image`) are render time only on all three sides, PNG
writing apart (`*_save_ms_per_image` for the loops; sweeper writes its PNGs off the
critical path); the loops leave SDXL's invisible watermark off, as sweeper does.

Then it checks that sweeper holds the same set of images as each loop (count,
and the pixels of every pair with the same seed and guidance: bit-identical
with --batch-size 1, within 2 levels with batching; the batched loop's,
batched alike, bit-identical so far), times `python -m sweeper --help` plus
planning 100,000 images (dry_run), and prints one JSON line last; `ratio` is
sweeper / loop, `sweeper_vs_batched_loop` sweeper / batched_loop.

    python scripts/bench.py                              # tiny SDXL, CPU, 32 seeds x 8 guidance, 64x64, 4 steps
    python scripts/bench.py --seeds 4 --guidance 5,7 --no-plan       # quicker
    python scripts/bench.py --batch-size 1 --seeds 4     # bit-identical check
    python scripts/bench.py --model sdxl-random --device cuda          # full-size SDXL, random weights, 1024x1024, 30 steps
    python scripts/bench.py --model sdxl-random --device cpu --size 128 --steps 1 --seeds 1 --guidance 5   # smoke test
    python scripts/bench.py --launcher slurm-local       # a local SLURM-style array against num_processes=2
    python scripts/bench.py --launcher ray               # 2 Ray actors (a local Ray) against num_processes=2

Scoring (score=[clip,aesthetic]): the sweep's own PNGs are scored in this
process as the render loop scores them (sweeper.scoring.metrics.Scorer), timed
after a warm-up: `scoring_ms_per_image`, and `scoring_overhead` = that over
sweeper's render time per image (goal on a GPU: <= 0.05). The tiny model is
scored by the tiny scorers; `sdxl-random` (or --score-model clip-l) by a
random-weight CLIP ViT-L/14 built on the device from openai/clip-vit-large-patch14's
config (clip_l_random: no hub) with a 768-wide aesthetic head.

`sdxl-random` is SDXL base built from its real configs with random weights
(scripts/sdxl_random.py), saved once into the cache and loaded by both sides
from that dir (`model=sdxl model.id=<dir>` for sweeper). Its JSON adds images/s
and the fraction of the GPU's peak, at (6.76 x UNet forwards + 10.5) TFLOP per
1024x1024 image (416 for 30 steps with CFG), scaled by pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"  # conf/config.yaml's prompt
UNET_TFLOP_1024 = 6.76  # SDXL base UNet, one 1024x1024 forward (DESIGN.md section 4)
VAE_DECODE_TFLOP_1024 = 10.5
PLAN_IMAGES = 100_000

# What a user writes: load once, one generator per image, save each PNG.
LOOP_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from diffusers import StableDiffusionXLPipeline
t_import = time.perf_counter()

a = json.loads(sys.argv[1])
# sweeper leaves the invisible watermark off by default: so do the loops, or they pay for it and differ in pixels
pipe = StableDiffusionXLPipeline.from_pretrained(a["model_dir"], dtype=getattr(torch, a["dtype"]), add_watermarker=False)
pipe = pipe.to(a["device"])
pipe.set_progress_bar_config(disable=True)
t_load = time.perf_counter()

render, save = [], []
for seed in a["seeds"]:
    for guidance in a["guidance"]:
        tic = time.perf_counter()
        image = pipe(
            a["prompt"],
            num_inference_steps=a["steps"],
            guidance_scale=guidance,
            width=a["size"],
            height=a["size"],
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        toc = time.perf_counter()
        image.save(f"{a['out']}/seed{seed}_guidance{guidance:g}.png")
        render.append(toc - tic)
        save.append(time.perf_counter() - toc)
t_end = time.perf_counter()
print(json.dumps(dict(import_s=t_import - t0, load_s=t_load - t_import, loop_s=t_end - t_load, render_s=render, save_s=save)))
'''

# What a careful user writes: the prompt encoded once per guidance, seeds in
# chunks of sweeper's batch size (it batches only images of equal guidance).
BATCHED_LOOP_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from diffusers import StableDiffusionXLPipeline
t_import = time.perf_counter()

a = json.loads(sys.argv[1])
# sweeper leaves the invisible watermark off by default: so do the loops, or they pay for it and differ in pixels
pipe = StableDiffusionXLPipeline.from_pretrained(a["model_dir"], dtype=getattr(torch, a["dtype"]), add_watermarker=False)
pipe = pipe.to(a["device"])
pipe.set_progress_bar_config(disable=True)
t_load = time.perf_counter()

names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
encode, render, save, sizes = [], [], [], []
for guidance in a["guidance"]:
    tic = time.perf_counter()
    with torch.no_grad():
        encoded = pipe.encode_prompt(a["prompt"], device=a["device"], num_images_per_prompt=1, do_classifier_free_guidance=guidance > 1)
    encode.append(time.perf_counter() - tic)
    for start in range(0, len(a["seeds"]), a["batch"]):
        chunk = a["seeds"][start : start + a["batch"]]
        tic = time.perf_counter()
        images = pipe(
            **{name: torch.cat([part] * len(chunk)) for name, part in zip(names, encoded) if part is not None},
            num_inference_steps=a["steps"],
            guidance_scale=guidance,
            width=a["size"],
            height=a["size"],
            generator=[torch.Generator().manual_seed(seed) for seed in chunk],
        ).images
        toc = time.perf_counter()
        for seed, image in zip(chunk, images):
            image.save(f"{a['out']}/seed{seed}_guidance{guidance:g}.png")
        render.append(toc - tic)
        save.append(time.perf_counter() - toc)
        sizes.append(len(chunk))
t_end = time.perf_counter()
print(json.dumps(dict(import_s=t_import - t0, load_s=t_load - t_import, loop_s=t_end - t_load, encode_s=encode, render_s=render,
                      save_s=save, sizes=sizes)))
'''


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sdxl-random"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds 0..N-1 (default: 32 tiny; 24 sdxl-random = 3 batches of 8 on cuda, so a steady state follows the first)")
    parser.add_argument("--guidance", default=None, help="comma-separated guidance values (default: 1.5,2,3,4,5,6,7,8 tiny; 5 sdxl-random)")
    parser.add_argument("--steps", type=int, default=None, help="default: 4 tiny, 30 sdxl-random")
    parser.add_argument("--size", type=int, default=None, help="width = height (default: 64 tiny, 1024 sdxl-random)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float32 on cpu; float16 tiny / bfloat16 sdxl-random on cuda")
    parser.add_argument("--batch-size", default="auto", help="sweeper's batch_size (auto or an int; 1 gives bit-identical images)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for the fraction-of-peak figure (H100 dense bf16: 989)")
    parser.add_argument("--plan-max-s", type=float, default=120,
                        help="run the 100k-job multirun dry run only if 1000 jobs extrapolate to less than this")
    parser.add_argument("--plan-all", action="store_true",
                        help="also time the other ways to plan 100k images (100k-line prompt_file; experiment yaml with 100k seeds)")
    parser.add_argument("--no-plan", action="store_true", help="skip the --help + 100k planning timings")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed import (and model file read) that warms the page cache first")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before each timed run wait up to S seconds for the machine to be idle (shared machines)")
    parser.add_argument("--out", default=None, help="keep everything in this dir (default: a temp dir, removed afterwards)")
    parser.add_argument("--scale", type=int, default=None, metavar="N",
                        help="instead: N images as N jobs (tiny, 1 step): the costs around the rendering (scripts/bench_scale.py)")
    parser.add_argument("--launcher", choices=["slurm-local", "ray"], default=None,
                        help="instead: the sweep on a local SLURM-style array, or Ray actors, against sweeper's own processes (scripts/bench_launchers.py)")
    parser.add_argument("--workers", type=int, default=2, help="with --launcher: workers or processes (default: 2)")
    parser.add_argument("--score-model", choices=["tiny", "clip-l"], default=None,
                        help="the scorer timed on the sweep's images (default: tiny for the tiny model, clip-l for sdxl-random)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --launcher: run each command this many times, in turn, and keep each one's fastest (default: 1)")
    args = parser.parse_args(argv)
    tiny = args.model == "tiny"
    if args.seeds is None:
        args.seeds = 32 if tiny else 24
    if args.guidance is None:
        args.guidance = "1.5,2,3,4,5,6,7,8" if tiny else "5"
    if args.steps is None:
        args.steps = 4 if tiny else 30
    if args.size is None:
        args.size = 64 if tiny else 1024
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else ("float16" if tiny else "bfloat16")
    args.guidance_values = [float(value) for value in args.guidance.split(",")]
    return args


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _busy_s() -> float:
    """CPU seconds this machine has been busy since boot, all cores (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait_s) for a 2 s window in which the machine is < threshold busy; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        before = _busy_s()
        time.sleep(2)
        if (_busy_s() - before) / (2 * (os.cpu_count() or 1)) < threshold:
            break
    return time.perf_counter() - start


class Timed:
    """A subprocess run wall to wall; its stdout/stderr pieces (split on \\r and \\n) stamped with arrival times."""

    def __init__(self, cmd: list[str], cwd: Path, log_path: Path):
        self.cmd = cmd
        self.pieces: list[tuple[float, str, str]] = []  # (seconds since start, stream, text)
        busy_before = _busy_s()
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        readers = [threading.Thread(target=self._read, args=(stream, name)) for stream, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for reader in readers:
            reader.start()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.wall_s = time.perf_counter() - self.start
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime  # CPU time of the child (less noisy than wall on a shared machine)
        # CPU seconds the rest of the machine used meanwhile: > 0.1 x wall means the timing is contended.
        self.other_cpu_s = max(0.0, _busy_s() - busy_before - self.cpu_s)
        for reader in readers:
            reader.join()
        with open(log_path, "w") as handle:
            handle.write("$ " + " ".join(cmd) + "\n")
            handle.writelines(f"{t:9.3f} {stream} {text}\n" for t, stream, text in sorted(self.pieces))
            handle.write(f"rc={self.returncode} wall_s={self.wall_s:.3f}\n")

    def _read(self, stream, name: str) -> None:
        # A piece is stamped when its first byte arrived (tqdm ends a line only with the next \r).
        pending, pending_at = b"", 0.0
        while chunk := os.read(stream.fileno(), 65536):
            now = time.perf_counter() - self.start
            if not pending:
                pending_at = now
            parts = re.split(rb"[\r\n]", pending + chunk)
            stamps = [pending_at] + [now] * (len(parts) - 1)
            pending, pending_at = parts.pop(), stamps.pop()
            self.pieces.extend((t, name, part.decode(errors="replace")) for t, part in zip(stamps, parts) if part.strip())
        if pending.strip():
            self.pieces.append((pending_at, name, pending.decode(errors="replace")))

    def text(self, stream: str) -> list[str]:
        return [text for _, name, text in self.pieces if name == stream]

    def first(self, stream: str, pattern: str) -> float | None:
        regex = re.compile(pattern)
        return next((t for t, name, text in self.pieces if name == stream and regex.search(text)), None)

    def check(self, what: str) -> None:
        if self.returncode != 0:
            tail = "\n".join(text for _, _, text in self.pieces[-15:])
            raise SystemExit(f"bench: {what} failed (rc={self.returncode}):\n{tail}")


# --- the three runs -------------------------------------------------------


def run_script(args, model_dir: Path, work: Path, name: str, script_text: str, **extra) -> tuple[Timed, dict]:
    """A loop script in a cold subprocess writing its PNGs to work/<name>; its run and the timings it printed."""
    out = work / name
    out.mkdir()
    script = work / f"{name}_script.py"
    script.write_text(script_text)
    spec = dict(model_dir=str(model_dir), dtype=args.dtype, device=args.device, prompt=args.prompt, steps=args.steps,
                size=args.size, seeds=list(range(args.seeds)), guidance=args.guidance_values, out=str(out), **extra)
    run = Timed([sys.executable, str(script), json.dumps(spec)], work, work / f"{name}.log")
    run.check(f"the diffusers {name}")
    return run, json.loads(run.text("out")[-1])


def run_loop(args, model_dir: Path, work: Path) -> dict:
    log(f"loop: {args.seeds * len(args.guidance_values)} images, plain diffusers script in a cold subprocess")
    run, inner = run_script(args, model_dir, work, "loop", LOOP_SCRIPT)
    return dict(
        loop_s=run.wall_s,
        loop_cpu_s=run.cpu_s,
        loop_other_cpu_s=run.other_cpu_s,
        loop_ms_per_image=1000 * statistics.fmean(inner["render_s"][1:] or inner["render_s"]),  # render only, as sweeper's
        loop_save_ms_per_image=1000 * statistics.fmean(inner["save_s"]),
        loop_first_image_s=inner["render_s"][0],
        loop_stages=dict(
            start_and_import_s=inner["import_s"] + (run.wall_s - inner["import_s"] - inner["load_s"] - inner["loop_s"]),
            load_s=inner["load_s"],
            render_and_save_s=inner["loop_s"],
        ),
    )


def sweeper_batch_size(args) -> int:
    """The batch size sweeper gives these images: --batch-size, or its own auto choice."""
    if args.batch_size != "auto":
        return int(args.batch_size)
    from types import SimpleNamespace

    from sweeper.planning.schedule import auto_batch_size

    # auto_batch_size reads only the device, the size, the family (its size multiple) and the hires fix of a spec.
    return auto_batch_size(SimpleNamespace(device=args.device, width=args.size, height=args.size, family="sdxl", hires_scale=None))


def run_batched_loop(args, model_dir: Path, work: Path) -> dict:
    batch = sweeper_batch_size(args)
    log(f"batched_loop: {args.seeds * len(args.guidance_values)} images, batches of up to {batch}, prompt encoded once per guidance,"
        " diffusers script in a cold subprocess")
    run, inner = run_script(args, model_dir, work, "batched_loop", BATCHED_LOOP_SCRIPT, batch=batch)
    per_image = [r / n for r, n in zip(inner["render_s"], inner["sizes"])]  # render only, as sweeper's
    encode_s = sum(inner["encode_s"])
    return dict(
        batched_loop_s=run.wall_s,
        batched_loop_cpu_s=run.cpu_s,
        batched_loop_other_cpu_s=run.other_cpu_s,
        batched_loop_batch_sizes=sorted(set(inner["sizes"])),
        batched_loop_calls=len(inner["sizes"]),
        batched_loop_ms_per_image=1000 * statistics.fmean(per_image[1:] or per_image),
        batched_loop_save_ms_per_image=1000 * sum(inner["save_s"]) / sum(inner["sizes"]),
        batched_loop_first_batch_s=inner["render_s"][0],
        batched_loop_stages=dict(
            start_and_import_s=inner["import_s"] + (run.wall_s - inner["import_s"] - inner["load_s"] - inner["loop_s"]),
            load_s=inner["load_s"],
            encode_s=encode_s,
            render_and_save_s=inner["loop_s"] - encode_s,
        ),
    )


def sweeper_command(args, model_dir: Path, sweep_dir: Path) -> list[str]:
    guidance = ",".join(f"{value:g}" for value in args.guidance_values)
    model = ["model=tiny"] if args.model == "tiny" else ["model=sdxl", f"model.id={model_dir}", "model.name=sdxl-random"]
    return [
        sys.executable, "-m", "sweeper", "-m", *model,
        f"seed=range(0,{args.seeds})", f"guidance={guidance}", f"steps={args.steps}",
        f"width={args.size}", f"height={args.size}", f"device={args.device}", f"dtype={args.dtype}",
        f"batch_size={args.batch_size}", f"prompt='{args.prompt}'", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip


def run_sweeper(args, model_dir: Path, work: Path) -> tuple[dict, object]:
    import pandas as pd

    sweep_dir = work / "sweep"
    cmd = sweeper_command(args, model_dir, sweep_dir)
    log("sweeper: " + " ".join(cmd[1:]))
    run = Timed(cmd, work, work / "sweeper.log")
    run.check("the sweeper run")
    table = pd.read_parquet(sweep_dir / "manifest.parquet")
    ok = table[table.status == "ok"]
    first_start = table.started_at.min()
    later = ok[ok.started_at > first_start]
    steady = later if len(later) else ok
    first_batch = ok[ok.started_at == first_start]

    # Where the wall time goes, from when lines reached stderr.
    total = len(table)
    announced = run.first("err", r"^sweeper: .*\b\d+ images? from \d+ jobs? into")  # the start line
    bar_start = run.first("err", r"^sweeper:\s+0%\|")
    first_done = run.first("err", r"\|\s*[1-9]\d*/\d+ ")
    last_done = run.first("err", rf"\|\s*{total}/{total} ")
    stages = {}
    if None not in (announced, bar_start, first_done, last_done):
        stages = dict(
            start_compose_plan_s=announced,  # interpreter, Hydra, our sweeper composing every job + planning
            launcher_prepare_s=bar_start - announced,  # launcher composes every job again, plans again, imports torch/diffusers
            load_and_first_batch_s=first_done - bar_start,
            render_rest_s=last_done - first_done,
            finish_s=run.wall_s - last_done,  # PNG writer drain, manifest merge, Hydra's multirun teardown
        )
    result = dict(
        sweeper_s=run.wall_s,
        sweeper_cpu_s=run.cpu_s,
        sweeper_other_cpu_s=run.other_cpu_s,
        sweeper_images=int(len(ok)),
        sweeper_failed=int(len(table) - len(ok)),
        sweeper_jobs=int(table.job_num.nunique()),
        sweeper_ms_per_image=1000 * float(steady.seconds.mean()),
        sweeper_ms_per_image_includes_load=not len(later),  # one batch only: nothing after the first to average
        sweeper_first_batch_s=float(first_batch.seconds.sum()),
        sweeper_batch_sizes=sorted(int(size) for size in table.batch_size.unique()),
        sweeper_stages=stages,
    )
    return result, (sweep_dir, ok)


# openai/clip-vit-large-patch14's config: what CLIPScore and the LAION aesthetic head run on.
CLIP_L = dict(
    text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77, projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, patch_size=14, image_size=224, projection_dim=768),
    projection_dim=768,
)


def clip_l_random(device: str):
    """A Scorer of clip and aesthetic on a random-weight CLIP ViT-L/14 (built on `device`, no hub, never saved)
    with its 224-px image processor, the tiny models' tokenizer and a random 768-wide aesthetic head."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sweeper.rendering.tiny import clip_tokenizer
    from sweeper.scoring.metrics import Scorer, aesthetic_head

    tokenizer, vocab_size = clip_tokenizer()
    tokens = dict(vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(**{**CLIP_L, "text_config": {**CLIP_L["text_config"], **tokens}})
    with torch.device(device):
        model, head = CLIPModel(config).eval(), aesthetic_head(768)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    return Scorer(("clip", "aesthetic"), {"clip": (model, processor), "aesthetic": head}, device)


def scoring_ms_per_image(scorer, arrays: list, prompts: list[str], device: str, batch: int = 16) -> float:
    """Milliseconds per image to score `arrays` ((H, W, 3) uint8) `batch` at a time, after one warm-up batch."""
    import torch

    scorer.score(arrays[:batch], prompts[:batch])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for start in range(0, len(arrays), batch):
        scorer.score(arrays[start : start + batch], prompts[start : start + batch])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - tic) / len(arrays)


def scoring_figures(args, sweep_dir: Path, rows, render_ms_per_image: float) -> dict:
    """The scoring cost of the sweep's images, as the render loop pays it (module docstring)."""
    import numpy as np
    from PIL import Image

    from sweeper.scoring import models

    which = args.score_model or ("clip-l" if args.model == "sdxl-random" else "tiny")
    device = "cuda:0" if args.device == "cuda" else args.device
    if which == "clip-l":
        scorer = clip_l_random(device)
    else:
        scoring = models.Scoring(("clip", "aesthetic"), "tiny-clip", "tiny-aesthetic", "tiny-clip", "tiny-clip")
        scorer = models.load(scoring, device)[0]
    arrays = [np.asarray(Image.open(sweep_dir / path).convert("RGB")) for path in rows.path]
    ms = scoring_ms_per_image(scorer, arrays, [args.prompt] * len(arrays), device)
    return {"scorer": "clip-l-random" if which == "clip-l" else "tiny-clip", "scoring_ms_per_image": ms, "scoring_overhead": ms / render_ms_per_image}


def compare_pixels(loop_dir: Path, sweep_dir: Path, rows) -> dict:
    """Sweeper's images against a loop's, pair by pair (same seed and guidance)."""
    import numpy as np
    from PIL import Image

    diffs, identical, missing = [], 0, 0
    for row in rows.itertuples():
        loop_png = loop_dir / f"seed{row.seed}_guidance{row.guidance:g}.png"
        if not loop_png.exists():
            missing += 1
            continue
        a = np.asarray(Image.open(loop_png).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(sweep_dir / row.path).convert("RGB"), dtype=np.int16)
        diff = int(np.abs(a - b).max()) if a.shape == b.shape else 255
        diffs.append(diff)
        identical += diff == 0
    return dict(
        compared_images=len(diffs),
        identical_images=int(identical),
        max_pixel_diff=max(diffs) if diffs else None,
        unmatched_images=missing,
    )


# --- planning 100k images ---------------------------------------------------


def plan_timings(args, work: Path) -> dict:
    """`python -m sweeper --help`, then 100,000 images planned with dry_run=true, several ways.

    multirun          `-m model=tiny seed=range(0,100000)`: 100k Hydra jobs of one image. Timed
                      on 1000 jobs first; run in full only if that extrapolates to < --plan-max-s.
    prompts_x_seeds   one job: prompt_file of 1000 lines x seed=[0,...,99] (a 100k-element seed
                      list does not fit one argv string: Linux caps one at 128 KiB).
    --plan-all adds   one job with a 100k-line prompt_file, and one with a 100k-seed list in an
                      experiment yaml (hydra.searchpath=[file://dir] experiment=<name>).
    cli_help_plan_s = help + prompts_x_seeds (the goal: < 2 s); the multirun variant, 100k Hydra
                      jobs of one image each, is reported beside it (Hydra's per-job overrides dominate it).
    """
    plan_dir = work / "plan"
    plan_dir.mkdir()
    sweeper = [sys.executable, "-m", "sweeper"]
    helped = Timed([*sweeper, "--help"], plan_dir, work / "help.log")
    helped.check("sweeper --help")
    variants: dict[str, float] = {}

    probe_jobs = 1000
    probe = _dry_run([*sweeper, "-m", "model=tiny", f"seed=range(0,{probe_jobs})", "dry_run=true", f"hydra.sweep.dir={plan_dir / 'm1k'}"],
                     plan_dir, work / "plan_multirun_1k.log", f"multirun {probe_jobs} jobs", images=probe_jobs)
    estimate = probe * PLAN_IMAGES / probe_jobs  # linear: an upper bound when start-up dominates
    if estimate <= args.plan_max_s:
        variants["multirun"] = _dry_run(
            [*sweeper, "-m", "model=tiny", f"seed=range(0,{PLAN_IMAGES})", "dry_run=true", f"hydra.sweep.dir={plan_dir / 'm100k'}"],
            plan_dir, work / "plan_multirun_100k.log", f"multirun {PLAN_IMAGES} jobs")
    else:
        log(f"multirun {PLAN_IMAGES} jobs: skipped, {probe:.1f} s for {probe_jobs} jobs extrapolates to {estimate:.0f} s (> --plan-max-s)")

    prompts = plan_dir / "prompts_1000.txt"
    prompts.write_text("".join(f"prompt number {i}, a photograph\n" for i in range(1000)))
    seeds = "[" + ",".join(str(seed) for seed in range(100)) + "]"
    variants["prompts_x_seeds"] = _dry_run(
        [*sweeper, "model=tiny", f"prompt_file={prompts}", f"seed={seeds}", "dry_run=true", f"hydra.run.dir={plan_dir / 'run'}"],
        plan_dir, work / "plan_100k.log", "one job: 1000-line prompt_file x 100 seeds")

    if args.plan_all:
        lines = plan_dir / "prompts_100k.txt"
        lines.write_text("".join(f"prompt number {i}\n" for i in range(PLAN_IMAGES)))
        variants["prompt_file_100k_lines"] = _dry_run(
            [*sweeper, "model=tiny", f"prompt_file={lines}", "dry_run=true", f"hydra.run.dir={plan_dir / 'run2'}"],
            plan_dir, work / "plan_100k_prompt_file.log", "one job: 100k-line prompt_file")
        experiments = plan_dir / "conf" / "experiment"
        experiments.mkdir(parents=True)
        (experiments / "seeds100k.yaml").write_text("# @package _global_\nseed: [" + ",".join(map(str, range(PLAN_IMAGES))) + "]\n")
        variants["experiment_yaml_seed_list"] = _dry_run(
            [*sweeper, "model=tiny", f"hydra.searchpath=[file://{plan_dir / 'conf'}]", "experiment=seeds100k", "dry_run=true",
             f"hydra.run.dir={plan_dir / 'run3'}"],
            plan_dir, work / "plan_100k_experiment.log", "one job: experiment yaml with 100k seeds")

    return dict(
        cli_help_s=helped.wall_s,
        plan_100k_s=variants["prompts_x_seeds"],
        cli_help_plan_s=helped.wall_s + variants["prompts_x_seeds"],
        cli_help_plan_command="python -m sweeper model=tiny prompt_file=<1000 lines> seed=[0,...,99] dry_run=true",
        plan_100k_variants_s={name: round(value, 3) for name, value in variants.items()},
        multirun_1k_jobs_s=probe,
    )


def _dry_run(command: list[str], cwd: Path, log_path: Path, what: str, images: int = PLAN_IMAGES) -> float:
    run = Timed(command, cwd, log_path)
    run.check(what)
    said = "\n".join(run.text("err"))
    if not re.search(rf"\b{images} images from", said):
        raise SystemExit(f"bench: {what}: expected {images} images planned, sweeper said:\n{said[-2000:]}")
    log(f"{what}: {run.wall_s:.2f} s (other load on the machine meanwhile: {run.other_cpu_s:.1f} CPU s)")
    return run.wall_s


# --- main ------------------------------------------------------------------


def model_dir_for(args) -> Path:
    if args.model == "tiny":
        from sweeper.rendering.tiny import tiny_model_dir

        return tiny_model_dir("tiny-sdxl")
    sys.path.insert(0, str(HERE))
    from sdxl_random import sdxl_random_dir

    # Stored in half precision (7 GB instead of 14); a float32 run upcasts on load.
    stored = args.dtype if args.dtype != "float32" else "bfloat16"
    return sdxl_random_dir(args.device, stored, log=log)  # random init on the GPU takes seconds


def warm_page_cache(model_dir: Path, work: Path) -> None:
    """Untimed: read the Python packages and the weights once, so neither timed run pays the first disk read."""
    subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers, sweeper.app, pandas, pyarrow"],
                   cwd=work, env=env(), check=True, capture_output=True)
    for path in model_dir.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def flop_figures(args, result: dict) -> dict:
    cfg_factor = sum(2 if g > 1.0 else 1 for g in args.guidance_values) / len(args.guidance_values)
    tflop = (UNET_TFLOP_1024 * args.steps * cfg_factor + VAE_DECODE_TFLOP_1024) * (args.size * args.size) / 1024**2
    figures = dict(tflop_per_image=tflop, peak_tflops=args.peak_tflops)
    for side in ("loop", "batched_loop", "sweeper"):
        per_s = 1000 / result[f"{side}_ms_per_image"]
        figures[f"{side}_images_per_s"] = per_s
        figures[f"{side}_wall_images_per_s"] = result["images"] / result[f"{side}_s"]
        figures[f"{side}_peak_fraction"] = per_s * tflop / args.peak_tflops
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scale:
        sys.path.insert(0, str(HERE))
        import bench_scale

        return bench_scale.main(args.scale, args.out)
    if args.launcher:
        sys.path.insert(0, str(HERE))
        import bench_launchers

        return bench_launchers.main(args)
    import diffusers
    import torch

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sweeper-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise SystemExit(f"bench: --out {work} is not empty")
    try:
        model_dir = model_dir_for(args)
        if not args.no_warmup:
            warm_page_cache(model_dir, work)
        images = args.seeds * len(args.guidance_values)
        result = dict(
            model=args.model, device=args.device, dtype=args.dtype, images=images, seeds=args.seeds,
            guidance=args.guidance_values, steps=args.steps, size=args.size, batch_size=args.batch_size,
            torch=torch.__version__, diffusers=diffusers.__version__, cpus=os.cpu_count(),
        )  # fmt: skip
        wait_until_idle(args.wait_idle)
        result.update(run_loop(args, model_dir, work))
        log(f"loop: {result['loop_s']:.1f} s")
        wait_until_idle(args.wait_idle)
        result.update(run_batched_loop(args, model_dir, work))
        log(f"batched_loop: {result['batched_loop_s']:.1f} s")
        wait_until_idle(args.wait_idle)
        swept, (sweep_dir, rows) = run_sweeper(args, model_dir, work)
        result.update(swept)
        log(f"sweeper: {result['sweeper_s']:.1f} s")
        if result["sweeper_batch_sizes"] != result["batched_loop_batch_sizes"]:
            log(f"warning: sweeper batched by {result['sweeper_batch_sizes']}, the batched loop by {result['batched_loop_batch_sizes']}")
        result["ratio"] = result["sweeper_s"] / result["loop_s"]
        result["cpu_ratio"] = result["sweeper_cpu_s"] / result["loop_cpu_s"]
        result["sweeper_vs_batched_loop"] = result["sweeper_s"] / result["batched_loop_s"]
        result["sweeper_vs_batched_loop_cpu"] = result["sweeper_cpu_s"] / result["batched_loop_cpu_s"]
        log(f"sweeper / loop: {result['ratio']:.3f}, sweeper / batched_loop: {result['sweeper_vs_batched_loop']:.3f} (goal: <= 1.10)")
        result["same_image_count"] = result["sweeper_images"] == images and result["sweeper_failed"] == 0
        result.update(compare_pixels(work / "loop", sweep_dir, rows))
        result.update(scoring_figures(args, sweep_dir, rows, result["sweeper_ms_per_image"]))
        log(f"scoring ({result['scorer']}): {result['scoring_ms_per_image']:.1f} ms/image, {result['scoring_overhead']:.1%} of rendering")
        batched = compare_pixels(work / "batched_loop", sweep_dir, rows)
        result.update({f"batched_loop_{key}": value for key, value in batched.items()})
        if args.model == "sdxl-random":
            result.update(flop_figures(args, result))
        if not args.no_plan:
            wait_until_idle(args.wait_idle)
            result.update(plan_timings(args, work))
        result["load_average_1m"] = os.getloadavg()[0]  # other work on this machine skews wall times
        if args.out:
            result["out"] = str(work)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    result = {key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}
    for key in ("loop_stages", "batched_loop_stages", "sweeper_stages"):
        if not isinstance(result.get(key), dict):
            continue
        result[key] = {name: round(value, 3) for name, value in result[key].items()}
    print(json.dumps(result))
    limit = 0 if args.batch_size == "1" else 2
    good = result["same_image_count"] and all(
        result[key] is not None and result[key] <= limit for key in ("max_pixel_diff", "batched_loop_max_pixel_diff")
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
