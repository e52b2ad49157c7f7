"""LoRA adapters on a resident pipeline: each loaded once per runtime, then switched.

`apply` makes the pipeline's adapters what a spec asks for: adapters not yet
loaded are loaded (`load_lora_weights`, named by their content hash), then
`set_adapters(names, weights)`; a spec without LoRA disables them
(`disable_lora`). Nothing is reloaded for another weight or set, and the
model never is. img2img and inpaint pipelines share the base's modules, so
the adapters live with the base's resident entry. The refiner gets none.
"""

from __future__ import annotations

import contextlib
import logging
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from sweeper.planning import lora_files
from sweeper.planning.spec import ImageSpec

if TYPE_CHECKING:
    from sweeper.rendering.runtime import Runtime


class LoraMismatch(RuntimeError):
    """A LoRA whose weights do not fit the model (made for another family or model)."""


def adapter_name(sha: str) -> str:
    return f"lora_{sha}"


def apply(runtime: Runtime, base_key: tuple, pipe: Any, spec: ImageSpec) -> None:
    """Load the spec's adapters that `pipe`'s modules lack, then activate them with the spec's weights."""
    resident = runtime.residents[("base", base_key)]
    if not spec.lora_sha:
        if resident.adapters:
            pipe.disable_lora()
        return
    for value, sha in zip(spec.lora, spec.lora_sha):
        if sha not in resident.adapters:
            try:
                _load(pipe, value, sha, spec.family)
            except Exception:
                # adapter layers may be half injected: drop the model, the next batch loads it clean
                runtime.evict(lambda key: key[1] == base_key)
                raise
            resident.adapters.add(sha)
            runtime.loads.append(("lora", sha))
    pipe.enable_lora()
    pipe.set_adapters([adapter_name(sha) for sha in spec.lora_sha], adapter_weights=list(spec.lora_scale))


def _load(pipe: Any, value: str, sha: str, family: str) -> None:
    path = lora_files.weights_file(value)
    if lora_files.file_hashes(path)[0] != sha:
        raise RuntimeError(f"{path} changed since the sweep was planned; run the command again to plan it anew")
    with _warnings("diffusers") as warned, _warnings("peft") as warned_peft, warnings.catch_warnings():
        # peft warns whenever a second adapter joins a model: that is what lora lists are for
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name(sha))
        except Exception as error:  # diffusers and peft raise ValueError, RuntimeError, KeyError on keys that do not fit
            if "PEFT backend is required" in str(error):
                raise RuntimeError("LoRA adapters need peft: pip install peft") from None
            raise LoraMismatch(_mismatch(value, family, str(error))) from None
    unfit = [message for message in warned + warned_peft if "led to unexpected keys" in message or "led to missing keys" in message]
    loaded = any(adapter_name(sha) in names for names in pipe.get_list_adapters().values())
    if unfit or not loaded:
        raise LoraMismatch(_mismatch(value, family, unfit[0] if unfit else "no weight of it fits the model"))


def _mismatch(value: str, family: str, reason: str) -> str:
    """One line naming the file: its keys or shapes do not fit this model."""
    reason = textwrap.shorten(reason, 200, placeholder=" ...")  # whole words
    return f"lora={Path(value).name}: its weights do not fit the {family} model (a LoRA made for another model family?): {reason}"


@contextlib.contextmanager
def _warnings(logger_name: str) -> Iterator[list[str]]:
    """The warnings a library logs meanwhile (diffusers and peft log keys that do not fit and go on)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handlers, level, propagate = logger.handlers, logger.level, logger.propagate
    logger.handlers, logger.propagate = [Collect(logging.WARNING)], False  # collected, not printed: a mismatch is one error line
    logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)


@contextlib.contextmanager
def disabled(pipe: Any, spec: ImageSpec) -> Iterator[None]:
    """The spec's adapters off meanwhile: the refiner shares the base's text_encoder_2, and gets no LoRA."""
    if not spec.lora_sha:
        yield
        return
    pipe.disable_lora()
    try:
        yield
    finally:
        pipe.enable_lora()
