"""Textual-inversion embeddings on a resident pipeline: each loaded once per runtime, under a token of its own.

An embedding is loaded with diffusers' `load_textual_inversion` (SDXL: its
clip_l tensor into the first text encoder, clip_g into the second) under an
internal token named by its content hash, and stays loaded. A spec's prompts
are encoded with its tokens (the file's base name, or the token:file given)
written as those internal ones, whole words and any case, as A1111 matches
them. The prompts of a spec without the embedding never hold its internal
token, so an embedding loaded for one spec reaches no other spec's images.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.planning import embedding_files, tensor_files
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.families._stable_diffusion import PROMPTS

if TYPE_CHECKING:
    from sweeper.rendering.runtime import Runtime



class EmbeddingMismatch(RuntimeError):
    """An embedding whose tensors do not fit the model's text encoders."""


def internal_token(sha: str) -> str:
    return f"<ti-{sha}>"


def apply(runtime: Runtime, base_key: tuple, pipe: Any, spec: ImageSpec, family: Any) -> None:
    """Load the spec's embeddings that `pipe`'s text encoders lack (they are shared with its img2img and inpaint pipelines)."""
    resident = runtime.residents[("base", base_key)]
    for path, sha in zip(spec.embeddings or (), spec.embeddings_sha or ()):
        if sha not in resident.inversions:
            _load(pipe, Path(path), sha, family)
            resident.inversions.add(sha)
            runtime.loads.append(("embedding", sha))


def with_tokens(spec: ImageSpec) -> ImageSpec:
    """The spec with its embeddings' tokens in its prompts written as their internal tokens."""
    if not spec.embeddings_sha:
        return spec
    internal = {token.lower(): internal_token(sha) for token, sha in zip(spec.embedding_tokens, spec.embeddings_sha)}
    words = re.compile(r"(?<!\w)(" + "|".join(re.escape(token) for token in spec.embedding_tokens) + r")(?!\w)", re.IGNORECASE)
    changed = {name: words.sub(lambda match: internal[match[0].lower()], getattr(spec, name)) for name in PROMPTS if getattr(spec, name)}
    return dataclasses.replace(spec, **changed)


def _load(pipe: Any, path: Path, sha: str, family: Any) -> None:
    if tensor_files.sha256(path)[:20] != sha:
        raise RuntimeError(f"embeddings={path.name}: changed since the sweep was planned; run the command again to plan it anew")
    tensors = _tensors(path, [key for key, _, _ in family.embedding_encoders])
    encoders = [(getattr(pipe, tokenizer), getattr(pipe, encoder)) for _, tokenizer, encoder in family.embedding_encoders]
    for (key, _, _), tensor, (_, encoder) in zip(family.embedding_encoders, tensors, encoders):  # all checked before any loads
        width = encoder.get_input_embeddings().weight.shape[-1]
        if tensor.shape[-1] != width:
            where = "" if key is None else f" ({key})"
            raise EmbeddingMismatch(f"embeddings={path.name}: its vectors{where} are {tensor.shape[-1]} wide; the model's text encoder takes {width}: made for another model")
    for tensor, (tokenizer, encoder) in zip(tensors, encoders):
        pipe.load_textual_inversion(tensor.to(encoder.dtype), token=internal_token(sha), tokenizer=tokenizer, text_encoder=encoder)


def _tensors(path: Path, keys: list[str | None]) -> list[Any]:
    """One (vectors, width) tensor per text encoder from the file: SDXL's clip_l and clip_g; else
    its one tensor (A1111's `string_to_param` / `emb_params`, or diffusers' token -> tensor)."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path))
    else:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only: never code
        except Exception as error:
            raise EmbeddingMismatch(f"embeddings={path.name}: not a file of tensors torch loads without running code ({type(error).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]
    if None in keys:
        found = [value for value in data.values() if isinstance(value, torch.Tensor)] if isinstance(data, dict) else [data]
        if len(found) != 1:
            raise EmbeddingMismatch(f"embeddings={path.name}: holds {len(found)} tensors; an embedding for this model holds one")
    else:
        found = [data.get(key) if isinstance(data, dict) else None for key in keys]
        if not all(isinstance(tensor, torch.Tensor) for tensor in found):
            raise EmbeddingMismatch(f"embeddings={path.name}: holds no {' and '.join(keys)} tensors: not an embedding for this model")
    tensors = [tensor.detach()[None] if tensor.ndim == 1 else tensor.detach() for tensor in found]
    for tensor in tensors:
        if tensor.ndim != 2 or not 1 <= tensor.shape[0] <= embedding_files.MAX_VECTORS or not tensor.is_floating_point():
            raise EmbeddingMismatch(f"embeddings={path.name}: a tensor of shape {list(tensor.shape)}; an embedding is 1 .. {embedding_files.MAX_VECTORS} float vectors")
    return tensors
