"""Model families: each module here is one family, declared in one place.

A family says which diffusers pipelines it loads (txt2img, img2img, inpaint),
which of the keys that only some families take (FAMILY_KEYS) it honours, which
schedulers fit its model, how its prompts are encoded and its pipeline called,
what its PNG text calls its values, and how its tiny random-weight models are
built. Planning reads the declarations (no torch at import); rendering calls
the hooks. A new family is one module with a `FAMILY` and its tests; nothing
else lists families.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid
from sweeper.model_files import model_json
from sweeper.planning.spec import CROP_KEYS, SIZE_KEYS

# Keys that some families take and others would silently ignore: a family refuses every one
# of them it does not list in `keys` (set to anything but null), before any model loads.
FAMILY_KEYS = (
    "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3", *SIZE_KEYS, *CROP_KEYS,
    "true_cfg", "guidance_rescale", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "clip_skip",
    "slg_layers", "slg_scale", "slg_start", "slg_stop", "vae", "embeddings", "refiner", "watermark", "hires", "subseed", "subseed_strength",
)
DISCRETE, FLOW = "discrete", "flow"  # noise-prediction schedulers; flow-matching ones


class Family:
    """One model family. Subclasses set the declarations and override the hooks they need."""

    name: str  # spec.family: part of every image id
    title: str  # as users know it: "SDXL", "Flux.1"
    pipelines: Mapping[str, str]  # mode (txt2img, img2img, inpaint) -> diffusers pipeline class name
    index_classes: tuple[str, ...]  # model_index.json `_class_name`s of this family's checkpoints
    keys: tuple[str, ...]  # the FAMILY_KEYS it takes
    schedulers: str  # DISCRETE or FLOW: the scheduler classes that fit its model
    scheduler_classes: tuple[str, ...] | None = None  # where only some of that kind run its pipelines: those
    default_scheduler: str  # what scheduler=auto means: a config of conf/scheduler
    tiny: Mapping[str, str]  # tiny model name -> the name `build_tiny` builds it by
    tiny_version: str  # the tiny models' recipe: their revision, so part of their images' ids
    a1111: Mapping[str, str | None] = {}  # spec field -> the key its PNG text has for this family, where not A1111's (None: left out)
    lora: bool = True  # takes LoRA adapters (load_lora_weights)
    weighting: bool = False  # encodes A1111's prompt weighting (prompt_syntax=a1111: rendering/weighting.py)
    eager_attention: bool = False  # attention=eager (diffusers' plain AttnProcessor) fits its denoiser
    safety_checker: bool = False  # its pipelines carry a safety checker (SD 1.x)
    sized_modes: tuple[str, ...] = ("txt2img", "img2img", "inpaint")  # modes whose call takes width and height
    size_multiple: int = 8  # width and height: what its pipelines take without flooring them
    cfg_negative_prompt: str | None = None  # the negative prompt planned under CFG where none is given (its pipeline runs CFG only with one)

    # Planning (no torch).
    def uses_cfg(self, spec: Any) -> bool:
        """Classifier-free guidance runs: a negative prompt has effect, each step costs two passes.
        By `true_cfg` where it is set (guidance-distilled models), else `guidance` > 1."""
        return (spec.guidance if spec.true_cfg is None else spec.true_cfg) > 1.0

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """Refuse what this family cannot honour in a job's checked values (one line), and fill in
        the defaults that will run, so the manifest shows them. `values` is changed in place; `model` is the
        model config with the job's guidance, negative_prompt(_2), mode, steps, width, height and fuse_qkv as
        given (unchecked) and its checked scheduler config."""

    def text_width(self, tiny_name: str) -> int | None:
        """A tiny model's text embedding width, for refusing a LoRA made for another model."""
        return None

    # Rendering (import torch and diffusers inside).
    def build_tiny(self, name: str) -> Any:
        """The tiny model's pipeline with random weights (the caller seeds torch)."""
        raise NotImplementedError

    def load_kwargs(self, spec: Any, from_pipe: bool) -> dict[str, Any]:
        """Extra from_pretrained (or, `from_pipe`, from_pipe) arguments: the watermark, the safety checker."""
        return {}

    def denoiser(self, pipe: Any) -> Any:
        """The module that runs every step (UNet or transformer): compiled, fused, channels_last."""
        return pipe.transformer

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        """One image's prompt embeddings as the pipeline's keyword arguments (batch of one)."""
        raise NotImplementedError

    def combine(self, per_image: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch's embeddings from each image's (default: concatenated along the batch)."""
        import torch

        return {name: torch.cat([parts[name] for parts in per_image]) for name in per_image[0]}

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        """The pipeline call's arguments besides size, steps, generators, images and embeddings."""
        return {"guidance_scale": spec.guidance}

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which of the image's prompts the tokenizer cuts, as diffusers does silently."""
        return None

    def scheduler_kwargs(self, spec: Any) -> dict[str, Any]:
        """Scheduler config values from the spec's own keys (sigmas; flow shift), merged into its kwargs."""
        return sigma_kwargs(spec.sigmas)


SIGMAS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}


