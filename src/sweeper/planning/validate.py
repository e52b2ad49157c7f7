"""Validate: each config value a user can get wrong, checked before anything renders.

A value that cannot be rendered raises `PlanError` with one line naming the
key, the value and what is allowed; a key the config does not have is a typo
and names the closest key.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.cli_errors import unknown_key
from sweeper.errors import PlanError, invalid
from sweeper.planning.spec import SINGLE_FILE_SUFFIXES, SIZE_KEYS
from sweeper.rendering import families
from sweeper.rendering.tiny import recipe_version, tiny_models

REFINER_MODES = ("ensemble", "img2img")
MODES = ("txt2img", "img2img", "inpaint")
DTYPES = ("auto", "float16", "bfloat16", "float32")
ATTENTION = ("sdpa", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OFFLOAD = ("none", "model", "sequential")
DEFAULT_MAX_IMAGES = 100_000
DEFAULT_MAX_SIZE = 4096  # pixels per side: beyond the largest real use of SD models
DEFAULT_MAX_STEPS = 1000  # the models' own training schedule has 1000 timesteps
SEED_LIMIT = 2**63  # int64 in the manifest (torch itself takes up to 2**64 - 1)
RANDOM_SEED_LIMIT = 2**32  # what a seed of -1 draws from, as other SD tools do
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# The keys of conf/config.yaml (a test keeps the two equal) and of its groups: any other is a typo.
CONFIG_KEYS = (
    "name", "prompt", "prompt_file", "prompt_file_paths", "wildcards", "negative_prompt", "prompt_2", "negative_prompt_2",
    "prompt_3", "negative_prompt_3", "prompt_syntax", "seed", "subseed", "subseed_strength", "guidance", "true_cfg", "guidance_rescale", "steps", "max_sequence_length", "shift", "dynamic_shift", "sigmas",
    "clip_skip", "slg_layers", "slg_scale", "slg_start", "slg_stop", "width", "height", "original_size", "target_size", "crops_coords_top_left",
    "negative_original_size", "negative_target_size", "negative_crops_coords_top_left", "mode", "init_image", "mask_image",
    "strength", "watermark", "safety_checker", "dtype", "device", "batch_size", "attention", "channels_last", "fuse_qkv",
    "compile", "vae_upcast", "offload", "vae_slicing", "vae_tiling", "lora", "lora_scale", "lora_dir", "vae", "embeddings", "max_images", "max_size", "max_steps", "dry_run",
    "hires",
    "score",
)
GROUP_KEYS = {
    "model": ("name", "id", "revision", "config", "family"),
    "refiner": ("name", "id", "revision", "split", "mode"),
    "scheduler": ("name", "class_name", "label", "kwargs"),
    "hires": ("scale", "denoise", "steps", "upscaler"),  # a mapping of config.yaml, not a group
    "scorer": ("name", "clip_model", "aesthetic_model", "pickscore_model", "pickscore_processor"),
}


def known_keys() -> list[str]:
    """Every key a command line may set (for the closest match to a typo)."""
    return list(dict.fromkeys([*CONFIG_KEYS, *GROUP_KEYS, *(f"{group}.{field}" for group, fields in GROUP_KEYS.items() for field in fields)]))


def check_keys(c: Mapping[str, Any]) -> None:
    """Refuse a key the config does not have (`+guidnace=7` would render at the default guidance)."""
    for key, value in c.items():
        if key not in GROUP_KEYS:
            if key not in CONFIG_KEYS:
                raise PlanError(unknown_key(key, known_keys()))
            continue
        fields = value if isinstance(value, Mapping) else {}
        allowed = ("name",) if key == "refiner" and fields.get("name", "none") == "none" else GROUP_KEYS[key]
        for field in fields:
            if field not in allowed:
                raise PlanError(unknown_key(f"{key}.{field}", known_keys()))


PER_PROMPT_KEYS = ("negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3")


def max_images(c: Mapping[str, Any]) -> int:
    return _limit(c, "max_images", DEFAULT_MAX_IMAGES)


def max_size(c: Mapping[str, Any]) -> int:
    return _limit(c, "max_size", DEFAULT_MAX_SIZE)


def max_steps(c: Mapping[str, Any]) -> int:
    return _limit(c, "max_steps", DEFAULT_MAX_STEPS)


def model(model: Any) -> dict[str, Any]:
    if not isinstance(model, Mapping) or not model.get("id") or not isinstance(model.get("id"), str):
        raise invalid("model.id", None if not isinstance(model, Mapping) else model.get("id"), "must name a model (model=sdxl, sd15, tiny, tiny-sd)")
    family = families.family_of(model)
    revision = model.get("revision")
    if model["id"] in tiny_models() and revision is None:
        revision = recipe_version(model["id"])  # a new tiny recipe makes new images, never mixes with old ones
    config = model.get("config")
    if config is not None and not (isinstance(config, str) and config):
        raise invalid("model.config", config, "must be null, or a diffusers model dir or hub id")
    if model["id"].endswith(SINGLE_FILE_SUFFIXES):
        path = Path(model["id"]).expanduser()
        if not path.is_file():
            raise invalid("model.id", model["id"], "no such checkpoint file")
        if revision is None:  # a changed checkpoint makes new images; hashing gigabytes at every plan would not do
            stat = path.stat()
            revision = f"file:{stat.st_size}:{stat.st_mtime_ns}"
    return {"name": model.get("name") or model["id"], "id": model["id"], "revision": revision, "family": family, "config": config}


def refiner(refiner: Any, family: str) -> dict[str, Any]:
    if refiner is None or refiner.get("name", "none") == "none":
        return {"name": "none", "id": None, "revision": None, "split": None, "mode": None}
    if "refiner" not in families.get(family).keys:
        raise PlanError(f"invalid refiner={refiner['name']}: needs an SDXL base model, but the model is {families.get(family).title} ({family})")
    if not isinstance(refiner.get("id"), str) or not refiner["id"]:
        raise invalid("refiner.id", refiner.get("id"), "must name a refiner model")
    split = refiner.get("split")
    if not _is_number(split) or not 0 < split < 1:
        raise invalid("refiner.split", split, "must be a fraction of the steps strictly between 0 and 1")
    mode = refiner.get("mode")
    if mode not in REFINER_MODES:
        raise invalid("refiner.mode", mode, f"allowed: {', '.join(REFINER_MODES)}")
    revision = refiner.get("revision")
    if refiner["id"] in tiny_models() and revision is None:
        revision = recipe_version(refiner["id"])
    return {"name": refiner["name"], "id": refiner["id"], "revision": revision, "split": float(split), "mode": mode}


def check_split(refiner: Mapping[str, Any], steps: int, scheduler_kwargs: Mapping[str, Any]) -> None:
    """Refuse a refiner split that leaves the base or the refiner no step."""
    if refiner["id"] is None:
        return
    base, refined = split_steps(steps, refiner["split"], refiner["mode"], scheduler_kwargs.get("timestep_spacing", "leading"))
    if min(base, refined) < 1:
        who = "base" if base < 1 else "refiner"
        raise invalid(
            "refiner.split", refiner["split"], f"with steps={steps} (refiner.mode={refiner['mode']}) the {who} gets no step "
            f"(base {base}, refiner {refined}); choose a split nearer 0.5 or more steps",
        )


def split_steps(steps: int, split: float, mode: str, spacing: str = "leading", train_steps: int = 1000) -> tuple[int, int]:
    """(base steps, refiner steps) of a refiner split, as diffusers cuts them.

    img2img: the base runs every step, the refiner int(steps * (1 - split)).
    ensemble: the split cuts the noise schedule, not the steps: the base runs the
    timesteps >= (1 - split) * 1000, the refiner the rest. Exact for schedules
    spaced evenly in time (`timestep_spacing` leading, as SDXL ships, trailing or
    linspace); Karras-style sigmas crowd the low-noise end, so render records the
    counts that really ran (base_steps, refiner_steps).
    """
    if mode == "img2img":
        return steps, min(int(steps * (1.0 - split)), steps)
    if spacing == "trailing":
        timesteps = [round(train_steps - i * train_steps / steps) - 1 for i in range(steps)]
    elif spacing == "linspace":
        timesteps = [round((train_steps - 1) * (1 - i / max(steps - 1, 1))) for i in range(steps)]
    else:  # leading, with SD's steps_offset of 1
        timesteps = [(steps - 1 - i) * (train_steps // steps) + 1 for i in range(steps)]
    cutoff = int(round(train_steps - split * train_steps))
    base = sum(t >= cutoff for t in timesteps)
    return base, steps - base


def device(value: Any, auto_device: str) -> tuple[str, int | None]:
    """(device type, GPU index or None) of `device`."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise invalid("device", value, "allowed: auto, cpu, cuda, cuda:N, mps")
    kind, _, index = value.partition(":")
    return (auto_device if value == "auto" else kind), (int(index) if index else None)


