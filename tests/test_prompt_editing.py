"""A1111's prompt editing `[a:b:when]` and alternation `[a|b]` (issue 32 part 1): the schedule as
A1111 computes it (its own doctests), which embeddings the UNet really receives at each step (a spy
on its forward), pixels and replay through the real CLI on the tiny SD 1.x and SDXL models, and
what cannot switch at the written step refused in one line before anything loads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import composed_job, refused_in_one_line, render_in_process
from PIL import Image

from sweeper import replay
from sweeper.planning.prompt_syntax import at_step, schedule, scheduled

# A1111's doctests of get_learned_conditioning_prompt_schedules (modules/prompt_parser.py), at 10 steps.
A1111_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", [(5, "a  c"), (10, "a {b|d{ c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
    # Not A1111's doctests: escapes are text, `[a:b]` is emphasis, a when past the steps never switches.
    ("\\[a|b\\] [a:b]", [(10, "\\[a|b\\] [a:b]")]),
    ("[a:b:20]", [(10, "a")]),
]


@pytest.mark.parametrize("text, expected", A1111_SCHEDULES)
def test_schedules_as_a1111(text, expected):
    assert schedule(text, 10) == expected


def test_the_wikis_example_at_100_steps():
    """A1111's wiki, "Prompt editing": what the model draws after each switch."""
    found = schedule("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
                     "[ in background:0.25] [shoddy:masterful:0.5]", 100)
    words = {end: " ".join(text.split()) for end, text in found}
    assert words == {
        25: "fantasy landscape with a mountain and an oak in foreground shoddy",
        50: "fantasy landscape with a lake and an oak in foreground in background shoddy",
        60: "fantasy landscape with a lake and an oak in foreground in background masterful",
        75: "fantasy landscape with a lake and an oak in background masterful",
        100: "fantasy landscape with a lake and a christmas tree in background masterful",
    }
    # Sampler step i draws the first entry ending at i or later: A1111's cat is drawn in steps 0..25.
    assert at_step(found, 25).startswith("fantasy landscape with a mountain") and " lake " in at_step(found, 26)


@pytest.mark.parametrize("text, named", [
    ("a [cat:dog:0.5] fox", "[cat:dog:0.5] (prompt editing)"),
    ("a (x:1.2) [cat|dog]", "[cat|dog] (alternation)"),
    ("((a [dog::5]))", "[dog::5] (prompt editing)"),
    ("a [cat] (b:1.2) [a:b] \\[a|b\\]", None),
    ("a [cat:dog:0.5", None),  # unclosed: text
    ("a dog :) [cat:dog:0.5]", "[cat:dog:0.5] (prompt editing)"),  # a stray bracket is text
])
def test_edits_are_named_as_written(text, named):
    assert scheduled(text) == named


def test_the_second_order_schedulers_are_the_ones_diffusers_runs_twice_per_step():
    """Their prompt-editing steps are twice the steps (A1111's total_steps); the loop's calls are 2 x steps - 1."""
    import diffusers

    from sweeper.planning import schedulers

    classes = {schedulers.config(name)["class_name"] for name in schedulers.names()} | schedulers.TWO_CALLS_PER_STEP
    assert schedulers.TWO_CALLS_PER_STEP == {name for name in classes if getattr(diffusers, name).order == 2}


SMALL = ("steps=4", "width=64", "height=64", "seed=3")


