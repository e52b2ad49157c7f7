"""The `embeddings` key: textual-inversion embeddings, their tokens usable in the prompts.

`embeddings` is null, a file or a list of files: `.safetensors`, or `.pt` /
`.bin` (read with torch.load(weights_only=True) when rendering: tensors only,
never code). Each is known in prompts by its token: the file's base name, as
A1111 does, or the `token:` written before it (`embeddings=[fox:/ti/v2.pt]`).
Their tokens and content hashes, not their paths, go into the image id. A
`.safetensors` file's shapes are checked here against the model's text
encoders; a `.pt` file's when it loads. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.errors import invalid
from sweeper.planning import tensor_files

SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_BYTES = 16 << 20  # an embedding of 75 vectors for SDXL is 0.6 MB
MAX_EMBEDDINGS = 64
MAX_VECTORS = 75  # one prompt chunk
TOKEN = re.compile(r"[^\s,:()\[\]{}<>|\\]{1,100}")  # no separator of A1111's prompt syntax, no whitespace
SDXL_KEYS = ("clip_l", "clip_g")  # an SDXL embedding: one tensor per text encoder


def embeddings(c: Mapping[str, Any], file_keys: Sequence[str | None], widths: Sequence[int] | None) -> dict[str, tuple[str, ...]]:
    """The spec fields of `embeddings` that are set: `embeddings` (absolute paths), `embedding_tokens` and `embeddings_sha` (20 hex digits each).

    `file_keys`: the tensor each of the model's text encoders takes from a file (SDXL:
    clip_l, clip_g; None: the file's one tensor); `widths`: those encoders' widths, where known."""
    value = c.get("embeddings")
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, (list, tuple)) or not entries or not all(isinstance(entry, str) and entry for entry in entries) or len(entries) > MAX_EMBEDDINGS:
        raise invalid("embeddings", value, f"must be null, an embedding file ({', '.join(SUFFIXES)}) or a list of at most {MAX_EMBEDDINGS}; token:file names its token")
    paths, tokens = [], []
    for entry in entries:
        token, path = _parsed(entry)
        _check_shapes(entry, path, file_keys, widths)
        paths.append(str(path))
        tokens.append(token)
    if len({token.lower() for token in tokens}) < len(tokens):
        raise invalid("embeddings", value, "two embeddings have one token (prompts match tokens ignoring case); name one with token:file")
    shas = tuple(tensor_files.sha256(Path(path))[:20] for path in paths)
    return {"embeddings": tuple(paths), "embedding_tokens": tuple(tokens), "embeddings_sha": shas}


def _parsed(entry: str) -> tuple[str, Path]:
    """(token, absolute path) of `file` or `token:file`."""
    token, sep, rest = entry.partition(":")
    if not sep or Path(entry).expanduser().exists():
        token, rest = Path(entry).stem, entry
    if not TOKEN.fullmatch(token):
        raise invalid("embeddings", entry, "its token must be 1 .. 100 characters without spaces or prompt syntax ( , : ( ) [ ] < > | ); name it with token:file")
    return token, tensor_files.regular_file(rest, "embeddings", SUFFIXES, MAX_BYTES)


def _check_shapes(entry: str, path: Path, file_keys: Sequence[str | None], widths: Sequence[int] | None) -> None:
    """Refuse a `.safetensors` embedding made for another model: SDXL's keys for SD 1.x or the other
    way round, or vectors of another width than the text encoder's (a pickled file is checked at load)."""
    if path.suffix.lower() != ".safetensors":
        return
    shapes = tensor_files.shapes(path)
    if shapes is None:
        raise invalid("embeddings", entry, "not a .safetensors file (its header cannot be read)")
    sdxl = all(key in shapes for key in SDXL_KEYS)
    if sdxl != (None not in file_keys):
        made, takes = ("SDXL (clip_l and clip_g)", "one tensor") if sdxl else ("one text encoder", "clip_l and clip_g (SDXL)")
        raise invalid("embeddings", entry, f"an embedding for {made}; the model takes {takes}: made for another model family")
    found = [shapes[key] for key in SDXL_KEYS] if sdxl else list(shapes.values())
    if len(found) != len(file_keys):
        raise invalid("embeddings", entry, f"holds {len(found)} tensors; an embedding for this model holds {len(file_keys)}")
    for key, shape, width in zip(file_keys, found, widths or [None] * len(found)):
        vectors = 1 if len(shape) == 1 else shape[0] if len(shape) == 2 else 0
        if not 1 <= vectors <= MAX_VECTORS:
            raise invalid("embeddings", entry, f"its tensor{'' if key is None else ' ' + key} has shape {shape}; an embedding is 1 .. {MAX_VECTORS} vectors")
        if width is not None and shape[-1] != width:
            raise invalid("embeddings", entry, f"its vectors{'' if key is None else ' (' + key + ')'} are {shape[-1]} wide; the model's text encoder takes {width}: made for another model")
