"""Flux.2 Klein (families/flux2_klein.py) through the real CLI: a tiny sweep of the step-distilled
model and one of the base model over the family's own axes, its refusals, replay and LoRA.

The tiny models share their weights (`tiny-flux2-klein` is distilled, `tiny-flux2-klein-base` is
not), so at guidance 1 (no CFG) they render the same pixels. Their random text side moves pixels
by a few levels only: images compared for a change are rendered in calls of the same composition
(bit-identical otherwise), so any difference counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import main_per_case, plan_config
from PIL import Image

from sweeper import replay
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: per-op overhead dominates, and a busy machine's threads wait on each other
SMALL = ("width=32", "height=32")
PROMPTS = ("a red cube on a table", "a blue sphere in the sky")
LONG = "a small house by a lake with tall mountains and a pine forest behind it"  # cut inside the prompt at 64 tokens (one per byte here)


def sweep(warm_cli, out: Path, *args: str) -> pd.DataFrame:
    result = warm_cli.run("-m", *SMALL, *args, f"hydra.sweep.dir={out}", cwd=out.parent, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    df = pd.read_parquet(out / "manifest.parquet")
    assert set(df.status) == {"ok"}, df.error.tolist()
    return df


def pixels(out: Path, df: pd.DataFrame) -> dict:
    """(job_num, prompt) -> the PNG's pixels."""
    return {(row.job_num, row.prompt): np.asarray(Image.open(out / row.path).convert("RGB")).astype(int) for row in df.itertuples()}