def dtype(value: Any, device: str) -> str:
    if value not in DTYPES:
        raise invalid("dtype", value, f"allowed: {', '.join(DTYPES)}")
    if value == "auto":
        return "float16" if device == "cuda" else "float32"
    return value


def size(c: Mapping[str, Any], key: str) -> int:
    value = c.get(key)
    if not is_int(value) or value <= 0 or value % 8:
        raise invalid(key, value, "must be a positive multiple of 8")
    limit = _limit(c, "max_size", DEFAULT_MAX_SIZE)
    if value > limit:
        raise invalid(key, value, f"over max_size={limit} (a bound against typos and crafted CSV rows; raise max_size to render it)")
    return value


def steps(c: Mapping[str, Any]) -> int:
    value = _int(c, "steps", minimum=1)
    limit = _limit(c, "max_steps", DEFAULT_MAX_STEPS)
    if value > limit:
        raise invalid("steps", value, f"over max_steps={limit} (a bound against typos and crafted CSV rows; raise max_steps to render it)")
    return value


def _limit(c: Mapping[str, Any], key: str, default: int) -> int:
    return default if c.get(key) is None else _int(c, key, minimum=1)


def guidance(c: Mapping[str, Any]) -> float:
    value = c.get("guidance")
    if not _is_number(value) or not 0 <= value < math.inf:
        raise invalid("guidance", value, "must be a finite number >= 0")
    return float(value)