class UNetSpy:
    """The encoder_hidden_states (and SDXL's pooled text_embeds) of every UNet call."""

    def __init__(self, monkeypatch) -> None:
        from diffusers import UNet2DConditionModel

        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        original = UNet2DConditionModel.forward

        def forward(module, sample, timestep, encoder_hidden_states, *args, **kwargs):
            pooled = (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
            self.calls.append((encoder_hidden_states.clone(), None if pooled is None else pooled.clone()))
            return original(module, sample, timestep, encoder_hidden_states, *args, **kwargs)

        monkeypatch.setattr(UNet2DConditionModel, "forward", forward)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny"])
def test_the_unet_receives_each_steps_prompt_at_a1111s_steps(tmp_path, monkeypatch, tiny_models, model):
    """One batch of five (with guidance: negatives, then positives): the edited prompts' rows equal the rows
    of the plain prompts they switch between, at A1111's steps; the negative prompt switches too."""
    prompts = ["a [cat:dog:2] fox", "a cat fox", "a dog fox", "a [cat|dog] fox", "a [dog:cat:0.25] fox"]
    spy = UNetSpy(monkeypatch)
    render_in_process(tmp_path / "out", [composed_job(0, f"model={model}", *SMALL, "batch_size=5", "guidance=5",
                                                      "prompt=[" + ",".join(f"'{p}'" for p in prompts) + "]", "negative_prompt='[blurry|dark]'")])
    df = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert set(df.status) == {"ok"} and set(df.batch_size) == {5}
    calls = spy.calls[-4:]  # the sweep's call (a warm-up call of 2 steps came first)
    assert len(calls) == 4
    positive = {name: n for n, name in enumerate(["edit", "cat", "dog", "alternate", "early"])}

    def drawn(states: torch.Tensor, row: str) -> str:
        """Which plain prompt's row `row` holds at a step (the positive half of the batch)."""
        found = [name for name in ("cat", "dog") if torch.equal(states[5 + positive[row]], states[5 + positive[name]])]
        assert len(found) == 1, (row, found)
        return found[0]

    # [cat:dog:2]: steps 0..2 the cat; [cat|dog]: A1111's cat, cat, dog, cat; [dog:cat:0.25]: int(0.25 * 4) = 1, the dog in steps 0..1.
    assert [drawn(states, "edit") for states, _ in calls] == ["cat", "cat", "cat", "dog"]
    assert [drawn(states, "alternate") for states, _ in calls] == ["cat", "cat", "dog", "cat"]
    assert [drawn(states, "early") for states, _ in calls] == ["dog", "dog", "cat", "cat"]
    if model == "tiny":  # SDXL's pooled embeddings switch with the prompt
        pooled = [pooled for _, pooled in calls]
        assert torch.equal(pooled[3][5], pooled[3][7]) and torch.equal(pooled[0][5], pooled[0][6])
    # The negative [blurry|dark]: blurry, blurry, dark, blurry, for every image.
    negatives = [states[0] for states, _ in calls]
    assert torch.equal(negatives[0], negatives[1]) and torch.equal(negatives[0], negatives[3]) and not torch.equal(negatives[0], negatives[2])


def test_edited_prompts_render_replay_and_keep_their_text(tmp_path, warm_cli, capsys):
    """An edit at or past the last step is the first prompt's image, at step 0 the second's, bit for bit."""
    prompts = ["a cat fox", "a dog fox", "a [cat:dog:0.99] fox", "a [cat:dog:0] fox", "a [cat:dog:0.5] fox", "a [cat|dog] fox"]
    result = warm_cli.run("-m", "model=tiny-sd,tiny", *SMALL, "batch_size=1", "prompt=[" + ",".join(f"'{p}'" for p in prompts) + "]",
                          "name=edits", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "edits"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert set(df.status) == {"ok"} and len(df) == 12
    for model, rows in df.groupby("model"):
        image = {row.prompt: np.asarray(Image.open(sweep / row.path).convert("RGB")).astype(int) for row in rows.itertuples()}
        assert np.array_equal(image["a [cat:dog:0.99] fox"], image["a cat fox"]), model  # int(0.99 * 4) = 3: the cat in every step
        assert np.array_equal(image["a [cat:dog:0] fox"], image["a dog fox"]), model
        assert not np.array_equal(image["a cat fox"], image["a dog fox"]), model
        edited = rows[rows.prompt.str.contains("[", regex=False)]
        assert set(edited.prompt_syntax) == {"a1111"}
        for row in edited.itertuples():
            assert Image.open(sweep / row.path).text["parameters"].startswith(row.prompt + "\n")
    path = df[(df.model == "tiny") & (df.prompt == "a [cat:dog:0.5] fox")].path.iloc[0]
    assert replay.main([str(sweep / path)]) == 0 and ": identical (" in capsys.readouterr().out


@pytest.mark.parametrize("mode, settings, expected", [
    # Heun calls the model twice a step (2 x 4 - 1 = 7 calls): A1111's fractions are of 8, int(0.5 * 8) = 4.
    ("heun", ("scheduler=heun", "steps=4"), ["cat"] * 5 + ["dog"] * 2),
    # img2img at strength 0.5 runs 4 of 8 steps; A1111 counts them from the loop's first: the dog from its 4th.
    ("img2img", ("mode=img2img", "strength=0.5", "steps=8", "init_image=photo.png"), ["cat"] * 3 + ["dog"]),
])
def test_steps_count_as_a1111_counts_them_with_a_second_order_scheduler_and_in_img2img(tmp_path, monkeypatch, tiny_models, mode, settings, expected):
    edit = "a [cat:dog:0.5] fox" if mode == "heun" else "a [cat:dog:2] fox"
    Image.fromarray((np.indices((64, 64)).sum(axis=0) * 4 % 256).astype("uint8")).convert("RGB").save(tmp_path / "photo.png")
    spy = UNetSpy(monkeypatch)
    monkeypatch.chdir(tmp_path)
    render_in_process(tmp_path / "out", [composed_job(0, "model=tiny-sd", *settings, "width=64", "height=64", "seed=3", "batch_size=3", "guidance=5",
                                                      "prompt=['" + edit + "','a cat fox','a dog fox']")])
    assert set(pd.read_parquet(tmp_path / "out" / "manifest.parquet").status) == {"ok"}
    calls = [states for states, _ in spy.calls[-len(expected):]]
    drawn = [[name for n, name in ((1, "cat"), (2, "dog")) if torch.equal(states[3], states[3 + n])] for states in calls]
    assert drawn == [[name] for name in expected]


REFUSED = [
    (["model=tiny", "refiner=tiny", "prompt='a [cat|dog] fox'"], "[cat|dog] (alternation) switches the prompt during the denoising steps: not with a refiner"),
    (["model=tiny", "hires.scale=2", "negative_prompt='[a:b:3]'"], "invalid negative_prompt='[a:b:3]': [a:b:3] (prompt editing) switches the prompt during the denoising steps: not with the hires fix"),
    (["model=tiny-flux", "prompt='a [cat|dog] fox'"], "[cat|dog] (alternation) is A1111 prompt syntax, which Flux.1 models do not weight"),
]


def test_what_cannot_switch_at_the_written_step_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)
