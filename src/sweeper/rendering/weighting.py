"""A1111's prompt weighting on CLIP text encoders (SD 1.x, SDXL), for prompt_syntax=a1111.

As A1111 encodes (modules/sd_hijack_clip.py, sd_emphasis.py): the prompt's
weighted pieces are tokenized apart and laid into chunks of 75 tokens, each
wrapped in start and end tokens and padded to 77; a chunk full at a token that
is not a comma moves what follows the last comma (within 20 tokens) into the
next chunk; BREAK ends a chunk early. Prompt and negative get the same number
of chunks (empty ones added). Each chunk is encoded alone; its output is
multiplied by the tokens' weights and rescaled to the mean it had before; the
chunks are joined along the sequence. SDXL does this on both encoders and joins
them on the feature axis as diffusers does; its pooled embedding is the second
encoder's, of the first chunk, unweighted. With every weight 1.0 the result is
the plain prompt's embedding, bit for bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

from sweeper.planning.prompt_syntax import BREAK, lora_tags, parse_attention

CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"


class Chunks(NamedTuple):
    ids: list[list[int]]  # each chunk's 77 token ids
    weights: list[list[float]]


def chunks(tokenizer: Any, text: str) -> Chunks:
    """`text`'s chunks as A1111 lays them out (its `<lora:...>` tags removed)."""
    parsed = parse_attention(lora_tags(text)[0])
    tokenized = tokenizer([piece for piece, _ in parsed], truncation=False, add_special_tokens=False, verbose=False).input_ids
    comma = tokenizer.get_vocab().get(",</w>")
    done: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        done.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for tokens, (piece, weight) in zip(tokenized, parsed):
        if (piece, weight) == BREAK:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                moved = (ids[last_comma + 1:], weights[last_comma + 1:])
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close()
                ids, weights = moved
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not done:
        close()
    return Chunks([_wrapped(tokenizer, part) for part, _ in done], [[1.0, *part, *[1.0] * (CHUNK + 1 - len(part))] for _, part in done])


def _wrapped(tokenizer: Any, ids: list[int]) -> list[int]:
    """Start token, the chunk, end token, then padding to 77 (the tokenizer's pad token, as diffusers pads)."""
    return [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * (CHUNK - len(ids))]


def padded(found: Chunks, count: int, tokenizer: Any) -> Chunks:
    """`found` with empty chunks added up to `count`."""
    empty = count - len(found.ids)
    return Chunks(found.ids + [_wrapped(tokenizer, [])] * empty, found.weights + [[1.0] * (CHUNK + 2)] * empty)


def weighted(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A1111's emphasis on one chunk's output: z times each token's weight, rescaled to z's own mean."""
    before = z.float()
    mean = before.mean()
    after = before * torch.tensor(weights, dtype=torch.float32, device=z.device)[None, :, None]
    new_mean = after.mean()
    if mean == 0 or new_mean == 0:  # no scale restores a zero mean (A1111 would divide 0 by 0: NaN)
        return after.to(z.dtype)
    return (after * (mean / new_mean)).to(z.dtype)


def encoded(found: Chunks, encode: Any) -> tuple[torch.Tensor, Any]:
    """The chunks encoded one by one (`encode`: ids (1, 77) -> (states, pooled)), weighted and joined;
    and the first chunk's pooled output."""
    states, pooled = [], None
    for n, (ids, weights) in enumerate(zip(found.ids, found.weights)):
        z, chunk_pooled = encode(torch.tensor([ids]))
        states.append(weighted(z, weights))
        if n == 0:
            pooled = chunk_pooled
    return torch.cat(states, dim=1), pooled


def chunk_count(*found: Chunks) -> int:
    return max(len(c.ids) for c in found)


def clip_skipped(encoder: Any, ids: torch.Tensor, mask: torch.Tensor | None, clip_skip: int) -> torch.Tensor:
    """A1111's clip skip on SD 1.x: the encoder's hidden state `clip_skip` from the end (1 = the last), final layer norm applied."""
    states = encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-clip_skip]
    return getattr(encoder, "text_model", encoder).final_layer_norm(states).to(encoder.dtype)


