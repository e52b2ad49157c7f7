"""prompt_syntax at planning: what an image's prompts ask of the encoder, checked before anything loads.

`prompt_syntax=a1111` (the default) reads A1111's syntax (prompt_syntax.py) and
encodes as A1111 does (rendering/weighting.py); `compel` hands the prompts to the
compel library, in its own syntax; `plain` encodes the text as it is. The
spec's `prompt_syntax` is set only where the encoding differs from the plain
one: a prompt with syntax, a `<lora:...>` tag, or more than 75 tokens (both
chunk it where the plain encoder cuts it). Any other prompt renders as before,
with the id it had. No torch here.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid
from sweeper.planning import prompt_syntax
from sweeper.planning.schedulers import TWO_CALLS_PER_STEP

SYNTAXES = ("a1111", "compel", "plain")
# Text compel reads as itself: no weights (word++, (word)1.2), no .blend()/.and(), quotes or escapes. compel
# encodes such text as diffusers does (its no-weights bypass); anything else counts as compel's syntax.
_COMPEL_PLAIN = re.compile(r"[\w\s,;:!?']*")
CHUNK = 75  # tokens of a CLIP chunk between its start and end tokens
PROMPT_KEYS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3")


def syntax(c: Mapping[str, Any]) -> str:
    value = c.get("prompt_syntax", "a1111")
    if value not in SYNTAXES:
        raise invalid("prompt_syntax", value, f"allowed: {', '.join(SYNTAXES)}")
    return value


def row_syntax(chosen: str, family: Any, prompts: Mapping[str, str | None], model: Mapping[str, Any]) -> str | None:
    """The spec's prompt_syntax for one image's prompts (`prompts`: key -> text): None where they
    encode as plain text. PlanError (one line) for syntax that cannot be rendered as written.
    `model`: the model's id, revision and config (its tokenizer), its refiner's id and clip_skip."""
    texts = {key: text for key, text in prompts.items() if text}
    if chosen == "plain" or not texts:
        return None
    if chosen == "compel":
        return _compel(family, texts, model)
    weighted = False
    for key, text in texts.items():
        construct = prompt_syntax.unsupported(text) or _tag_problem(key, text)
        if construct:
            raise invalid(key, text[:80], f"{construct} is not supported; prompt_syntax=plain renders the prompt as text")
        try:
            plain = prompt_syntax.is_plain(text)
        except ValueError as error:
            raise invalid(key, text[:80], str(error)) from None
        edit = prompt_syntax.scheduled(text)
        if not plain and not family.weighting:
            raise invalid(key, text[:80], f"{edit or construct_of(text)} is A1111 prompt syntax, which {family.title} models do not weight; "
                          "prompt_syntax=plain renders it as text")
        if edit:
            _check_edit(key, text, edit, model)
        weighted = weighted or not plain
    if not family.weighting:
        return None
    if weighted or any(_over_one_chunk(model, text) for text in texts.values()):
        return "a1111"
    return None


def edit_steps(steps: int, scheduler_class: str) -> int:
    """The steps prompt editing's fractions are of: A1111's total steps (SamplerData.total_steps), one per
    model call, so twice the steps for a second-order scheduler, as diffusers' loop runs them."""
    return steps * 2 if scheduler_class in TWO_CALLS_PER_STEP else steps


def _check_edit(key: str, text: str, edit: str, model: Mapping[str, Any]) -> None:
    """Prompt editing and alternation switch the prompt at the steps of one denoising loop of the base model."""
    for setting, why in (("refiner", "a refiner (the refiner's steps are not the prompt's)"), ("hires", "the hires fix (its second pass has steps of its own)")):
        if model.get(setting) is not None:
            raise invalid(key, text[:80], f"{edit} switches the prompt during the denoising steps: not with {why}")


def _compel(family: Any, texts: Mapping[str, str], model: Mapping[str, Any]) -> str | None:
    if not family.weighting:
        raise invalid("prompt_syntax", "compel", f"compel weights the CLIP prompts of SD 1.x and SDXL; {family.title} models take prompt_syntax=a1111 or plain")
    for key, text in texts.items():
        if "<lora:" in text:
            raise invalid(key, text[:80], "<lora:...> tags are A1111's syntax, not compel's; name adapters in lora= with prompt_syntax=compel")
    if model.get("refiner") is not None:
        raise invalid("prompt_syntax", "compel", "compel encodes for the base model only; use refiner=none or prompt_syntax=a1111")
    if model.get("clip_skip") is not None:
        raise invalid("prompt_syntax", "compel", "compel has no clip skip; leave clip_skip unset or use prompt_syntax=a1111")
    plain = all(_COMPEL_PLAIN.fullmatch(text) and not _over_one_chunk(model, text) for text in texts.values())
    return None if plain else "compel"


