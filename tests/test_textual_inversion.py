"""Textual inversion (issue 32, part 5): `embeddings=[file,...]`, their tokens in prompts and negative prompts, on
the tiny SDXL (clip_l and clip_g) and SD 1.x models: the token changes the pixels where the embedding is loaded and
nowhere else, the hashes are in the id and in A1111's "TI hashes", replay is exact, a pickled file is read as
tensors only, and what cannot act is refused in one line.

The embeddings are random vectors of the tiny text encoders' widths, in the formats users have: SDXL's
safetensors (clip_l, clip_g), A1111's .pt (string_to_param) and .safetensors (emb_params)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, refused_in_one_line, render_in_process
from PIL import Image

from sweeper import replay
from sweeper.planning.plan import plan
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.textual_inversion import internal_token, with_tokens

SMALL = ("width=64", "height=64", "steps=2")


class Payload:
    """What a pickled embedding could hold besides tensors: an object whose unpickling runs code."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("embeddings")
    torch.manual_seed(5)
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)}, folder / "xltok.safetensors")
    vectors = torch.randn(2, 32)
    torch.save({"string_to_param": {"*": vectors}, "name": "sdtok", "step": 100}, folder / "sdtok.pt")
    save_file({"emb_params": vectors}, folder / "same.safetensors")  # the same vectors in A1111's safetensors format
    torch.save({"string_to_param": {"*": torch.randn(1, 48)}}, folder / "widept.pt")
    save_file({"emb_params": torch.randn(1, 48)}, folder / "wide.safetensors")
    torch.save({"emb_params": torch.randn(1, 32), "extra": Payload()}, folder / "code.pt")
    (folder / "old.ckpt").write_bytes(b"not read")
    with open(folder / "big.pt", "wb") as handle:
        handle.truncate(17 << 20)
    return {path.stem: path for path in folder.iterdir()}


def pixels(sweep: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(sweep / path).convert("RGB")).astype(int)


