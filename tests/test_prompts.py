"""prompts.py: prompt keys of a job config -> prompt rows (templates, wildcards, CSV files). No torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from sweeper.planning import prompt_files, templates
from sweeper.errors import PlanError
from sweeper.planning.prompts import PromptRow, prompt_rows


def texts(c, limit=100_000):
    return [row.prompt for row in prompt_rows(c, limit)[0]]


def refusal(c, limit=100_000) -> str:
    with pytest.raises(PlanError) as info:
        prompt_rows(c, limit)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(path, text: str, encoding="utf-8"):
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding=encoding)
    return path


# -- plain prompts: as plan.py always read them --------------------------------


def test_plain_prompt_is_itself():
    rows, label = prompt_rows({"prompt": "a photograph of an astronaut riding a horse"})
    assert rows == [PromptRow("a photograph of an astronaut riding a horse", None, {}, 0)]
    assert label is None
    assert rows[0].params == {} and rows[0].template is None


def test_list_of_prompts_keeps_order_and_duplicates():
    rows, _ = prompt_rows({"prompt": ["b cat", "a dog", "b cat", ""]})
    assert [r.prompt for r in rows] == ["b cat", "a dog", "b cat", ""]
    assert [r.source for r in rows] == [0, 1, 2, 3]
    assert all(r.template is None and r.params == {} for r in rows)


def test_plain_prompts_with_underscores_and_braces_elsewhere_stay_plain():
    # A lone `__` or a `}` is no template syntax: the prompt is taken as it is.
    for prompt in ("snake__case art", "a } b", "photo, #1 best, // ok", "50% off"):
        assert prompt_rows({"prompt": prompt})[0] == [PromptRow(prompt, None, {}, 0)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "invalid prompt=null: must be a string or a list of strings"),
        (3, "invalid prompt=3: must be a string or a list of strings"),
        (["a", 1], 'invalid prompt=["a", 1]: must be a string or a list of strings'),
        ([], "invalid prompt=[]: needs at least one prompt"),
    ],
)
def test_bad_prompt_values_keep_plan_wording(value, message):
    assert refusal({"prompt": value}) == message


def test_plain_prompts_take_the_fast_path_without_an_expander(monkeypatch):
    # Their speed is the benchmark's to measure (scripts/bench.py plans 100k images);
    # here: plain prompts never reach template expansion at all.
    def no_expander(*args):
        raise AssertionError("a plain prompt built a template expander")

    monkeypatch.setattr(templates, "Expander", no_expander)
    c = {"prompt": [f"prompt number {i}, a {i % 7} legged table" for i in range(1000)]}
    rows, _ = prompt_rows(c)
    assert [(r.prompt, r.template, r.params, r.source) for r in rows] == [(p, None, {}, i) for i, p in enumerate(c["prompt"])]


def test_plain_planning_never_imports_dynamicprompts_or_torch():
    code = (
        "import sys, sweeper.planning.prompts as p\n"
        "rows, _ = p.prompt_rows({'prompt': ['a car', 'snake__case', 'x } y'] * 100})\n"
        "assert len(rows) == 300\n"
        "assert 'dynamicprompts' not in sys.modules, 'dynamicprompts imported'\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "p.prompt_rows({'prompt': 'a {b|c}'})\n"
        "assert 'dynamicprompts' in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- templates ----------------------------------------------------------------


def test_variants_expand_in_order_and_keep_the_template():
    rows, _ = prompt_rows({"prompt": "a {red|blue} car"})
    assert rows == [
        PromptRow("a red car", "a {red|blue} car", {}, 0),
        PromptRow("a blue car", "a {red|blue} car", {}, 0),
    ]


def test_leftmost_choice_varies_slowest():
    assert texts({"prompt": "{a|b} {x|y}"}) == ["a x", "a y", "b x", "b y"]


def test_nested_and_multiple_templates_give_the_cross_product():
    rows, _ = prompt_rows({"prompt": ["plain", "{a|{b|c}} {1|2|3} {x|y}", "{p|q}"]})
    assert len(rows) == 1 + 3 * 3 * 2 + 2
    assert rows[1].prompt == "a 1 x" and rows[18].prompt == "c 3 y"
    assert len({r.prompt for r in rows[1:19]}) == 18
    assert [r.source for r in rows] == [0] + [1] * 18 + [2, 2]
    assert {r.template for r in rows[1:19]} == {"{a|{b|c}} {1|2|3} {x|y}"}


def test_library_forms_combinations_and_variables():
    # {N$$...}: every ordered pick of N different options, as dynamicprompts' combinatorial generator gives.
    assert texts({"prompt": "{2$$a|b|c}"}) == ["a,b", "a,c", "b,a", "b,c", "c,a", "c,b"]
    assert texts({"prompt": "{2$$ and $$a|b}"}) == ["a and b", "b and a"]
    assert len(texts({"prompt": "{1-2$$a|b|c}"})) == 3 + 6
    # A variable is a template of its own; `!` fixes its first value. Edges are stripped.
    assert texts({"prompt": "${c={red|blue}} a ${c} car"}) == ["a red car", "a blue car"]
    assert texts({"prompt": "${c=!{red|blue}} a ${c} car"}) == ["a red car"]
    # In a template `#` starts a comment, as in dynamicprompts.
    assert texts({"prompt": "a {red|blue} car #1 best"}) == ["a red car", "a blue car"]
    # Duplicates within a template are dropped; one that changes nothing keeps its template.
    assert texts({"prompt": "{a|a|b}"}) == ["a", "b"]
    assert prompt_rows({"prompt": "{a}"})[0] == [PromptRow("a", "{a}", {}, 0)]


def test_random_forms_pick_once_and_the_same_every_time():
    rows = prompt_rows({"prompt": "a {~red|blue|green|black|white} car, {x|y}"})[0]
    assert len(rows) == 2
    again = prompt_rows({"prompt": ["a {~red|blue|green|black|white} car, {x|y}"]})[0]
    assert [r.prompt for r in rows] == [r.prompt for r in again]
    assert len(texts({"prompt": "{~a|b}"})) == 1  # alone, the library's generator would never stop


def test_expansion_is_the_same_in_every_process(tmp_path):
    """Ranks plan independently: the rows must not depend on hash seeds or file-system order."""
    wildcards = tmp_path / "wc"
    (wildcards / "sub").mkdir(parents=True)
    for name in ("zebra", "apple", "mango"):
        write(wildcards / "sub" / f"{name}.txt", f"{name} 1\n{name} 2\n")
    code = (
        "import sys, json, sweeper.planning.prompts as p\n"
        f"rows, _ = p.prompt_rows({{'prompt': ['__sub/*__ {{~a|b|c|d|e|f}} {{x|y}}', '__~sub/*__ z'], 'wildcards': {str(wildcards)!r}}})\n"
        "print(json.dumps([r.prompt for r in rows]))\n"
    )
    processes = [  # started together: independent processes, one core each
        subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("0", "1", "12345")
    ]
    outputs = set()
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outputs.add(stdout)
    assert len(outputs) == 1
    first = outputs.pop()
    assert first.startswith('["apple 1 ') and "zebra 2" in first


def test_syntax_error_is_one_line_naming_the_template():
    message = refusal({"prompt": ["ok", "a {red|blue car"]})
    assert message.startswith("invalid prompt='a {red|blue car': syntax error in the template")


def test_undefined_variable_is_refused():
    assert refusal({"prompt": "a ${nope} car"}) == "invalid prompt='a ${nope} car': cannot expand the template: Variable nope is not defined in this context"


def test_limit_counts_the_expansions():
    template = "{a|b|c} {1|2|3}"
    assert len(texts({"prompt": template}, limit=9)) == 9
    assert refusal({"prompt": template}, limit=8) == (
        f"invalid prompt='{template}': the template expands to more than 8 prompts, "
        "over the max_images budget; raise max_images or narrow the template"
    )
    # The rows before a template count against the same limit.
    message = refusal({"prompt": ["p", "q", template]}, limit=10)
    assert "more than 8 prompts" in message and "with the 2 prompts before it" in message and "of 10" in message


def test_a_huge_template_is_refused_quickly():
    template = " ".join("{a|b|c|d|e|f|g|h|i|j}" for _ in range(12))  # 10**12 prompts
    start = time.perf_counter()
    assert "more than 1000 prompts" in refusal({"prompt": template}, limit=1000)
    assert time.perf_counter() - start < 5


# -- wildcards ------------------------------------------------------------------


def test_wildcard_file_gives_one_row_per_line_in_file_order(tmp_path):
    write(tmp_path / "colors.txt", "red\n# a comment\n\n  blue  \nred\ngreen {light|dark}\n")
    rows, _ = prompt_rows({"prompt": "a __colors__ car", "wildcards": str(tmp_path)})
    assert [r.prompt for r in rows] == ["a red car", "a blue car", "a green light car", "a green dark car"]
    assert {r.template for r in rows} == {"a __colors__ car"}


def test_wildcard_globs_and_subfolders_in_name_order(tmp_path):
    (tmp_path / "animals").mkdir()
    write(tmp_path / "animals" / "dog.txt", "dog\n")
    write(tmp_path / "animals" / "cat.txt", "cat\nlion\n")
    assert texts({"prompt": "a __animals/*__", "wildcards": tmp_path}) == ["a cat", "a lion", "a dog"]
    assert texts({"prompt": "a __animals/dog__, {x|y}", "wildcards": str(tmp_path)}) == ["a dog, x", "a dog, y"]


def test_an_edited_wildcard_file_is_read_again(tmp_path):
    colors = write(tmp_path / "colors.txt", "red\nblue\n")
    c = {"prompt": "__colors__", "wildcards": str(tmp_path)}
    assert texts(c) == ["red", "blue"]
    write(colors, "red\nblue\ngreen\n")
    assert texts(c) == ["red", "blue", "green"]


def test_missing_wildcard_names_the_wildcard_and_the_dir(tmp_path):
    write(tmp_path / "colors.txt", "red\n")
    message = refusal({"prompt": "a __colours__ car", "wildcards": str(tmp_path)})
    assert message == f"invalid prompt='a __colours__ car': wildcard __colours__ not found in the wildcards dir {str(tmp_path)!r} (no colours.txt, or it is empty)"
    write(tmp_path / "empty.txt", "\n# nothing\n")
    assert "wildcard __empty__ not found" in refusal({"prompt": "{2$$__empty__}", "wildcards": str(tmp_path)})


def test_wildcard_without_a_wildcards_dir():
    message = refusal({"prompt": "a __colors__ car", "wildcards": None})
    assert message == "invalid prompt='a __colors__ car': wildcard __colors__ needs a wildcards dir, but wildcards is null; set wildcards=DIR, a folder holding colors.txt"
    assert "wildcards is null" in refusal({"prompt": "a __colors__ car"})


def test_wildcards_dir_must_exist(tmp_path):
    message = refusal({"prompt": "a __colors__ car", "wildcards": str(tmp_path / "nope")})
    assert message.startswith(f"invalid wildcards={str(tmp_path / 'nope')!r}: no such directory")
    # Checked even when no prompt uses it: an invalid value is refused before anything runs.
    assert "no such directory" in refusal({"prompt": "a car", "wildcards": str(tmp_path / "nope")})
    assert refusal({"prompt": "a car", "wildcards": 3}).startswith("invalid wildcards=3: must be null or the path of a folder")
    assert prompt_rows({"prompt": "a car", "wildcards": str(tmp_path)})[0] == [PromptRow("a car")]


def test_a_wildcard_that_includes_itself_is_refused_quickly(tmp_path):
    write(tmp_path / "loop.txt", "x\n__loop__\n")
    write(tmp_path / "a.txt", "a1\nthe __b__\n")
    write(tmp_path / "b.txt", "b1\n{x|__a__}\n")
    start = time.perf_counter()
    assert refusal({"prompt": "__loop__", "wildcards": str(tmp_path)}) == (
        "invalid prompt='__loop__': a wildcard includes itself (__loop__ -> __loop__), so the template never ends"
    )
    assert "(__a__ -> __b__ -> __a__)" in refusal({"prompt": "{x|y} __a__", "wildcards": str(tmp_path)})
    assert "a wildcard includes itself" in refusal({"prompt": "__*__", "wildcards": str(tmp_path)})
    assert time.perf_counter() - start < 2
    # A chain without a loop is fine.
    write(tmp_path / "b.txt", "b1\n{x|y}\n")
    assert texts({"prompt": "__a__", "wildcards": str(tmp_path)}) == ["a1", "the b1", "the x", "the y"]


# -- text prompt files --------------------------------------------------------


def test_text_file_one_prompt_per_line(tmp_path):
    path = write(tmp_path / "prompts.txt", "  a cat  \n\n# a comment, not a prompt\na {red|blue} car\n")
    rows, label = prompt_rows({"prompt_file": str(path), "prompt": "ignored"})
    assert label == str(path)
    assert [(r.prompt, r.template, r.source) for r in rows] == [
        ("a cat", None, 0),
        ("a red car", "a {red|blue} car", 1),
        ("a blue car", "a {red|blue} car", 1),
    ]


def test_text_file_errors_keep_plan_wording(tmp_path):
    missing = str(tmp_path / "nope.txt")
    assert refusal({"prompt_file": missing}) == f"invalid prompt_file={missing!r}: no such file"
    empty = write(tmp_path / "empty.txt", "\n  \n")
    assert refusal({"prompt_file": str(empty)}) == f"invalid prompt_file={str(empty)!r}: the file holds no prompt (one per line)"
    assert refusal({"prompt_file": str(tmp_path)}) == f"invalid prompt_file={str(tmp_path)!r}: no such file"


def test_template_error_in_a_file_names_file_line_and_template(tmp_path):
    path = write(tmp_path / "prompts.txt", "ok\n\na {red car\n")
    assert refusal({"prompt_file": str(path)}).startswith(
        f"invalid prompt_file={str(path)!r}: line 3, prompt 'a {{red car': syntax error in the template"
    )


def test_binary_prompt_file_is_refused(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xff\xfe\x00a")
    assert "not UTF-8 text" in refusal({"prompt_file": str(path)})


# -- CSV prompt files ---------------------------------------------------------


def test_csv_rows_carry_typed_params_and_empty_cells_are_unset(tmp_path):
    path = write(tmp_path / "p.csv", """
        prompt,seed,guidance,negative_prompt,steps,width,height,strength,init_image
        a cat,3,7.5,blurry,,,,,
        "a dog, running",,,yes,20,512,768,0.6,img/dog.png

        plain,-1, 5 ,,,,,,
    """)
    rows, label = prompt_rows({"prompt_file": str(path)})
    assert label == str(path)
    assert rows == [
        PromptRow("a cat", None, {"seed": 3, "guidance": 7.5, "negative_prompt": "blurry"}, 0),
        PromptRow("a dog, running", None, {"negative_prompt": "yes", "steps": 20, "width": 512, "height": 768, "strength": 0.6, "init_image": "img/dog.png"}, 1),
        PromptRow("plain", None, {"seed": -1, "guidance": 5.0}, 2),
    ]
    assert isinstance(rows[0].params["seed"], int) and isinstance(rows[2].params["guidance"], float)
    assert rows[1].params["negative_prompt"] == "yes"  # text stays text: no YAML coercion
    assert hash(rows[0]) == hash(PromptRow("a cat", None, {"seed": 3, "guidance": 7.5, "negative_prompt": "blurry"}, 0))


def test_csv_text_cells_stay_exactly_as_written(tmp_path):
    path = write(tmp_path / "p.csv", 'prompt,negative_prompt,prompt_2\n"x, y",  no ,"null"\n')
    (row,) = prompt_rows({"prompt_file": str(path)})[0]
    assert row.params == {"negative_prompt": "  no ", "prompt_2": "null"}


def test_csv_templates_expand_and_each_expansion_keeps_the_params(tmp_path):
    (tmp_path / "wc").mkdir()
    write(tmp_path / "wc" / "animal.txt", "cat\ndog\n")
    path = write(tmp_path / "p.csv", 'prompt,seed\n"a {red|blue} __animal__",7\nplain,\n')
    rows, _ = prompt_rows({"prompt_file": str(path), "wildcards": str(tmp_path / "wc")})
    assert [(r.prompt, r.params, r.source) for r in rows] == [
        ("a red cat", {"seed": 7}, 0),
        ("a red dog", {"seed": 7}, 0),
        ("a blue cat", {"seed": 7}, 0),
        ("a blue dog", {"seed": 7}, 0),
        ("plain", {}, 1),
    ]
    assert rows[0].template == "a {red|blue} __animal__" and rows[4].template is None
    rows[0].params["seed"] = 8  # each row has a dict of its own
    assert rows[1].params == {"seed": 7}


@pytest.mark.parametrize(
    ("column", "cell", "must"),
    [("seed", "1.5", "an integer"), ("steps", "ten", "an integer"), ("guidance", "high", "a finite number"), ("strength", "nan", "a finite number")],
)
def test_csv_bad_number_names_row_column_and_value(tmp_path, column, cell, must):
    path = write(tmp_path / "p.csv", f"prompt,{column}\nfine,\n\nbad,{cell}\n")
    assert refusal({"prompt_file": str(path)}) == f"invalid {column}={cell!r} in prompt_file={str(path)!r} row 2 (line 4): must be {must}"


def test_csv_unknown_column_is_refused_naming_it_and_the_allowed_ones(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,cfg\na,7\n")
    assert refusal({"prompt_file": str(path)}) == (
        f"invalid prompt_file={str(path)!r}: unknown column 'cfg'; allowed columns: prompt, {', '.join(prompt_files.CSV_PARAMS)}"
    )


def test_csv_params_can_be_extended(tmp_path, monkeypatch):
    monkeypatch.setattr(prompt_files, "CSV_PARAMS", (*prompt_files.CSV_PARAMS, "clip_skip"))
    monkeypatch.setitem(prompt_files.CSV_TYPES, "clip_skip", int)
    path = write(tmp_path / "p.csv", "prompt,clip_skip\na,2\n")
    assert prompt_rows({"prompt_file": str(path)})[0][0].params == {"clip_skip": 2}


def test_csv_without_a_prompt_column(tmp_path):
    path = write(tmp_path / "p.csv", "text,seed\na,1\n")
    assert refusal({"prompt_file": str(path)}) == (
        f"invalid prompt_file={str(path)!r}: a CSV prompt file needs a 'prompt' column in its header row; it has 'text', 'seed'"
    )


def test_csv_shape_errors(tmp_path):
    empty = write(tmp_path / "empty.csv", "prompt,seed\n\n")
    assert "the file holds no prompt" in refusal({"prompt_file": str(empty)})
    blank = write(tmp_path / "blank.csv", "prompt,seed\n,3\n")
    assert refusal({"prompt_file": str(blank)}) == f"invalid prompt_file={str(blank)!r}: row 1 (line 2): the prompt cell is empty"
    extra = write(tmp_path / "extra.csv", "prompt,seed\na,1,oops\n")
    assert "row 1 (line 2): cell 3 ('oops') is in no named column" in refusal({"prompt_file": str(extra)})
    twice = write(tmp_path / "twice.csv", "prompt,seed,seed\na,1,2\n")
    assert "column 'seed' appears twice" in refusal({"prompt_file": str(twice)})


def test_csv_from_a_spreadsheet_bom_and_trailing_commas(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("prompt,steps,\r\na,4,\r\n".encode("utf-8-sig"))
    assert prompt_rows({"prompt_file": str(path)})[0] == [PromptRow("a", None, {"steps": 4}, 0)]


# -- Hydra ----------------------------------------------------------------------


def test_quoted_template_survives_the_hydra_command_line():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeper.app import config_dir

    overrides = ['prompt="a {red|blue} car"']
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["model=tiny", *overrides]), resolve=True)
        variables = OmegaConf.to_container(compose("config", overrides=['prompt="\\${c={red|blue}} a \\${c} car"']), resolve=True)
    assert cfg["prompt"] == "a {red|blue} car"
    assert texts(cfg) == ["a red car", "a blue car"]
    assert variables["prompt"] == "${c={red|blue}} a ${c} car"
    assert texts(variables) == ["a red car", "a blue car"]


def test_csv_quoted_cells_may_span_lines_and_errors_name_the_row_start(tmp_path):
    path = write(tmp_path / "p.csv", 'prompt,seed\n"two\nlines",1\nx\u2028y,2\nbad,z\n')
    with pytest.raises(PlanError, match=r"invalid seed='z' in prompt_file=.* row 3 \(line 5\): must be an integer"):
        prompt_rows({"prompt_file": str(path)})
    path = write(tmp_path / "q.csv", 'prompt,seed\n"two\nlines",1\nx\u2028y,2\n')
    assert texts({"prompt_file": str(path)}) == ["two\nlines", "x\u2028y"]
