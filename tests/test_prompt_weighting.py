"""prompt_syntax=a1111 renders A1111's weighting (issue 32 part 1), through the real CLI on the tiny
SDXL and SD 1.x models: weights change the pixels, weights of 1.0 render the plain prompt's pixels
exactly, `<lora:name:w>` is the adapter at that weight, replay repeats it; and what the text
encoders really received (a spy on their forward): no bracket tokens, 75-token chunks, BREAK,
negative prompts padded to the prompt's chunk count, and A1111's formula computed by hand.

The tiny models have random weights: pixel checks compare renders with one another."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import composed_job, render_in_process
from PIL import Image

from sweeper import replay
from sweeper.make_lora import make_lora

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = ("steps=2", "width=64", "height=64", "seed=3")


def readme_prompt() -> str:
    """The prompt of the README's quoting example (`(word:1.2)` in it)."""
    (prompt,) = re.findall(r"python -m sweeper model=tiny 'prompt=\"(a fox \(masterpiece:1\.2\)[^\"]*)\"'", README.read_text())
    return prompt


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def quoted(prompts: list[str]) -> str:
    return "prompt=[" + ",".join("'" + p + "'" for p in prompts) + "]"


def test_weights_render_on_sdxl_ones_are_plain_lora_tags_are_adapters_and_replay(tmp_path, warm_cli, capsys):
    loras = tmp_path / "loras"
    style = make_lora(loras / "style.safetensors")
    readme = readme_prompt()
    ones, plain, tagged = "a fox (masterpiece:1.0), in snow", "a fox masterpiece, in snow", "a fox <lora:style:0.8>"
    result = warm_cli.run("-m", "model=tiny", *SMALL, quoted([readme, ones, plain]), "prompt_syntax=a1111,plain", "name=w", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # One job names the adapter in its prompt, the other in lora and lora_scale.
    adapter = warm_cli.run("-m", "model=tiny", *SMALL, f"prompt='{tagged}','a fox'", f"lora=null,{style}", "lora_scale=1,0.8",
                           f"lora_dir={loras}", "hydra.sweeper.zip=[[prompt,lora,lora_scale]]", "name=lora", cwd=tmp_path)
    assert adapter.returncode == 0, adapter.stderr
    sweep, lora_sweep = tmp_path / "outputs" / "sweeps" / "w", tmp_path / "outputs" / "sweeps" / "lora"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert set(df.status) == {"ok"}
    rows = {(r.prompt, None if pd.isna(r.prompt_syntax) else r.prompt_syntax): r for r in df.itertuples()}
    image = {key: pixels(sweep / row.path) for key, row in rows.items()}
    # The README's prompt renders weighted: other pixels than its text; the prompt as typed in the PNG text and manifest.
    assert not np.array_equal(image[readme, "a1111"], image[readme, None])
    assert Image.open(sweep / rows[readme, "a1111"].path).text["parameters"].startswith(readme + "\n")
    # Weights of 1.0 are the plain prompt, pixel for pixel; the plain prompt itself keeps the id it had (field unset).
    assert np.array_equal(image[ones, "a1111"], image[plain, None])
    assert (plain, "a1111") not in rows
    # <lora:style:0.8> is lora=style lora_scale=0.8 on the prompt without the tag.
    by_prompt = {r.prompt: r for r in pd.read_parquet(lora_sweep / "manifest.parquet").itertuples()}
    assert np.array_equal(pixels(lora_sweep / by_prompt[tagged].path), pixels(lora_sweep / by_prompt["a fox"].path))
    assert by_prompt[tagged].lora == "style.safetensors" and by_prompt[tagged].lora_scale == 0.8
    assert Image.open(lora_sweep / by_prompt[tagged].path).text["parameters"].split("\n")[0] == tagged  # the tag once
    # Replay repeats the weighted image bit for bit.
    assert replay.main([str(sweep / rows[readme, "a1111"].path)]) == 0
    assert ": identical (" in capsys.readouterr().out


def test_weights_render_on_sd1_and_compel_on_both(tmp_path, warm_cli, capsys):
    weighted, ones, plain, compel = "a (red:1.4) fox, [snow]", "a (red:1.0) fox", "a red fox", "a red++ fox"
    sd1 = [(weighted, "a1111"), (weighted, "plain"), (ones, "a1111"), (plain, "plain"), (compel, "compel"), (compel, "plain"), (plain, "compel")]
    jobs = [("tiny-sd", *job) for job in sd1] + [("tiny", compel, "compel"), ("tiny", compel, "plain")]
    result = warm_cli.run("-m", *SMALL, "model=" + ",".join(m for m, _, _ in jobs), "prompt=" + ",".join(f"'{p}'" for _, p, _ in jobs),
                          "prompt_syntax=" + ",".join(s for _, _, s in jobs), "hydra.sweeper.zip=[[model,prompt,prompt_syntax]]", "name=sd1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "sd1"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert set(df.status) == {"ok"} and len(df) == 6 + 2  # compel's plain text is the plain image (field unset)
    image = {(r.model, r.prompt, None if pd.isna(r.prompt_syntax) else r.prompt_syntax): pixels(sweep / r.path) for r in df.itertuples()}
    assert not np.array_equal(image["tiny-sd", weighted, "a1111"], image["tiny-sd", weighted, None])
    assert np.array_equal(image["tiny-sd", ones, "a1111"], image["tiny-sd", plain, None])
    for model in ("tiny", "tiny-sd"):  # compel's word++ weighs "red" up, on SDXL and SD 1.x
        assert not np.array_equal(image[model, compel, "compel"], image[model, compel, None]), model
    path = df[(df.model == "tiny") & (df.prompt_syntax == "compel")].path.iloc[0]
    assert replay.main([str(sweep / path)]) == 0 and ": identical (" in capsys.readouterr().out


class Spy:
    """Every input_ids a CLIP text encoder's forward received (the projected one runs the plain one inside: counted once)."""

    def __init__(self, monkeypatch) -> None:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        self.calls: list[tuple[str, list[int]]] = []
        self.depth = 0
        for cls in (CLIPTextModel, CLIPTextModelWithProjection):
            original = cls.forward

            def forward(module, input_ids=None, *args, _original=original, _name=cls.__name__, **kwargs):
                if not self.depth:
                    self.calls.extend((_name, row) for row in input_ids.tolist())
                self.depth += 1
                try:
                    return _original(module, input_ids, *args, **kwargs)
                finally:
                    self.depth -= 1

            monkeypatch.setattr(cls, "forward", forward)


def test_the_text_encoders_see_weighted_chunks_without_the_brackets(tmp_path, monkeypatch, tiny_models):
    from sweeper.rendering.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()[0]
    vocab = tokenizer.get_vocab()
    brackets = {vocab[c] for c in "()[]:" if c in vocab} | {vocab[c + "</w>"] for c in "()[]:"}
    spy = Spy(monkeypatch)
    long = "a red fox in the snow, " * 5  # 95 tokens of the tiny tokenizer: two chunks
    render_in_process(tmp_path / "out", [composed_job(0, "model=tiny", *SMALL, quoted([readme_prompt(), long, "a fox BREAK in snow"]),
                                                      "negative_prompt=blurry")])
    assert set(pd.read_parquet(tmp_path / "out" / "manifest.parquet").status) == {"ok"}
    ids = [row for _, row in spy.calls]
    assert all(len(row) == 77 for row in ids)
    assert not any(brackets & set(row) for row in ids), "the encoder saw the brackets as text"
    text = lambda row: tokenizer.decode(row, skip_special_tokens=True).replace(" ", "")  # noqa: E731
    readme_ids = [row for row in ids if text(row).startswith("afoxmasterpiece")]
    assert readme_ids and text(readme_ids[0]) == readme_prompt().replace("(masterpiece:1.2)", "masterpiece").replace("[cat]", "cat").replace(" ", "")
    # The long prompt: two chunks per encoder; the negative padded to two chunks (its second one empty).
    starts = [n for n, row in enumerate(ids) if text(row).startswith("aredfoxinthesnow")]
    assert len(starts) == 4  # two encoders x two chunks of the prompt
    empty = [tokenizer.bos_token_id, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * 75
    assert sum(row == empty for row in ids) >= 2  # the negative's second chunk, on both encoders
    # BREAK: "a fox" and "in snow" in chunks of their own
    assert any(text(row) == "afox" for row in ids) and any(text(row) == "insnow" for row in ids)


def test_the_weighted_embedding_is_a1111s_formula_computed_by_hand(tiny_models):
    """SDXL: each encoder's penultimate states of the one chunk, times the weights, rescaled to the unweighted
    mean, joined on the feature axis; the pooled embedding is the unweighted one of text_encoder_2."""
    from diffusers import StableDiffusionXLPipeline

    from sweeper.planning.plan import plan
    from sweeper.rendering import families

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["tiny-sdxl"])
    (spec,) = plan([composed_job(0, "model=tiny", "prompt='a (fox:1.5) [red]'", "guidance=1")], auto_device="cpu")
    with torch.no_grad():
        got = families.get("sdxl").encode(pipe, spec, "cpu")
        t = pipe.tokenizer
        pieces = [("a ", 1.0), ("fox", 1.5), (" ", 1.0), ("red", 1 / 1.1)]
        ids, weights = [t.bos_token_id], [1.0]
        for piece, weight in pieces:
            piece_ids = t(piece, add_special_tokens=False).input_ids
            ids += piece_ids
            weights += [weight] * len(piece_ids)
        ids += [t.eos_token_id] + [t.pad_token_id] * (76 - len(ids))
        weights += [1.0] * (77 - len(weights))
        w = torch.tensor(weights)[None, :, None]
        expected = []
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            out = encoder(torch.tensor([ids]), output_hidden_states=True)
            z = out.hidden_states[-2]
            zw = z * w
            expected.append(zw * (z.mean() / zw.mean()))
        pooled = out[0]
        unweighted = pipe.encode_prompt("a fox red", device="cpu", do_classifier_free_guidance=False)[0]
    assert torch.allclose(got["prompt_embeds"], torch.cat(expected, dim=-1), atol=1e-6)
    assert torch.equal(got["pooled_prompt_embeds"], pooled)
    assert got["prompt_embeds"].shape == unweighted.shape and not torch.allclose(got["prompt_embeds"], unweighted, atol=1e-3)


@pytest.mark.parametrize("model, family", [("tiny", "sdxl"), ("tiny-sd", "sd15")])
def test_clip_skip_acts_with_the_weights(tiny_models, model, family):
    """Weights of 1.0 with clip_skip=2 are the plain prompt's clip-skipped embedding; other weights act on it."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sweeper.planning.plan import plan
    from sweeper.rendering import families

    specs = plan([composed_job(0, f"model={model}", "clip_skip=2", *SMALL, quoted(["a red fox", "(a red fox:1.0)", "(a red fox:1.3)"]),
                               "negative_prompt=blurry")], auto_device="cpu")
    assert [spec.prompt_syntax for spec in specs] == [None, "a1111", "a1111"]
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["tiny-sdxl"])
    else:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_models["tiny-sd"], safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        plain, ones, weighted = (families.get(family).encode(pipe, spec, "cpu") for spec in specs)
    assert all(torch.equal(plain[name], ones[name]) for name in plain)
    assert not torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])
    no_skip = plan([composed_job(0, f"model={model}", *SMALL, "prompt='(a red fox:1.0)'", "negative_prompt=blurry")], auto_device="cpu")[0]
    with torch.no_grad():
        assert not torch.equal(families.get(family).encode(pipe, no_skip, "cpu")["prompt_embeds"], ones["prompt_embeds"])


def test_a_batch_extends_shorter_sequences_by_their_last_vector_as_a1111():
    from sweeper.rendering.weighting import same_length

    short, long = torch.arange(6.0).reshape(1, 3, 2), torch.zeros(1, 5, 2)
    (a, b) = same_length([{"prompt_embeds": short, "pooled_prompt_embeds": torch.ones(1, 2)}, {"prompt_embeds": long, "pooled_prompt_embeds": torch.ones(1, 2)}])
    assert a["prompt_embeds"].tolist() == [[[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]] and b["prompt_embeds"] is long


def test_the_refiner_encodes_the_weighted_prompt_on_text_encoder_2(tiny_models):
    """The SDXL refiner has text_encoder_2 only: weights of 1.0 are its plain embedding, other weights act."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from sweeper.planning.plan import plan
    from sweeper.rendering import families

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_models["tiny-sdxl-refiner"])
    ones, weighted = plan([composed_job(0, "model=tiny", *SMALL, quoted(["(a red fox:1.0)", "(a red fox:1.3)"]), "negative_prompt=blurry")], auto_device="cpu")
    with torch.no_grad():
        got, other = (families.get("sdxl").encode(pipe, spec, "cpu") for spec in (ones, weighted))
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a red fox", device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry")
    assert torch.equal(got["prompt_embeds"], embeds) and torch.equal(got["negative_prompt_embeds"], negative)
    assert torch.equal(got["pooled_prompt_embeds"], pooled) and torch.equal(got["negative_pooled_prompt_embeds"], negative_pooled)
    assert not torch.equal(other["prompt_embeds"], embeds)