def choice(c: Mapping[str, Any], key: str, allowed: Sequence[str], default: str | None = None) -> str:
    value = c.get(key, default)
    if value not in allowed:
        raise invalid(key, value, f"allowed: {', '.join(allowed)}")
    return value


def pair(c: Mapping[str, Any], key: str, minimum: int) -> tuple[int, int] | None:
    value = c.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(is_int(v) and v >= minimum for v in value):
        what = "[height, width]" if key in SIZE_KEYS else "[top, left]"
        raise invalid(key, value, f"must be null or {what}, two integers >= {minimum}")
    return (value[0], value[1])


def flag(c: Mapping[str, Any], key: str) -> bool:
    value = c.get(key, False)
    if not isinstance(value, bool):
        raise invalid(key, value, "must be true or false")
    return value


def strength(c: Mapping[str, Any], steps: int) -> float:
    value = c.get("strength")
    if not _is_number(value) or not 0 < value <= 1:
        raise invalid("strength", value, "must be a number in (0, 1]: the fraction of the init image that is re-noised")
    if int(steps * value) < 1:  # diffusers runs int(steps * strength) steps; none fails mid-render
        raise invalid("strength", value, f"with steps={steps} it leaves no denoising step (int(steps * strength) = 0); raise strength or steps")
    return float(value)


def watermark(c: Mapping[str, Any]) -> bool:
    value = flag(c, "watermark")  # families.check_keys refused it for a family without one
    if value:
        import importlib.util

        if importlib.util.find_spec("imwatermark") is None:
            raise invalid("watermark", value, "needs the invisible-watermark package: pip install invisible-watermark")
    return value


def safety_checker(c: Mapping[str, Any], model: Mapping[str, Any]) -> bool:
    value = c.get("safety_checker", "auto")
    if value not in ("auto", True, False):
        raise invalid("safety_checker", value, "allowed: auto (the model's own, if it has one), true, false")
    has_one = families.get(model["family"]).safety_checker
    if value is True and not has_one:
        raise invalid("safety_checker", value, "only Stable Diffusion 1.x pipelines have a safety checker")
    # A checkpoint file holds no safety checker (from_single_file loads none); true takes model.config's.
    single_file = model["id"].endswith(SINGLE_FILE_SUFFIXES)
    if value is True and single_file and model["config"] is None:
        raise invalid("safety_checker", value, "a single-file checkpoint holds no safety checker; set model.config to a diffusers model that has one")
    return has_one and not single_file if value == "auto" else value


SIGMAS = ("default", *families.SIGMAS)
MAX_SEQUENCE_LENGTH = 1024  # the longest any family's text encoder takes (Qwen-Image); each family bounds its own