def differ(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def png_text(out: Path, df: pd.DataFrame, job: int, prompt: str) -> tuple[str, dict]:
    row = df[(df.job_num == job) & (df.prompt == prompt)].iloc[0]
    text = Image.open(out / row.path).text
    return text["parameters"], json.loads(text["sweeper"])


@pytest.fixture(scope="module")
def klein_lora(tmp_path_factory) -> Path:
    """A random LoRA on the tiny transformer's attention inputs, saved as the pipeline saves one (diffusers format)."""
    import torch
    from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sweeper.rendering.tiny import tiny_model_dir

    transformer = Flux2Transformer2DModel.from_pretrained(tiny_model_dir("tiny-flux2-klein") / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        # to_qkv_mlp_proj: the single blocks' fused input, Flux.2's own
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_qkv_mlp_proj"]))
    folder = tmp_path_factory.mktemp("klein-lora")
    layers = {key: value * 3 for key, value in get_peft_model_state_dict(transformer).items()}  # a stronger adapter shows more
    Flux2KleinPipeline.save_lora_weights(folder, transformer_lora_layers=layers, weight_name="klein.safetensors")
    return folder / "klein.safetensors"


# --- planning: refusals and defaults (no torch) --------------------------------------------------


def test_what_flux2_klein_ignores_is_refused_in_one_line_before_anything_loads(tmp_path):
    image = tmp_path / "init.png"
    Image.new("RGB", (32, 32)).save(image)
    (tmp_path / "klein.safetensors").write_bytes(b"x")
    keys = "the keys of its own: negative_prompt, max_sequence_length, dynamic_shift, sigmas"
    cases = {
        ("model=tiny-flux2-klein", "guidance=4"): "invalid guidance=4: model=tiny-flux2-klein is Flux.2 Klein step-distilled, which runs no guidance",
        ("model=tiny-flux2-klein", "negative_prompt=blurry"): "invalid negative_prompt='blurry': model=tiny-flux2-klein is Flux.2 Klein step-distilled, which runs no CFG",
        ("model=tiny-flux2-klein-base", "guidance=1", "negative_prompt=blurry"): "invalid negative_prompt='blurry': Flux.2 Klein runs CFG (with the negative prompt) only at guidance > 1",
        ("model=tiny-flux2-klein", "shift=3"): f"invalid shift=3: model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which ignores it; {keys}",
        ("model=tiny-flux2-klein-base", "true_cfg=4"): f"invalid true_cfg=4: model=tiny-flux2-klein-base is Flux.2 Klein (flux2-klein), which ignores it; {keys}",
        ("model=tiny-flux2-klein", "prompt_2=x"): "invalid prompt_2=x: model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which ignores it",
        ("model=tiny-flux2-klein", "original_size=[64,64]"): "invalid original_size=[64, 64]: model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which ignores it",
        ("model=tiny-flux2-klein", "refiner=tiny"): "invalid refiner=tiny: model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which ignores it",
        ("model=tiny-flux2-klein", "clip_skip=2"): "invalid clip_skip=2: model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which ignores it",
        ("model=tiny-flux2-klein", "mode=img2img", f"init_image={image}"): (
            "invalid mode='img2img': model=tiny-flux2-klein is Flux.2 Klein (flux2-klein), which diffusers has no img2img pipeline for; its modes: txt2img, inpaint"),
        ("model=tiny-flux2-klein", "width=40"): "invalid width=40: Flux.2 Klein takes multiples of 16",
        ("model=tiny-flux2-klein", f"model.id={tmp_path / 'klein.safetensors'}"): "Flux.2 Klein loads from a diffusers dir or hub id only",
        ("model=tiny-flux2-klein", "scheduler=euler"): "invalid scheduler='euler': Flux.2 Klein models take flow schedulers: auto, ",
    }
    args = [[*SMALL, *case, f"hydra.run.dir={tmp_path / 'out'}"] for case in cases]
    out = main_per_case(args, tmp_path)
    for (case, expected), (code, stderr) in zip(cases.items(), out["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (case, stderr)
    assert not out["torch"] and not out["outputs"] and not (tmp_path / "out").exists()


def klein(**config) -> object:
    (spec,) = plan([Job(0, plan_config(**{"model": {"name": "k", "id": "tiny-flux2-klein", "revision": None, "family": "flux2-klein"},
                                           "scheduler": {"name": "auto"}, "guidance": 1.0, "width": 32, "height": 32, **config}))])
    return spec


def test_distilled_or_base_is_what_the_model_index_says_else_the_hub_name(tmp_path):
    assert klein().max_sequence_length == 512  # filled: the manifest shows what runs
    assert (klein().scheduler_class, klein().dynamic_shift, klein().sigmas) == ("FlowMatchEulerDiscreteScheduler", None, None)
    for name, distilled in (("distilled", {"is_distilled": True}), ("base", {})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline", **distilled}))
        given = dict(model={"name": name, "id": str(folder), "revision": None, "family": None}, guidance=4.0)
        if distilled:
            with pytest.raises(PlanError, match="step-distilled"):
                klein(**given)
        else:
            assert klein(**given).family == "flux2-klein"
    # Not on this machine: BFL names its undistilled checkpoints FLUX.2-klein-base-*.
    hub = {"revision": None, "family": "flux2-klein"}
    assert klein(model={"name": "b", "id": "black-forest-labs/FLUX.2-klein-base-4B", **hub}, guidance=4.0, negative_prompt="x").guidance == 4.0
    with pytest.raises(PlanError, match="step-distilled"):
        klein(model={"name": "d", "id": "black-forest-labs/FLUX.2-klein-4B", **hub}, guidance=4.0)


def test_a_distilled_model_planned_as_a_base_one_fails_its_images_rather_than_ignore_their_guidance():
    # Planned by its name where its model_index.json was not on the machine, loaded where it is.
    from diffusers import Flux2KleinPipeline

    from sweeper.rendering import families
    from sweeper.rendering.tiny import tiny_model_dir

    pipe = Flux2KleinPipeline.from_pretrained(tiny_model_dir("tiny-flux2-klein"))
    spec = klein(model={"name": "b", "id": "tiny-flux2-klein-base", "revision": None, "family": "flux2-klein"}, guidance=4.0)
    with pytest.raises(RuntimeError, match="tiny-flux2-klein-base is step-distilled .* plan it with guidance=1$"):
        families.get("flux2-klein").encode(pipe, spec, "cpu")


# --- rendering: the sweeps -------------------------------------------------------------------------


def test_a_distilled_sweep_over_its_axes_lora_batches_and_replay(tmp_path, warm_cli, klein_lora, fresh_runtime, capsys):
    # One job per axis value, each against job 0 (zipped axes); every job renders both prompts in one call.
    out = tmp_path / "distilled"
    lora = str(klein_lora)
    df = sweep(
        warm_cli, out, "model=tiny-flux2-klein", f"prompt=[{','.join(PROMPTS)}]",
        "max_sequence_length=512,256,512,512,512,512,512", "sigmas=default,default,karras,default,default,default,default",
        "dynamic_shift=null,null,null,false,null,null,null", f"lora=null,null,null,null,{lora},{lora},{lora}", "lora_scale=1,1,1,1,0,0.5,1",
        "hydra.sweeper.zip=[[max_sequence_length,sigmas,dynamic_shift,lora,lora_scale]]",
    )
    assert (out / "report.html").is_file()
    assert len(df) == 14 and set(df.batch_size) == {2} and set(df.base_steps) == {4} and set(df.dtype) == {"float32"}
    px = pixels(out, df)
    for prompt in PROMPTS:
        first = px[(0, prompt)]
        assert differ(px[(1, prompt)], first) > 0, "max_sequence_length pads the prompt to its length, and the pads are attended"
        assert differ(px[(2, prompt)], first) > 0, "karras sigmas"
        assert differ(px[(3, prompt)], first) > 0, "dynamic_shift=false: the scheduler's own shift instead of the pipeline's mu"
        assert differ(px[(4, prompt)], first) == 0, "LoRA weight 0 renders as without"
        assert differ(px[(5, prompt)], first) > 0 and differ(px[(6, prompt)], px[(5, prompt)]) > 0, "LoRA, scaled by its weight"
    assert differ(px[(0, PROMPTS[0])], px[(0, PROMPTS[1])]) > 0
    # What ran, as the manifest and the PNG text say it.
    assert df.groupby("job_num").max_sequence_length.first().tolist() == [512, 256, 512, 512, 512, 512, 512]
    assert df[df.job_num == 2].sigmas.tolist() == ["karras"] * 2 and df[df.job_num == 3].dynamic_shift.tolist() == [False] * 2
    parameters, stored = png_text(out, df, 2, PROMPTS[0])
    assert parameters.startswith(f"{PROMPTS[0]}\nSteps: 4, Sampler: Euler, Schedule type: karras, CFG scale: 1, Seed: 0, Size: 32x32, Model: tiny-flux2-klein")
    assert (stored["spec"]["family"], stored["spec"]["max_sequence_length"], stored["spec"]["sigmas"]) == ("flux2-klein", 512, "karras")
    assert "Negative prompt" not in parameters and "shift" not in stored["spec"]
    parameters, stored = png_text(out, df, 6, PROMPTS[0])
    assert parameters.startswith(f"{PROMPTS[0]} <lora:klein:1>\n") and "dynamic_shift" not in stored["spec"]  # null: the model's own

    # One prompt alone (batch of 1, the transformer's Q/K/V fused) renders as in the batch of 2, within a couple
    # of levels; the tokenizer's cut at max_sequence_length (counted on the chat text) is said, and what it cut changes nothing.
    alone = tmp_path / "alone"
    df_alone = sweep(
        warm_cli, alone, "model=tiny-flux2-klein", f"prompt=[{PROMPTS[1]},{LONG},{LONG} at dusk]", "max_sequence_length=512,64",
        "batch_size=1", "fuse_qkv=true", "hydra.sweeper.zip=[[max_sequence_length]]",
    )
    assert set(df_alone.fuse_qkv) == {True}
    px_alone = pixels(alone, df_alone)
    assert differ(px_alone[(0, PROMPTS[1])], px[(0, PROMPTS[1])]) <= 2
    assert differ(px_alone[(1, LONG)], px_alone[(1, LONG + " at dusk")]) == 0
    assert differ(px_alone[(0, LONG)], px_alone[(1, LONG)]) > 0
    warnings = df_alone.set_index(["job_num", "prompt"]).warning
    assert warnings[(1, LONG)] == "prompt truncated to 64 tokens" and pd.isna(warnings[(0, LONG)])

    # Replay renders the same pixels (the LoRA's weights from where it is).
    png = out / df[(df.job_num == 5) & (df.prompt == PROMPTS[1])].path.iloc[0]
    assert replay.main([str(png), "--lora", str(klein_lora.parent)]) == 0
    assert ": identical" in capsys.readouterr().out


def test_a_base_sweep_runs_true_cfg_with_its_negative_prompt_and_inpaints(tmp_path, warm_cli, fresh_runtime, capsys):
    y, x = np.mgrid[0:32, 0:32]
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray(np.stack([x * 8, y * 8, (x + y) * 4], -1).astype("uint8")).save(init)
    Image.fromarray(np.where(x < 16, 255, 0).astype("uint8")).save(mask)  # white: repainted
    out = tmp_path / "base"
    jobs = [  # model, guidance, negative prompt, mode, strength
        ("tiny-flux2-klein-base", 1, "null", "txt2img", 0.8),
        ("tiny-flux2-klein", 1, "null", "txt2img", 0.8),
        ("tiny-flux2-klein-base", 4, "null", "txt2img", 0.8),
        ("tiny-flux2-klein-base", 4, "blurry", "txt2img", 0.8),
        ("tiny-flux2-klein-base", 4, "''", "txt2img", 0.8),
        ("tiny-flux2-klein-base", 4, "null", "inpaint", 1.0),
        ("tiny-flux2-klein-base", 4, "null", "inpaint", 0.5),
    ]
    column = list(zip(*jobs))
    images = ["null" if mode == "txt2img" else str(init) for mode in column[3]]
    masks = ["null" if mode == "txt2img" else str(mask) for mode in column[3]]
    df = sweep(
        warm_cli, out, f"prompt={PROMPTS[0]}", "batch_size=1",
        *(f"{key}={','.join(map(str, values))}" for key, values in zip(("model", "guidance", "negative_prompt", "mode", "strength"), column)),
        f"init_image={','.join(images)}", f"mask_image={','.join(masks)}",
        "hydra.sweeper.zip=[[model,guidance,negative_prompt,mode,strength,init_image,mask_image]]",
    )
    assert len(df) == 7
    px = {job: image for (job, _), image in pixels(out, df).items()}
    assert differ(px[0], px[1]) == 0, "base at guidance 1 runs no CFG: as the distilled model (same weights)"
    assert differ(px[2], px[0]) > 0, "true CFG at guidance > 1"
    assert differ(px[3], px[2]) > 0, "the negative prompt"
    assert differ(px[4], px[2]) == 0, "'' is the negative prompt CFG runs against by default"
    assert differ(px[5], px[2]) > 0 and differ(px[6], px[5]) > 0, "inpaint, by strength"
    steps = df.set_index("job_num").base_steps
    assert (steps[2], steps[5], steps[6]) == (4, 4, 2)  # inpaint runs int(steps * strength)
    parameters, stored = png_text(out, df, 3, PROMPTS[0])
    assert parameters.startswith(f"{PROMPTS[0]}\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 4, Seed: 0")
    assert stored["spec"]["negative_prompt"] == "blurry" and df.set_index("job_num").negative_prompt[3] == "blurry"
    parameters, _ = png_text(out, df, 6, PROMPTS[0])
    assert "Denoising strength: 0.5" in parameters

    png = out / df[df.job_num == 3].path.iloc[0]
    assert replay.main([str(png)]) == 0
    assert ": identical" in capsys.readouterr().out
