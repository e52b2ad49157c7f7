"""Qwen-Image (families/qwen_image.py) on its tiny model, through the CLI: each of its keys moves the
pixels where it should and not where it should not, the manifest and PNG text say what ran, img2img,
inpaint, LoRA, batching and replay work, and what it cannot honour is refused in one line.

Two sweeps (in the session's warm interpreter) cover the axes, zipped so each case is one job:
the CFG and schedule keys batched (batch_size=auto), then img2img, inpaint and LoRA with batch_size=1.
The tiny model's schedule keeps its first and last sigma whatever the keys say (shift_terminal), so
they show only from 3 steps on: the preset's 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import composed_job, refused_in_one_line
from sweeper import replay
from sweeper.errors import PlanError
from sweeper.planning.plan import plan
from sweeper.rendering.tiny import tiny_model_dir

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny calls: a second thread only waits on a busy machine
PROMPTS = "prompt=[a red cat,a small blue dog on green grass]"
# One job per column: (name, true_cfg, negative_prompt, max_sequence_length, shift, dynamic_shift, sigmas).
CASES = [
    ("base", "null", "null", "null", "null", "null", "default"),  # the preset's and the family's defaults
    ("negative", "null", "blurry", "null", "null", "null", "default"),
    ("cfg7", 7, "null", "null", "null", "null", "default"),
    ("cfg1", 1, "null", "null", "null", "null", "default"),
    ("cfg1_negative", 1, "blurry", "null", "null", "null", "default"),
    ("msl1024", "null", "null", 1024, "null", "null", "default"),
    ("msl8", "null", "null", 8, "null", "null", "default"),
    ("shift3", "null", "null", "null", 3, "null", "default"),
    ("static", "null", "null", "null", "null", "false", "default"),
    ("karras", "null", "null", "null", "null", "null", "karras"),
    ("dynamic", "null", "null", "null", "null", "true", "default"),
]
KEYS = ("true_cfg", "negative_prompt", "max_sequence_length", "shift", "dynamic_shift", "sigmas")
# Second sweep: (name, mode, init_image, mask_image, strength, lora, lora_scale).
IMAGE_CASES = [
    ("txt2img", "txt2img", "null", "null", 0.6, "null", 1),
    ("img2img", "img2img", "init.png", "null", 0.6, "null", 1),
    ("img2img_09", "img2img", "init.png", "null", 0.9, "null", 1),
    ("inpaint", "inpaint", "init.png", "mask.png", 0.6, "null", 1),
    ("lora", "txt2img", "null", "null", 0.6, "q.safetensors", 1),
    ("lora_05", "txt2img", "null", "null", 0.6, "q.safetensors", 0.5),
    ("lora_0", "txt2img", "null", "null", 0.6, "q.safetensors", 0),
    ("lora_kohya", "txt2img", "null", "null", 0.6, "q_kohya.safetensors", 1),
]
IMAGE_KEYS = ("mode", "init_image", "mask_image", "strength", "lora", "lora_scale")


def _zipped(cases: list[tuple], keys: tuple[str, ...]) -> list[str]:
    columns = list(zip(*cases))[1:]
    return [*(f"{key}={','.join(str(v) for v in column)}" for key, column in zip(keys, columns)), f"hydra.sweeper.zip=[[{','.join(keys)}]]"]


class Sweep:
    """A finished sweep: its manifest rows by case (job) and prompt (0: "a red cat"), their pixels and PNGs."""

    def __init__(self, folder: Path, cases: list[tuple]) -> None:
        self.folder, self.manifest = folder, pd.read_parquet(folder / "manifest.parquet")
        self.jobs = {case[0]: num for num, case in enumerate(cases)}

    def row(self, name: str, prompt: int = 0) -> pd.Series:
        rows = self.manifest[self.manifest.job_num == self.jobs[name]].sort_values("prompt")
        assert len(rows) == 2, (name, rows)
        return rows.iloc[prompt]

    def pixels(self, name: str, prompt: int = 0) -> np.ndarray:
        return np.asarray(Image.open(self.folder / self.row(name, prompt).path).convert("RGB")).astype(int)

    def diff(self, a: str, b: str) -> int:
        """The largest pixel difference of two cases, over both prompts (0..255)."""
        return max(int(np.abs(self.pixels(a, n) - self.pixels(b, n)).max()) for n in (0, 1))

    def png(self, name: str, prompt: int = 0) -> Path:
        return self.folder / self.row(name, prompt).path


@pytest.fixture(scope="module")
def sweep(warm_cli, tmp_path_factory) -> Sweep:
    folder = tmp_path_factory.mktemp("qwen") / "sweep"
    done = warm_cli.run("-m", "model=tiny-qwen-image", PROMPTS, *_zipped(CASES, KEYS), f"hydra.sweep.dir={folder}", cwd=folder.parent, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return Sweep(folder, CASES)


def _lora(path: Path) -> Path:
    """A random peft LoRA on the tiny transformer's attention, saved as diffusers saves one."""
    import torch
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sweeper.rendering.tiny import tiny_model_dir

    transformer = QwenImageTransformer2DModel.from_pretrained(tiny_model_dir("tiny-qwen-image") / "transformer")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=targets))
    QwenImagePipeline.save_lora_weights(path.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=path.name)
    return path


