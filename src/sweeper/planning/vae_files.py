"""The `vae` key: another VAE decodes (and, from an init image, encodes) the latents.

`vae` is null (the model's own), a hub id, a local diffusers folder
(config.json + diffusion_pytorch_model.safetensors, as `save_pretrained`
writes it) or one `.safetensors` file (A1111's VAE files; loaded with the
model's VAE config). Its content hash, not its path, goes into the image id:
a moved VAE keeps its images, an edited one renders them again. No torch here.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid, one_line
from sweeper.model_files import HUB_ID, model_json
from sweeper.planning import tensor_files

CONFIG, WEIGHTS = "config.json", "diffusion_pytorch_model.safetensors"  # what from_pretrained loads (use_safetensors)
SUFFIX = ".safetensors"  # pickled .pt/.ckpt/.bin VAEs could run code when loaded
MAX_BYTES = 2 << 30  # an SDXL VAE is 335 MB in float32; a whole checkpoint is not a VAE
CLASS = "AutoencoderKL"  # the SD 1.x and SDXL VAEs' class


def vae(c: Mapping[str, Any], latent_channels: int, model: str) -> dict[str, str]:
    """The spec fields of a `vae` that is set: `vae` (a file or folder by its absolute path, or a hub id) and `vae_sha`
    (20 hex digits of its content hash). A VAE whose latents have other channels than
    the model's (`latent_channels`) is refused: made for another model family."""
    value = c.get("vae")
    if not isinstance(value, str) or not value:
        raise invalid("vae", value, f"must be null (the model's own), a VAE's hub id, diffusers folder or {SUFFIX} file")
    source = located(value)
    channels = _latent_channels(value, source)
    if channels is not None and channels != latent_channels:
        raise invalid("vae", value, f"its latents have {channels} channels, {model}'s have {latent_channels}: a VAE made for another model family")
    path = Path(value).expanduser()
    return {"vae": str(path.absolute()) if path.exists() else value, "vae_sha": content_hash(source)}


def located(value: str) -> Path:
    """The VAE's file, or the folder holding its config and weights (a hub id's from the local
    cache when offline). PlanError (one line) otherwise."""
    path = Path(value).expanduser()
    if path.is_dir():
        return _folder(value, path)
    if path.exists() or value.endswith(SUFFIX) or value.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(value) or ".." in value:
        return tensor_files.regular_file(value, "vae", (SUFFIX,), MAX_BYTES)
    return _folder(value, _hub_snapshot(value))


def _folder(value: str, folder: Path) -> Path:
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise invalid("vae", value, f"the folder holds no {name} (a diffusers VAE folder, as save_pretrained writes it; pickled .bin weights are not loaded)")
        if (folder / name).stat().st_size > MAX_BYTES:
            raise invalid("vae", value, f"its {name} is over {MAX_BYTES >> 20} MB (a bound against a wrong file)")
    return folder.absolute()


@functools.lru_cache(maxsize=16)  # asked again for every PNG's text: one hub request per process
def _hub_snapshot(value: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(value, allow_patterns=[CONFIG, WEIGHTS]))
    except Exception as error:  # offline, no such repo: either way it cannot be had
        raise PlanError(f"invalid vae={value!r}: not in the local Hugging Face cache and not downloadable "
                        f"({one_line(error)[:120]}); download it first (hf download {value})") from None


def _latent_channels(value: str, source: Path) -> int | None:
    """The channels of the VAE's latents: its config's (a folder), or its decoder's first
    convolution's input (a file's header); None where it cannot be read."""
    if source.is_dir():
        try:
            config = model_json(str(source), None, CONFIG) or {}
        except (OSError, ValueError) as error:
            raise invalid("vae", value, f"its {CONFIG} cannot be read ({one_line(error)[:80]})") from None
        if config.get("_class_name", CLASS) != CLASS:
            raise invalid("vae", value, f"its class is {str(config.get('_class_name'))[:40]}; SD 1.x and SDXL decode with an {CLASS}")
        channels = config.get("latent_channels", 4)
        return channels if isinstance(channels, int) and not isinstance(channels, bool) else None
    shapes = tensor_files.shapes(source)
    if shapes is None:
        raise invalid("vae", value, f"not a {SUFFIX} file (its header cannot be read)")
    found = {shape[1] for name, shape in shapes.items() if name.endswith("decoder.conv_in.weight") and len(shape) == 4}
    if not found:
        raise invalid("vae", value, "holds no VAE decoder (no decoder.conv_in weight): not a VAE file")
    return found.pop() if len(found) == 1 else None


def content_hash(source: Path) -> str:
    """20 hex digits of the file's sha256 (A1111's "VAE hash" is its first 10); of a folder,
    of its config's and weights' hashes together."""
    if source.is_file():
        return tensor_files.sha256(source)[:20]
    parts = [f"{name}:{tensor_files.sha256(source / name)}" for name in (CONFIG, WEIGHTS)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
