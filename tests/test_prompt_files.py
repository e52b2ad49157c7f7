"""CSV prompt files and prompt templates: through the CLI (slow; in the warm interpreter, conftest.warm_cli), and through plan()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import only_dir, plan_config
from PIL import Image

from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

CSV = (
    "prompt,negative_prompt,seed,guidance,steps\n"
    "a red fox,blurry,3,7.5,2\n"
    '"a cat, sitting",,,,\n'  # every cell empty: the job's values
    "a {red|blue} car,ugly,5,,3\n"
)


@pytest.mark.slow
def test_a_csv_prompt_file_sets_values_per_row_and_expands_templates(tmp_path, warm_cli):
    (tmp_path / "prompts.csv").write_text(CSV, encoding="utf-8")
    result = warm_cli.run("-m", "model=tiny", "prompt_file=prompts.csv", "guidance=4,6", "seed=[0,1]", "steps=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # fox: its own seed, guidance and steps, the same image in both jobs (planned once);
    # cat: 2 seeds x 2 guidance; each car: its own seed and steps, the job's guidance.
    assert "9 images from 2 jobs" in result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = manifest_of(sweep)
    assert len(df) == 9 and set(df.status) == {"ok"} and df.image_id.is_unique
    assert set(df.prompt_file) == {"prompts.csv"}
    got = sorted(
        (row.prompt, row.negative_prompt, row.seed, row.guidance, row.steps, row.prompt_template)
        for row in df.fillna({"prompt_template": "-"}).itertuples()
    )
    assert got == sorted(  # a row without a negative prompt ran with "", as the manifest says
        [("a red fox", "blurry", 3, 7.5, 2, "-")]
        + [("a cat, sitting", "", seed, guidance, 4, "-") for seed in (0, 1) for guidance in (4.0, 6.0)]
        + [(f"a {color} car", "ugly", 5, guidance, 3, "a {red|blue} car") for color in ("red", "blue") for guidance in (4.0, 6.0)]
    )
    fox = df[df.prompt == "a red fox"].iloc[0]
    params = Image.open(sweep / fox["path"]).text["parameters"].splitlines()
    assert params[:2] == ["a red fox", "Negative prompt: blurry"]
    assert "Steps: 2" in params[2] and "CFG scale: 7.5" in params[2] and "Seed: 3" in params[2]
    cars = df[df.prompt_template.notna()]
    assert len({pixels(sweep, row).tobytes() for _, row in cars.iterrows()}) == 4  # red, blue x 2 guidance
    assert len(list((sweep / "images").glob("*.png"))) == 9


def manifest_of(out_dir) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "manifest.parquet")


def pixels(out_dir, row) -> np.ndarray:
    return np.asarray(Image.open(out_dir / row["path"]).convert("RGB"))


# --- through plan() ------------------------------------------------------------------------------


def rows(specs) -> list[tuple]:
    return [(s.prompt, s.negative_prompt, s.prompt_2, s.prompt_template) for s in specs]


def test_per_prompt_lists_zip_with_the_prompts_as_written_before_templates_expand():
    config = plan_config(prompt=["a {red|blue} car", "a dog"], negative_prompt=["shiny", "furry"], prompt_2=["p2 car", "p2 dog"])
    assert rows(plan([Job(0, config)])) == [
        ("a red car", "shiny", "p2 car", "a {red|blue} car"),
        ("a blue car", "shiny", "p2 car", "a {red|blue} car"),
        ("a dog", "furry", "p2 dog", None),
    ]
    # One per expanded prompt is not what a list zips with.
    with pytest.raises(PlanError, match=r"^invalid negative_prompt=.*a list of 2 strings"):
        plan([Job(0, plan_config(prompt=["a {red|blue} car", "a dog"], negative_prompt=["a", "b", "c"]))])


def test_csv_rows_equal_the_same_values_given_as_config(tmp_path):
    (tmp_path / "prompts.csv").write_text(CSV, encoding="utf-8")
    specs = plan([Job(0, plan_config(prompt_file=str(tmp_path / "prompts.csv"), seed=[0, 1]))])
    assert len(specs) == 5 and {s.prompt_file for s in specs} == {str(tmp_path / "prompts.csv")}
    fox = plan([Job(0, plan_config(prompt="a red fox", negative_prompt="blurry", seed=3, guidance=7.5, steps=2))])
    cat = plan([Job(0, plan_config(prompt="a cat, sitting", seed=[0, 1]))])
    cars = plan([Job(0, plan_config(prompt="a {red|blue} car", negative_prompt="ugly", seed=5, steps=3))])
    assert [s.image_id for s in specs] == [s.image_id for s in (*fox, *cat, *cars)]  # the file is only a label
    assert [s.prompt_template for s in specs] == [None, None, None, "a {red|blue} car", "a {red|blue} car"]


def test_a_negative_prompt_list_zips_with_the_csv_rows_and_a_cell_wins(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,negative_prompt\na {x|y},\nb,own\n", encoding="utf-8")
    config = plan_config(prompt_file=str(tmp_path / "p.csv"), negative_prompt=["first", "second"])
    assert rows(plan([Job(0, config)])) == [("a x", "first", None, "a {x|y}"), ("a y", "first", None, "a {x|y}"), ("b", "own", None, None)]


def test_csv_rows_may_set_init_images_and_strength(tmp_path):
    for name, shade in (("a", 10), ("b", 200)):
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(tmp_path / f"{name}.png")
    (tmp_path / "p.csv").write_text(f"prompt,init_image,strength\none,{tmp_path / 'a.png'},0.5\ntwo,{tmp_path / 'b.png'},\n", encoding="utf-8")
    config = plan_config(prompt_file=str(tmp_path / "p.csv"), mode="img2img", init_image=str(tmp_path / "b.png"), strength=0.75)
    specs = plan([Job(0, config)])
    assert [(s.prompt, s.init_image, s.strength) for s in specs] == [("one", str(tmp_path / "a.png"), 0.5), ("two", str(tmp_path / "b.png"), 0.75)]
    assert specs[0].init_image_sha != specs[1].init_image_sha
    (tmp_path / "p.csv").write_text("prompt,strength,steps\none,0.3,2\n", encoding="utf-8")  # int(2 * 0.3) = 0 steps
    with pytest.raises(PlanError, match=r"^invalid strength=0.3: with steps=2"):
        plan([Job(0, config)])