def _tag_problem(key: str, text: str) -> str | None:
    try:
        _, tags = prompt_syntax.lora_tags(text)
    except ValueError as error:
        return str(error)
    if tags and key not in ("prompt", "prompt_2"):
        return f"<lora:{tags[0].name}> in {key} (adapters are named in the prompt)"
    return None


def construct_of(text: str) -> str:
    """The first piece of A1111 syntax in `text`, as a user would point at it."""
    marks = {"<lora:": "a <lora:...> tag", "(": "(...) emphasis", "[": "[...] de-emphasis", "BREAK": "BREAK", "\\": "a \\ escape"}
    found = {text.find(mark): name for mark, name in marks.items() if mark in text}
    return found[min(found)] if found else "its syntax"


def adapters(prompts: Mapping[str, str | None], lora_dir: Any) -> list[prompt_syntax.Lora]:
    """The `<lora:name:weight>` adapters of an image's prompts, each name a file of `lora_dir`."""
    found = [tag for key in ("prompt", "prompt_2") if prompts.get(key) for tag in prompt_syntax.lora_tags(prompts[key])[1]]
    return [prompt_syntax.Lora(str(lora_file(lora_dir, tag.name)), tag.weight) for tag in found]


MAX_WALK = 10_000  # entries of lora_dir looked at for a name found below it


def lora_file(lora_dir: Any, name: str) -> Path:
    """`<lora:name>`'s file, as A1111 finds it: `name.safetensors` in the LoRA folder, or the one file of
    that name below it (A1111's pickled .pt and .ckpt LoRAs are not loaded here)."""
    if not isinstance(lora_dir, str) or not lora_dir:
        raise invalid("lora_dir", lora_dir, f"<lora:{name}> in a prompt needs lora_dir=<the folder of your LoRA files>")
    folder = Path(lora_dir).expanduser()
    if not folder.is_dir():
        raise invalid("lora_dir", lora_dir, "no such folder")
    if not name or name.startswith(("/", "~")) or "\\" in name or ".." in Path(name).parts:
        raise PlanError(f"invalid <lora:{name}>: a name inside lora_dir (no absolute path, no ..)")
    path = folder / f"{name}.safetensors"
    if not path.exists() and "/" not in name:
        below = _below(folder, f"{name}.safetensors")
        if len(below) > 1:
            raise PlanError(f"invalid <lora:{name}>: {len(below)} files of that name in lora_dir={lora_dir}; write <lora:folder/{name}>")
        path = below[0] if below else path
    if path.exists() and not path.resolve().is_relative_to(folder.resolve()):
        raise PlanError(f"invalid <lora:{name}>: {name}.safetensors leads out of lora_dir={lora_dir}")
    if not path.is_file():
        raise PlanError(f"invalid <lora:{name}>: no {name}.safetensors in lora_dir={lora_dir}")
    return path.absolute()


def _below(folder: Path, file_name: str) -> list[Path]:
    """Files named `file_name` in the folders below `folder` (links to folders not followed; bounded)."""
    found, seen = [], 0
    for root, dirs, files in os.walk(folder):
        seen += len(dirs) + len(files)
        if seen > MAX_WALK:
            break
        found += [Path(root) / file_name] if file_name in files else []
    return found


def _over_one_chunk(model: Mapping[str, Any], text: str) -> bool:
    """Whether `text` is over 75 tokens of the model's CLIP tokenizer. A byte-level BPE token holds
    one byte at least, so a short text needs no tokenizer; where the tokenizer is not on this
    machine, a longer one counts as long (the A1111 path then encodes it, the same embedding if it is not)."""
    if sum(len(c.encode()) for c in text if not c.isspace()) <= CHUNK:
        return False
    tokenizer = _tokenizer(str(model.get("id")), model.get("revision"), model.get("config"))
    return tokenizer is None or len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids) > CHUNK


@functools.lru_cache(maxsize=8)
def _tokenizer(model_id: str, revision: str | None, config: str | None) -> Any:
    """The model's CLIP tokenizer from its local files (transformers' tokenizer: no torch), or None."""
    from sweeper.rendering.tiny import tiny_models

    if model_id in tiny_models():
        from sweeper.rendering.tiny import clip_tokenizer

        return clip_tokenizer()[0]
    from sweeper.model_files import model_json

    source = config or model_id
    try:
        found = model_json(source, None if config else revision, "tokenizer/tokenizer_config.json")
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    folder = Path(source).expanduser() / "tokenizer"
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "tokenizer/tokenizer_config.json", revision=None if config else revision)
        folder = Path(str(cached)).parent
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        return None
