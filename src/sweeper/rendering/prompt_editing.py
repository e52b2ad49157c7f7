"""A1111's prompt editing (`[a:b:0.5]`) and alternation (`[a|b]`): the prompt embeddings change
between denoising steps.

Each image's prompts are read at every step (planning/prompt_syntax.schedule);
each text they take is encoded once, as any prompt is (render.prompt_embeddings
and its cache), and diffusers' step-end callback hands the pipeline the next
step's embeddings, in the layout its loop holds them: the negative half and
the positive half of the batch joined for classifier-free guidance, SDXL's
pooled embeddings too. Steps are counted as A1111 counts them: from the
loop's first model call (in img2img and inpaint too, whose loop starts part
way into the noise schedule), one per model call (a second-order scheduler's
fractions are of twice the steps). Planning refuses it with a refiner and
the hires fix, whose loops are others.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from sweeper.planning import prompt_syntax
from sweeper.planning.weighting import edit_steps
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.families._stable_diffusion import PROMPTS



def edited(specs: Sequence[ImageSpec]) -> bool:
    """Whether any prompt of the batch changes during the denoising steps."""
    return any(spec.prompt_syntax == "a1111" and any(prompt_syntax.scheduled(getattr(spec, name) or "") for name in PROMPTS) for spec in specs)


def per_step(specs: Sequence[ImageSpec]) -> tuple[list[tuple[ImageSpec, ...]], list[int]]:
    """The batch as its prompts read during the loop: each distinct reading once (its specs with those
    prompts), and per model call the index of its reading. A prompt takes few texts over many steps."""
    steps = edit_steps(specs[0].steps, specs[0].scheduler_class)
    schedules = [{name: prompt_syntax.schedule(getattr(spec, name), steps) for name in PROMPTS if getattr(spec, name)} for spec in specs]
    readings: dict[tuple, int] = {}
    batches, order = [], []
    for step in range(steps):
        texts = tuple(tuple((name, prompt_syntax.at_step(found, step)) for name, found in schedule.items()) for schedule in schedules)
        if texts not in readings:
            readings[texts] = len(batches)
            batches.append(tuple(dataclasses.replace(spec, **dict(read)) for spec, read in zip(specs, texts)))
        order.append(readings[texts])
    return batches, order


def switching(pipe: Any, readings: list[dict[str, torch.Tensor]], order: list[int]) -> dict[str, Any]:
    """The call's arguments that hand the pipeline, after model call i, the embeddings (as call arguments)
    of reading `order[i + 1]`, where it differs from call i's."""
    names = [name for name in ("prompt_embeds", "add_text_embeds") if name in pipe._callback_tensor_inputs]
    return {"callback_on_step_end": _callback(readings, order), "callback_on_step_end_tensor_inputs": names}


def _callback(readings: list[dict[str, torch.Tensor]], order: list[int]) -> Callable[..., dict[str, torch.Tensor]]:
    def on_step_end(pipe: Any, step: int, timestep: Any, held: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        now, after = (order[min(n, len(order) - 1)] for n in (step, step + 1))
        if after == now:
            return {}  # the loop holds them already
        following = readings[after]
        given = {"prompt_embeds": "prompt_embeds", "add_text_embeds": "pooled_prompt_embeds"}
        out = {}
        for name, tensor in held.items():
            positive = following[given[name]]
            cfg = tensor.shape[0] == 2 * positive.shape[0]  # the loop holds [negative; positive] for guidance
            value = torch.cat([following[f"negative_{given[name]}"], positive]) if cfg else positive
            out[name] = value.to(device=tensor.device, dtype=tensor.dtype)
        return out

    return on_step_end
