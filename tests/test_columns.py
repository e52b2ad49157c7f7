"""Manifest columns a user can group and join on, and axes that are what the user swept
(issue 31, part 3): through the real CLI, read back in pandas, polars and duckdb."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import only_dir
from PIL import Image
from test_lora import loras  # noqa: F401  (the module's LoRA files, as a fixture)

from sweeper.storing import manifest
from sweeper import report

SMALL = ("model=tiny", "width=32", "height=32", "steps=2", "guidance=5")
PROMPTS = "prompt=a fox,a cat"  # under -m: two prompts
KEYS = ["seed", "prompt", "negative_prompt", "prompt_2", "negative_prompt_2"]


def sweep(warm_cli, cwd: Path, *overrides: str) -> Path:
    cwd.mkdir()
    result = warm_cli.run("-m", *SMALL, *overrides, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_dir(cwd / "outputs" / "sweeps")


def test_a_lora_sweep_has_scalar_columns_its_two_axes_and_joins_a_plain_sweep(tmp_path, warm_cli, loras):  # noqa: F811
    plain = sweep(warm_cli, tmp_path / "plain", PROMPTS, "seed=0,1")
    started = warm_cli.run("-m", *SMALL, PROMPTS, f"lora={loras['a']},{loras['b']}", "lora_scale=0.4,0.8", cwd=tmp_path / "plain")
    assert started.returncode == 0, started.stderr[-3000:]
    # The start line names the swept keys, in the page's order, and nothing derived from them.
    assert "prompt (2) x lora (2) x lora_scale (2) = 8 images" in started.stdout + started.stderr
    adapted = next(d for d in (tmp_path / "plain" / "outputs" / "sweeps").iterdir() if d != plain)

    frame = pd.read_parquet(adapted / manifest.MANIFEST)
    assert set(frame.lora) == {"xl_a.safetensors", "xl_b.safetensors"} and set(frame.lora_scale) == {0.4, 0.8}
    assert frame.groupby(["lora", "lora_scale"]).size().tolist() == [2, 2, 2, 2]  # scalars: groupby works
    assert frame.compile.dtype == bool and not frame.compile.any() and frame.compile_mode.isna().all()
    assert set(frame.negative_prompt) == {""} and (frame.prompt_2 == frame.prompt).all()  # what ran, not null
    for row in frame.itertuples():  # the hash A1111 writes into the PNG text
        text = Image.open(adapted / row.path).text["parameters"]
        name = row.lora.removesuffix(".safetensors")
        assert re.search(rf'Lora hashes: "{name}: ([0-9a-f]{{12}})"', text).group(1) == row.lora_sha

    # The page's axes: the keys swept, in the start line's order, labelled without brackets.
    loaded = report.load_sweep(adapted)
    assert loaded.swept == ["prompt", "lora", "lora_scale"]
    assert loaded.labels("lora_scale") == ["0.4", "0.8"] and loaded.labels("lora") == ["xl_a.safetensors", "xl_b.safetensors"]

    # Two different sweeps pair their images on the parameter columns, in every reader.
    a, b = plain / manifest.MANIFEST, adapted / manifest.MANIFEST
    by_pandas = pd.read_parquet(a).merge(pd.read_parquet(b), on=KEYS)
    by_polars = pl.read_parquet(a).join(pl.read_parquet(b), on=KEYS)
    by_duckdb = duckdb.sql(f"select a.path, b.path from '{a}' a join '{b}' b using ({', '.join(KEYS)})").fetchall()  # as the README has it
    assert len(by_pandas) == by_polars.height == len(by_duckdb) == 8  # each image of b (seed 0) pairs with a's of its prompt
    assert set(by_polars["image_id"]) == set(pd.read_parquet(a).query("seed == 0").image_id)


def test_manifests_written_with_list_columns_read_as_scalars(tmp_path):
    row = dict.fromkeys(manifest.SCHEMA.names)
    row.update(image_id="0" * 20, path=f"images/{'0' * 20}.png", status="ok", job_num=0)
    old_schema = pa.schema([
        pa.field(name, {"lora": pa.list_(pa.string()), "lora_sha": pa.list_(pa.string()), "lora_scale": pa.list_(pa.float64()),
                        "compile": pa.string()}.get(name, manifest.SCHEMA.field(name).type))
        for name in manifest.SCHEMA.names if name != "compile_mode"
    ])
    rows = [
        {**row, "lora": ["a.safetensors"], "lora_sha": ["abc"], "lora_scale": [0.5], "compile": "false"},
        {**row, "image_id": "1" * 20, "path": f"images/{'1' * 20}.png", "lora": ["a", "b"], "lora_sha": ["x", "y"],
         "lora_scale": [0.5, 1.0], "compile": "max-autotune"},
    ]
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "compile_mode"} for r in rows], schema=old_schema),
                   tmp_path / manifest.MANIFEST)
    table = manifest.read(tmp_path)
    assert table.schema == manifest.SCHEMA  # read, not skipped as damaged
    assert table.column("lora").to_pylist() == ["a.safetensors", "a, b"]
    assert table.column("lora_scale").to_pylist() == [0.5, None]
    assert table.column("compile").to_pylist() == [False, True]