def test_sdxl_tokens_act_in_prompts_and_negative_prompts_only_with_their_embedding_and_replay(tmp_path, warm_cli, files, capsys):
    common = ("-m", "model=tiny", *SMALL, "seed=1", "prompt=[a xltok fox,a red fox]", "negative_prompt=[blurry,XLtok]")
    # The embedding's job renders first: the job without it comes after it was loaded, in the same process.
    result = warm_cli.run(*common, f"embeddings=[{files['xltok']}],null", "name=ti", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plain = warm_cli.run(*common, "name=plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    sweep, plain_sweep = (tmp_path / "outputs" / "sweeps" / name for name in ("ti", "plain"))
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 4 and set(df.status) == {"ok"} and df.image_id.is_unique
    loaded, without = df[df.embeddings.notna()], df[df.embeddings.isna()]
    image = {(row.embeddings is not None, row.prompt): pixels(sweep, row.path) for row in df.itertuples()}
    assert np.abs(image[True, "a xltok fox"] - image[False, "a xltok fox"]).max() > 8  # the prompt's token
    assert np.abs(image[True, "a red fox"] - image[False, "a red fox"]).max() > 8  # the negative prompt's (any case)

    # Without the key, the same images as before: same ids, same pixels (the loaded embedding reaches none of them).
    before = pd.read_parquet(plain_sweep / "manifest.parquet")
    assert sorted(before.image_id) == sorted(without.image_id)
    for row in before.itertuples():
        assert np.array_equal(pixels(plain_sweep, row.path), pixels(sweep, without[without.image_id == row.image_id].path.iloc[0]))

    row = loaded[loaded.prompt == "a xltok fox"].iloc[0]
    assert list(row.embeddings) == ["xltok.safetensors"] and list(row.embedding_tokens) == ["xltok"]
    short = hashlib.sha256(files["xltok"].read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "xltok: {short}", Version:' in Image.open(sweep / row.path).text["parameters"]
    assert "TI hashes" not in Image.open(sweep / without.path.iloc[0]).text["parameters"]

    assert replay.main([str(sweep / row.path), "--embeddings", str(files["xltok"].parent)]) == 0
    assert ": identical (" in capsys.readouterr().out


def test_sd1_pt_files_load_once_as_tensors_their_tokens_named_or_not_and_misfits_are_error_rows(tmp_path, files, fresh_runtime, capfd):
    sdtok, prompt = str(files["sdtok"]), "prompt=a fox in Sdtok style"
    model = ("model=tiny-sd", *SMALL)
    jobs = [
        composed_job(0, *model, prompt, "seed=[0,1]", "batch_size=1", f"embeddings=[{sdtok}]"),  # two calls, one load
        composed_job(1, *model, prompt, "seed=0"),
        composed_job(2, *model, "prompt=a fox in mytok style", "seed=0", f"embeddings=[mytok:{files['same']}]"),  # the same vectors, its token named
        composed_job(3, *model, prompt, "seed=0", "clip_skip=2", f"embeddings=[{sdtok}]"),
        composed_job(4, *model, prompt, "seed=0", "clip_skip=2"),
        composed_job(5, *model, prompt, "seed=0", f"embeddings=[{files['widept']}]"),
        composed_job(6, *model, prompt, "seed=0", f"embeddings=[{files['code']}]"),
    ]
    render_in_process(tmp_path, jobs)
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert len(df) == 8 and df.image_id.is_unique
    assert [kind for kind, *_ in fresh_runtime.loads] == ["tiny-sd", "embedding", "embedding"], fresh_runtime.loads
    ok = df[df.status == "ok"]
    assert sorted(set(ok.job_num)) == [0, 1, 2, 3, 4], df.error.tolist()
    image = {row.job_num: pixels(tmp_path, row.path) for row in ok[ok.seed == 0].itertuples()}
    assert np.abs(image[0] - image[1]).max() > 8 and np.array_equal(image[0], image[2])
    assert np.abs(image[3] - image[4]).max() > 8  # with clip skip too (SD 1.x encodes it itself)

    errors = dict(zip(df.job_num, df.error))
    assert "embeddings=widept.pt: its vectors are 48 wide; the model's text encoder takes 32" in errors[5]
    assert "embeddings=code.pt: not a file of tensors torch loads without running code" in errors[6]
    assert "\n" not in errors[5] + errors[6] and "unpickled code ran" not in capfd.readouterr().out


REFUSED = [
    (["model=tiny-flux", "embeddings=[{xltok}]"], "model=tiny-flux is Flux.1 (flux), which ignores it"),
    (["model=tiny-sd", "embeddings=[{xltok}]"], "an embedding for SDXL (clip_l and clip_g); the model takes one tensor: made for another model family"),
    (["model=tiny", "embeddings=[{wide}]"], "an embedding for one text encoder; the model takes clip_l and clip_g (SDXL)"),
    (["model=tiny-sd", "embeddings=[{wide}]"], "its vectors are 48 wide; the model's text encoder takes 32: made for another model"),
    (["model=tiny", "refiner=tiny", "embeddings=[{xltok}]"], "textual inversion works with refiner=none only"),
    (["model=tiny-sd", "embeddings=[{old}]"], "not a .safetensors / .pt / .bin file"),
    (["model=tiny-sd", "embeddings=[{sdtok},{sdtok}]"], "two embeddings have one token"),
    (["model=tiny-sd", "embeddings=[a b:{sdtok}]"], "its token must be 1 .. 100 characters without spaces"),
    (["model=tiny-sd", "embeddings=[{big}]"], "over 16 MB"),
]


def test_what_cannot_act_is_refused_in_one_line_before_anything_loads(tmp_path, files):
    refused_in_one_line([(["-m", "steps=2", "seed=0,1", *(arg.format(**files) for arg in args)], expected) for args, expected in REFUSED], tmp_path)


def test_tokens_are_matched_as_whole_words_in_any_case():
    (spec,) = plan([composed_job(0, "model=tiny", "prompt=x")])
    spec = ImageSpec.from_dict({**spec.to_dict(), "prompt": "Fox, fox-tail, foxes, xfox (FOX:1.2)", "negative_prompt": "fox",
                                "embeddings": ("/ti/fox.pt",), "embedding_tokens": ("fox",), "embeddings_sha": ("a" * 20,)})
    token = internal_token("a" * 20)
    assert with_tokens(spec).prompt == f"{token}, {token}-tail, foxes, xfox ({token}:1.2)" and with_tokens(spec).negative_prompt == token


def test_offload_is_refused_with_embeddings(files):
    from sweeper.errors import PlanError

    with pytest.raises(PlanError, match="invalid embeddings=.*: not with offload=model; use offload=none"):
        plan([composed_job(0, "model=tiny-sd", "device=cuda", "offload=model", f"embeddings=[{files['sdtok']}]")])