def sd15(pipe: Any, spec: Any, clip_skip: int | None, cfg: bool, device: str) -> dict[str, torch.Tensor]:
    """SD 1.x: the one CLIP encoder's last layer (or A1111's clip skip: that layer, final norm applied)."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder

    def encode(ids: torch.Tensor) -> tuple[torch.Tensor, None]:
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):  # as the tokenizer's mask: up to the end token
            mask = (torch.arange(ids.shape[1]) <= ids[0].tolist().index(tokenizer.eos_token_id))[None].long().to(device)
        if clip_skip is None:
            return encoder(ids.to(device), attention_mask=mask)[0].to(encoder.dtype), None
        return clip_skipped(encoder, ids.to(device), mask, clip_skip), None

    texts = [spec.prompt, *([spec.negative_prompt or ""] if cfg else [])]
    found = [chunks(tokenizer, text) for text in texts]
    count = chunk_count(*found)
    embeds = [encoded(padded(f, count, tokenizer), encode)[0] for f in found]
    return {"prompt_embeds": embeds[0], **({"negative_prompt_embeds": embeds[1]} if cfg else {})}


def sdxl(pipe: Any, spec: Any, clip_skip: int | None, cfg: bool, device: str) -> dict[str, torch.Tensor]:
    """SDXL (and its refiner, which has text_encoder_2 only): as diffusers' encode_prompt pairs prompts with
    encoders and picks their layers (the penultimate, further back by clip_skip for the prompt only)."""
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    encoders = encoders if pipe.text_encoder is not None else encoders[1:]
    positive = [spec.prompt, spec.prompt_2 or spec.prompt]
    zeros = spec.negative_prompt is None and pipe.config.force_zeros_for_empty_prompt
    negative = [spec.negative_prompt or "", spec.negative_prompt_2 or spec.negative_prompt or ""] if cfg and not zeros else []
    layer = -((clip_skip or 0) + 2)

    def encoder_of(encoder: Any, index: int) -> Any:
        def encode(ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
            out = encoder(ids.to(device), output_hidden_states=True)
            return out.hidden_states[index], out[0] if out[0].ndim == 2 else None
        return encode

    found = {(side, n): chunks(tokenizer, text) for side, texts in (("+", positive), ("-", negative))
             for n, ((tokenizer, _), text) in enumerate(zip(encoders, texts))}
    count = chunk_count(*found.values())
    embeds: dict[str, list[torch.Tensor]] = {"+": [], "-": []}
    pooled: dict[str, Any] = {}
    for (side, n), parts in found.items():
        tokenizer, encoder = encoders[n]
        states, first_pooled = encoded(padded(parts, count, tokenizer), encoder_of(encoder, layer if side == "+" else -2))
        embeds[side].append(states)
        if first_pooled is not None:
            pooled.setdefault(side, first_pooled)
    dtype = pipe.text_encoder_2.dtype if pipe.text_encoder_2 is not None else pipe.unet.dtype
    prompt_embeds = torch.cat(embeds["+"], dim=-1).to(dtype=dtype, device=device)
    result = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled["+"].to(dtype=dtype, device=device)}
    if cfg and zeros:
        result.update(negative_prompt_embeds=torch.zeros_like(prompt_embeds), negative_pooled_prompt_embeds=torch.zeros_like(result["pooled_prompt_embeds"]))
    elif cfg:
        result.update(negative_prompt_embeds=torch.cat(embeds["-"], dim=-1).to(dtype=dtype, device=device),
                      negative_pooled_prompt_embeds=pooled["-"].to(dtype=dtype, device=device))
    return result


def same_length(per_image: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """A batch's images of different chunk counts, the shorter ones' sequences extended by repeating their
    last vector, as A1111 does for a batch (an image's pixels then depend on its neighbours' lengths)."""
    longest = max(parts["prompt_embeds"].shape[1] for parts in per_image)
    return [{name: _extended(value, longest) if name in ("prompt_embeds", "negative_prompt_embeds") else value for name, value in parts.items()}
            for parts in per_image]


def _extended(value: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - value.shape[1]
    return value if missing == 0 else torch.cat([value, value[:, -1:].repeat(1, missing, 1)], dim=1)


def compel_sd15(pipe: Any, spec: Any, cfg: bool) -> dict[str, torch.Tensor]:
    """prompt_syntax=compel on SD 1.x: compel's own parser and weighting, long prompts in chunks."""
    from compel import CompelForSD

    found = CompelForSD(pipe, device=str(pipe.text_encoder.device))(spec.prompt, negative_prompt=(spec.negative_prompt or "") if cfg else None)
    return {"prompt_embeds": found.embeds, **({"negative_prompt_embeds": found.negative_embeds} if cfg else {})}


def compel_sdxl(pipe: Any, spec: Any, cfg: bool) -> dict[str, torch.Tensor]:
    """prompt_syntax=compel on SDXL: both encoders (prompt_2 as compel's style prompt), the pooled embedding
    compel's; an unset negative prompt is zeros where the model asks for them, as diffusers does."""
    from compel import CompelForSDXL

    zeros = spec.negative_prompt is None and pipe.config.force_zeros_for_empty_prompt
    negative = (spec.negative_prompt or "", spec.negative_prompt_2 or spec.negative_prompt or "") if cfg and not zeros else (None, None)
    found = CompelForSDXL(pipe, device=str(pipe.text_encoder.device))(
        spec.prompt, style_prompt=spec.prompt_2 or spec.prompt, negative_prompt=negative[0], negative_style_prompt=negative[1],
    )
    result = {"prompt_embeds": found.embeds, "pooled_prompt_embeds": found.pooled_embeds}
    if cfg and zeros:
        result.update(negative_prompt_embeds=torch.zeros_like(found.embeds), negative_pooled_prompt_embeds=torch.zeros_like(found.pooled_embeds))
    elif cfg:
        result.update(negative_prompt_embeds=found.negative_embeds, negative_pooled_prompt_embeds=found.negative_pooled_embeds)
    return result