def _to_kohya(source: Path, target: Path) -> Path:
    """The same adapter with the key names of kohya-style trainers: diffusion_model.<module>.lora_down/lora_up.weight and .alpha."""
    import torch
    from safetensors.torch import load_file, save_file

    converted = {}
    for key, tensor in load_file(source).items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        converted[f"diffusion_model.{module}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
        if kind.startswith("A"):
            converted[f"diffusion_model.{module}.alpha"] = torch.tensor(float(tensor.shape[0]))
    save_file(converted, target)
    return target


@pytest.fixture(scope="module")
def images(warm_cli, tmp_path_factory) -> Sweep:
    folder = tmp_path_factory.mktemp("qwen-images")
    pattern = (np.indices((40, 48)).sum(axis=0) * 5 % 256).astype("uint8")  # another size than the output: resized to it
    Image.fromarray(pattern).convert("RGB").save(folder / "init.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[:, 24:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    _to_kohya(_lora(folder / "q.safetensors"), folder / "q_kohya.safetensors")
    args = ("-m", "model=tiny-qwen-image", PROMPTS, "batch_size=1", *_zipped(IMAGE_CASES, IMAGE_KEYS), f"hydra.sweep.dir={folder / 'sweep'}")
    done = warm_cli.run(*args, cwd=folder, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return Sweep(folder / "sweep", IMAGE_CASES)


# --- what each key does -----------------------------------------------------------------------


def test_each_key_moves_the_pixels_where_it_runs_and_not_where_it_does_not(sweep):
    changes = {  # vs the preset's defaults: true_cfg 4 with "" as the negative prompt, dynamic shift
        "negative": "a negative prompt under CFG",
        "cfg7": "another true_cfg",
        "cfg1": "true_cfg 1: CFG off",
        "msl8": "prompts cut at 8 tokens",
        "shift3": "a static shift of 3",
        "static": "dynamic_shift=false (the scheduler's shift 1)",
        "karras": "Karras sigmas",
    }
    for name, what in changes.items():
        assert sweep.diff(name, "base") > 2, what
    assert sweep.diff("msl1024", "base") == 0  # both prompts are shorter than either limit
    assert sweep.diff("dynamic", "base") == 0  # the tiny model's own scheduler shifts dynamically
    assert sweep.diff("cfg7", "negative") > 2 and sweep.diff("shift3", "static") > 2
    # true_cfg 1 runs no CFG: a negative prompt is dropped at planning, so the sweep rendered cfg1_negative as cfg1
    dropped = plan([composed_job(0, "model=tiny-qwen-image", PROMPTS, "true_cfg=1", "negative_prompt=blurry")])
    assert [spec.image_id for spec in dropped] == [sweep.row("cfg1", n).image_id for n in (0, 1)]
    assert not (sweep.manifest.job_num == sweep.jobs["cfg1_negative"]).any() and len(sweep.manifest) == 2 * (len(CASES) - 1)


def test_the_manifest_and_png_text_say_what_ran(sweep):
    base, negative, off, cut, shift = (sweep.row(name) for name in ("base", "negative", "cfg1", "msl8", "shift3"))
    # the defaults that run are filled in; CFG runs with "" where no negative prompt is given
    assert (base.true_cfg, base.max_sequence_length, base.negative_prompt, base.guidance) == (4.0, 512, "", 1.0)
    assert (negative.negative_prompt, off.true_cfg) == ("blurry", 1.0) and pd.isna(off.negative_prompt)
    assert pd.isna(base["shift"]) and base.dynamic_shift is None and (shift["shift"], shift.dynamic_shift) == (3.0, False)
    assert cut.warning == "prompt truncated to 8 tokens" and pd.isna(base.warning)
    assert set(sweep.manifest.base_steps) == {4} and set(sweep.manifest.dtype) == {"float32"}
    assert set(sweep.manifest.batch_size) >= {4}  # "" and "blurry" share a call: embeddings of other lengths, padded
    with Image.open(sweep.png("karras")) as image:
        text, recorded = image.text["parameters"], json.loads(image.text["sweeper"])
    # Forge's names: true_cfg is the CFG scale; guidance, which does nothing here, is left out
    version = recorded["versions"]["sweeper"]
    assert text.splitlines()[1] == f"Steps: 4, Sampler: Euler, Schedule type: karras, CFG scale: 4, Seed: 0, Size: 32x32, Model: tiny-qwen-image, Version: sweeper {version}"
    stored = recorded["spec"]
    assert (stored["true_cfg"], stored["negative_prompt"], stored["max_sequence_length"], stored["family"]) == (4.0, "", 512, "qwen-image")
    with Image.open(sweep.png("negative")) as image:
        assert image.text["parameters"].splitlines()[1] == "Negative prompt: blurry"


def test_a_batch_of_different_prompts_renders_as_each_prompt_alone(sweep, images):
    # the sweep's base case ran as one call of 4 (with the negative case), the second sweep's one image a call
    assert sweep.row("base").image_id == images.row("txt2img").image_id
    assert images.row("txt2img").batch_size == 1
    for prompt in (0, 1):
        assert np.abs(sweep.pixels("base", prompt) - images.pixels("txt2img", prompt)).max() <= 2


def test_img2img_and_inpaint_take_the_init_image_at_the_sweeps_size(images):
    assert images.diff("img2img", "txt2img") > 2 and images.diff("img2img", "img2img_09") > 2 and images.diff("inpaint", "img2img") > 2
    for name in ("img2img", "inpaint"):
        assert images.pixels(name).shape == (32, 32, 3)
    # diffusers' Qwen img2img runs steps - int(steps - steps * strength): 3 of 4 at 0.6 (SDXL: 2)
    assert (images.row("img2img").base_steps, images.row("img2img_09").base_steps, images.row("inpaint").base_steps) == (3, 4, 3)


def test_a_lora_changes_the_pixels_and_its_weight_scales_it(images):
    assert images.diff("lora", "txt2img") > 2 and images.diff("lora_05", "lora") > 0 and images.diff("lora_05", "txt2img") > 0
    assert images.diff("lora_0", "txt2img") == 0  # weight 0: as without
    assert images.diff("lora_kohya", "lora") == 0  # kohya's key names: diffusers converts them on load
    with Image.open(images.png("lora_05")) as image:
        assert image.text["parameters"].splitlines()[0] == "a red cat <lora:q:0.5>"


def test_replay_renders_the_same_pixels(sweep, capsys):
    for name in ("negative", "shift3"):  # a batched CFG call with "" and "blurry"; a static shift
        assert replay.main([str(sweep.png(name))]) == 0
    assert capsys.readouterr().out.count(": identical (32x32") == 2


# --- refusals ---------------------------------------------------------------------------------

REFUSED = [
    (["guidance=5"], "invalid guidance=5: Qwen-Image has no guidance scale (it is not guidance-distilled); its CFG scale is true_cfg (default 4); leave guidance at 1"),
    (["shift=3", "dynamic_shift=true"], "invalid shift=3.0: dynamic_shift=true shifts by image size and ignores shift; set dynamic_shift=false"),
    (["prompt_2=x"], "invalid prompt_2=x: model=tiny-qwen-image is Qwen-Image (qwen-image), which ignores it; the keys of its own: negative_prompt, true_cfg, max_sequence_length, shift, dynamic_shift, sigmas"),
    (["original_size=[64,64]"], "invalid original_size=[64, 64]: model=tiny-qwen-image is Qwen-Image (qwen-image), which ignores it"),
    (["clip_skip=2"], "invalid clip_skip=2: model=tiny-qwen-image is Qwen-Image (qwen-image), which ignores it"),
    (["refiner=tiny"], "invalid refiner=tiny: model=tiny-qwen-image is Qwen-Image (qwen-image), which ignores it"),
    (["max_sequence_length=1025"], "invalid max_sequence_length=1025: must be at most 1024 tokens"),
    (["scheduler=euler"], "invalid scheduler='euler': Qwen-Image models take flow schedulers: auto, "),
    (["scheduler=dpmpp_2m", "+scheduler.kwargs.use_flow_sigmas=true", "+scheduler.kwargs.prediction_type=flow_prediction"],
     "invalid scheduler='dpmpp_2m': Qwen-Image's pipelines run FlowMatchEulerDiscreteScheduler only (tried here): auto, flow_euler"),
]


def test_what_it_cannot_honour_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "model=tiny-qwen-image", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


def test_another_model_id_is_planned_as_qwen_image_from_its_model_index():

    (spec,) = plan([composed_job(0, "model=tiny", f"model.id={tiny_model_dir('tiny-qwen-image')}", "guidance=1")])
    assert (spec.family, spec.true_cfg, spec.max_sequence_length, spec.negative_prompt) == ("qwen-image", 4.0, 512, "")


def test_a_qwen_image_edit_checkpoint_is_refused_as_of_no_family_sweeper_knows(tmp_path):
    # Edit's pipeline needs a Qwen2VLProcessor, which needs torchvision: not a pipeline of this family
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(PlanError) as error:
        plan([composed_job(0, "model=tiny-qwen-image", f"model.id={tmp_path}")])
    assert "\n" not in str(error.value) and "its pipeline QwenImageEditPipeline is of no family sweeper knows" in str(error.value)