def family_values(c: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that some families take, checked as values (null: not given); the family checks the rest."""
    values: dict[str, Any] = {}
    for key in ("true_cfg", "slg_scale"):
        values[key] = None if c.get(key) is None else _number(c, key, 0, math.inf, "a finite number >= 0")
    values["guidance_rescale"] = None if c.get("guidance_rescale") is None else _number(c, "guidance_rescale", 0, 1, "a number 0 .. 1")
    strength = None if c.get("subseed_strength") is None else _number(c, "subseed_strength", 0, 1, "a number 0 .. 1")
    values["subseed_strength"] = strength or None  # 0: the seed's own noise, so the seed's image and id
    for key in ("slg_start", "slg_stop"):
        values[key] = None if c.get(key) is None else _number(c, key, 0, 1, "a fraction of the steps, 0 .. 1")
    values["shift"] = None if c.get("shift") is None else _number(c, "shift", 0, 100, "a number > 0 and <= 100", strict=True)
    values["max_sequence_length"] = None if c.get("max_sequence_length") is None else _int(c, "max_sequence_length", minimum=1)
    if (values["max_sequence_length"] or 0) > MAX_SEQUENCE_LENGTH:
        raise invalid("max_sequence_length", values["max_sequence_length"], f"must be at most {MAX_SEQUENCE_LENGTH} tokens")
    values["clip_skip"] = None if c.get("clip_skip") is None else _int(c, "clip_skip", minimum=1)
    values["dynamic_shift"] = None if c.get("dynamic_shift") is None else flag(c, "dynamic_shift")
    sigmas = c.get("sigmas")
    if sigmas is not None and sigmas not in SIGMAS:
        raise invalid("sigmas", sigmas, f"allowed: null, {', '.join(SIGMAS)}")
    values["sigmas"] = None if sigmas in (None, "default") else sigmas
    layers = c.get("slg_layers")
    if layers is not None and not (isinstance(layers, (list, tuple)) and 0 < len(layers) <= 64 and all(is_int(n) and 0 <= n < 1000 for n in layers)):
        raise invalid("slg_layers", layers, "must be null or a list of layer numbers (integers >= 0)")
    values["slg_layers"] = None if layers is None else tuple(layers)
    return values


def _number(c: Mapping[str, Any], key: str, low: float, high: float, what: str, strict: bool = False) -> float:
    value = c.get(key)
    if not _is_number(value) or not low <= value <= high or (strict and value == low) or not math.isfinite(value):
        raise invalid(key, value, f"must be {what}")
    return float(value)


def compile_mode(c: Mapping[str, Any]) -> str | None:
    value = c.get("compile")
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if value not in COMPILE_MODES:
        raise invalid("compile", value, f"allowed: false, true, {', '.join(COMPILE_MODES)} (torch.compile modes)")
    return value


def vae_upcast(c: Mapping[str, Any]) -> bool | None:
    value = c.get("vae_upcast", "auto")
    if value not in ("auto", True, False):
        raise invalid("vae_upcast", value, "allowed: auto (the VAE's own force_upcast), true, false")
    return None if value == "auto" else value


def offload(c: Mapping[str, Any], device: str) -> str:
    value = choice(c, "offload", OFFLOAD, default="none")
    if value != "none" and device != "cuda":
        raise invalid("offload", value, f"CPU offload moves models between the CPU and a GPU; it needs device=cuda, not {device}")
    return value


def batch_size(c: Mapping[str, Any]) -> int | None:
    value = c.get("batch_size", "auto")
    if value == "auto":
        return None
    if not is_int(value) or value < 1:
        raise invalid("batch_size", value, "must be auto or an integer >= 1")
    return value


def per_prompt(c: Mapping[str, Any], key: str, count: int) -> list[str | None]:
    """A value for every prompt: one string for all, or a list zipped with the prompts."""
    from sweeper.planning.templates import MAX_PROMPT_CHARS

    value = c.get(key)
    texts = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
    for text in texts:
        if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
            raise invalid(key, text[:80] + "...", f"{len(text)} characters long, over the limit of {MAX_PROMPT_CHARS} for a prompt")
    if value is None or isinstance(value, str):
        return [value] * count
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and len(value) == count:
        return list(value)
    raise invalid(key, value, f"must be null, a string, or a list of {count} strings (one per prompt)")


RANDOM_SEEDS = re.compile(r"random:([0-9]{1,9})")  # seed=random:8: eight seeds drawn once for the sweep dir


def seeds(c: Mapping[str, Any], random_key: str, sweep_key: str | None = None) -> list[int]:
    """The job's seeds. -1 draws from `random_key` (this command's); `random:N` draws N from
    `sweep_key` (kept in the sweep dir), so the same command draws the same seeds again."""
    value = c.get("seed")
    if isinstance(value, str):
        match = RANDOM_SEEDS.fullmatch(value)
        limit = max_images(c)
        if not match or not 1 <= int(match[1]) <= limit:
            raise invalid("seed", value, f"random:N draws N seeds (1 .. max_images={limit}) once for the sweep dir; or an integer, a list, or -1")
        return [_drawn(f"{random_key if sweep_key is None else sweep_key}:random", position) for position in range(int(match[1]))]
    seeds = value if isinstance(value, (list, tuple)) else [value]
    if not seeds:
        raise invalid("seed", value, "needs at least one seed")
    planned = []
    for position, seed in enumerate(seeds):
        if not is_int(seed) or not -1 <= seed < SEED_LIMIT:
            raise invalid("seed", value, f"must be an integer 0 .. {SEED_LIMIT - 1}, a list of them, -1 for a random seed, or random:N")
        planned.append(_drawn(random_key, position) if seed == -1 else seed)
    return planned


def _drawn(key: str, position: int) -> int:
    digest = hashlib.sha256(f"{key}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % RANDOM_SEED_LIMIT


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(c: Mapping[str, Any], key: str, minimum: int) -> int:
    value = c.get(key)
    if not is_int(value) or value < minimum:
        raise invalid(key, value, f"must be an integer >= {minimum}")
    return value
