"""VAEs on a resident pipeline: each `vae` value loaded once per runtime, swapped in for its images.

`apply` gives the pipelines of a call (the base or its img2img / inpaint
pipeline, and the refiner, which decodes) the spec's VAE, or the model's own
for a spec without one. The VAEs loaded live with the base model's resident
entry: they go when the model goes. Each gets the spec's VAE options, as the
model's own did (pipelines.ready_vae); whether it decodes in float32 under
float16 is its own config's `force_upcast` (False for the fp16-fixed VAEs).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sweeper.planning import vae_files
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.pipelines import TORCH_DTYPES, own_vae, ready_vae

if TYPE_CHECKING:
    from sweeper.rendering.runtime import Resident, Runtime


def apply(runtime: Runtime, base_key: tuple, pipes: Sequence[Any], spec: ImageSpec, device: str) -> None:
    """Give each of `pipes` the spec's VAE: the model's own, or the `vae` key's (loaded on first use)."""
    own = own_vae(runtime, base_key)
    vae = own if spec.vae_sha is None else _loaded(runtime, runtime.residents[("base", base_key)], spec, own, device)
    for pipe in pipes:
        if pipe is not None and pipe.vae is not vae:
            pipe.vae = vae


def _loaded(runtime: Runtime, resident: Resident, spec: ImageSpec, own: Any, device: str) -> Any:
    if spec.vae_sha not in resident.vaes:
        resident.vaes[spec.vae_sha] = _load(spec, own, device)
        runtime.loads.append(("vae", spec.vae_sha))
    return resident.vaes[spec.vae_sha]


def _load(spec: ImageSpec, own: Any, device: str) -> Any:
    from diffusers import AutoencoderKL

    source = vae_files.located(spec.vae)
    if vae_files.content_hash(source) != spec.vae_sha:
        raise RuntimeError(f"vae={source.name}: changed since the sweep was planned; run the command again to plan it anew")
    dtype = TORCH_DTYPES[spec.dtype]
    if source.is_dir():
        vae = AutoencoderKL.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
    else:  # a VAE file holds weights only: its config is the model's VAE's, as A1111 loads one
        with tempfile.TemporaryDirectory(prefix="sweeper-vae-") as folder:
            config = {key: value for key, value in own.config.items() if not key.startswith("_")}
            (Path(folder) / vae_files.CONFIG).write_text(json.dumps({"_class_name": vae_files.CLASS, **config}), encoding="utf-8")
            vae = AutoencoderKL.from_single_file(str(source), config=folder, dtype=dtype)
    if spec.fuse_qkv:
        vae.fuse_qkv_projections()
    ready_vae(vae, spec)
    return vae.to(device) if spec.offload == "none" else vae