def sigma_kwargs(sigmas: str | None) -> dict[str, Any]:
    return {} if sigmas is None else {SIGMAS[sigmas]: True}


@functools.lru_cache(maxsize=1)
def _all() -> dict[str, Family]:
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            family = importlib.import_module(f"{__name__}.{module.name}").FAMILY
            found[family.name] = family
    return found


def uses_cfg(spec: Any) -> bool:
    """Whether the spec's pipeline call runs classifier-free guidance (its family says by what)."""
    return get(spec.family).uses_cfg(spec)


def names() -> tuple[str, ...]:
    return tuple(sorted(_all()))


def get(name: str) -> Family:
    return _all()[name]


@functools.lru_cache(maxsize=1)
def tiny_models() -> dict[str, Family]:
    """Every tiny model's name -> its family (asked once per image while planning: made once)."""
    return {tiny: family for family in _all().values() for tiny in family.tiny}


def family_of(model: Mapping[str, Any]) -> str:
    """The family of a model config: `model.family`, else the one its model_index.json names. PlanError if neither."""
    if model.get("family") is not None:
        if model["family"] not in _all():
            raise invalid("model.family", model["family"], f"allowed: {', '.join(names())}")
        return model["family"]
    found = detected(model["id"], model.get("revision"))
    if found is None:
        raise invalid("model.family", None, f"model_index.json of {model['id']} is not on this machine to tell; set model.family ({', '.join(names())})")
    return found


def detected(model_id: str, revision: str | None) -> str | None:
    """The family that a model's model_index.json names, if it can be read here (never the network)."""
    tiny = tiny_models().get(model_id)
    if tiny is not None:
        return tiny.name
    index = _model_index(model_id, revision)
    if index is None:
        return None
    class_name = index.get("_class_name")
    for family in _all().values():
        if class_name in family.index_classes:
            return family.name
    raise invalid("model.id", model_id, f"its pipeline {str(class_name)[:80]} is of no family sweeper knows ({', '.join(names())})")


def _model_index(model_id: str, revision: str | None) -> dict[str, Any] | None:
    try:
        return model_json(model_id, revision, "model_index.json")
    except (OSError, ValueError) as error:
        raise invalid("model.id", model_id, f"its model_index.json cannot be read ({str(error)[:80]})") from None


def check_keys(family: Family, c: Mapping[str, Any], model_name: str) -> None:
    """Refuse a key the family would ignore, naming the family and the keys it takes."""
    for key in FAMILY_KEYS:
        value = c.get(key)
        unset = (value is None or (key == "refiner" and (value or {}).get("name", "none") == "none") or (key == "watermark" and value is False)
                 or (key == "hires" and isinstance(value, Mapping) and value.get("scale") is None) or value == [])
        if not unset and key not in family.keys:
            own = ", ".join(k for k in family.keys if k not in ("refiner", "watermark")) or "none"
            shown = f"hires.scale={_show(value.get('scale'))}" if key == "hires" and isinstance(value, Mapping) else f"{key}={_show(value)}"
            raise PlanError(f"invalid {shown}: model={model_name} is {family.title} ({family.name}), which ignores it; the keys of its own: {own}")


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name")
    return json.dumps(value)[:80] if not isinstance(value, str) else value[:80]
