"""A1111's prompt syntax (issue 32 part 1): the parser on A1111's own documented examples
(modules/prompt_parser.py, parse_prompt_attention's docstring) and its corners, and what
planning makes of a prompt: the spec's prompt_syntax is set only where the encoding changes,
and what cannot be rendered as written is refused in one line before anything loads."""

from __future__ import annotations

import pytest
from conftest import composed_job, refused_in_one_line

from sweeper.errors import PlanError
from sweeper.planning.plan import plan
from sweeper.planning.prompt_syntax import Lora, is_plain, lora_tags, parse_attention, unsupported

# A1111's documented examples, verbatim (parse_prompt_attention's doctest).
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
    ]),
]
CORNERS = [
    ("(x:1.2)", [("x", 1.2)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("((x))", [("x", 1.1 * 1.1)]),
    ("[[x]]", [("x", (1 / 1.1) * (1 / 1.1))]),
    ("((x:1.5))", [("x", 1.5 * 1.1)]),
    ("(x:1.0)", [("x", 1.0)]),
    ("a)b]", [("a)b]", 1.0)]),  # closing brackets with nothing open are text
    ("a:b", [("a:b", 1.0)]),
    ("x:1.2)", [("x:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("\\\\ \\[x\\] \\(y\\)", [("\\ [x] (y)", 1.0)]),
    ("[a:b]", [("a:b", 1 / 1.1)]),  # no number at the end: not prompt editing
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),  # BREAK is a word of its own
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # inside brackets A1111 weights it as text
]


@pytest.mark.parametrize("text, expected", A1111_EXAMPLES + CORNERS)
def test_parse_attention_as_a1111(text, expected):
    assert parse_attention(text) == expected  # floats exactly: A1111's order of multiplication


def test_a_weight_that_is_no_number_is_an_error():
    with pytest.raises(ValueError, match="not a number"):
        parse_attention("(x:1.2.3)")


@pytest.mark.parametrize("text, construct", [
    ("a AND b", "AND (composable prompts)"),
    ("a [cat|dog] fox", None),  # rendered: test_prompt_editing.py
    ("a [cat] \\[a|b\\] [a:b] and", None),
])
def test_constructs_without_a_faithful_meaning_are_named(text, construct):
    assert unsupported(text) == construct


def test_lora_tags_are_taken_out_of_the_text():
    assert lora_tags("a fox <lora:style:0.8>, <lora:detail>") == ("a fox , ", [Lora("style", 0.8), Lora("detail", 1.0)])
    for bad in ("<hypernet:x:1>", "<lora:x:0.5:0.7>", "<lora:x:heavy>", "<lora:x:te=0.5>"):
        with pytest.raises(ValueError):
            lora_tags(bad)


def test_is_plain():
    assert is_plain("a red fox, in snow") and is_plain("a <3 heart: love")
    assert not any(is_plain(text) for text in ("(a)", "[a]", "a BREAK b", "\\(a", "a <lora:x:1>", "(a:1.0)"))


def _spec(*overrides: str):
    (spec,) = plan([composed_job(0, "steps=2", *overrides)], auto_device="cpu")
    return spec


def test_the_spec_field_is_set_only_where_the_encoding_changes():
    plain = _spec("model=tiny", "prompt=a red fox")
    assert plain.prompt_syntax is None
    assert plain.image_id == _spec("model=tiny", "prompt=a red fox", "prompt_syntax=plain").image_id
    weighted = _spec("model=tiny", "prompt='a (red:1.2) fox'")
    assert weighted.prompt_syntax == "a1111" and weighted.prompt == "a (red:1.2) fox"  # the prompt as typed
    assert _spec("model=tiny", "prompt='a (red:1.2) fox'", "prompt_syntax=plain").prompt_syntax is None
    assert _spec("model=tiny", "prompt=a fox", "negative_prompt='(blurry)'").prompt_syntax == "a1111"
    # Over 75 tokens (the tiny tokenizer has a token per character): A1111 chunks what diffusers cuts.
    assert _spec("model=tiny", "prompt=" + "ab " * 26).prompt_syntax is None  # 52 tokens
    assert _spec("model=tiny", "prompt=" + "abc " * 26).prompt_syntax == "a1111"  # 78 tokens
    assert _spec("model=tiny", "prompt='" + "é" * 40 + "'").prompt_syntax == "a1111"  # 40 characters, 80 byte tokens
    assert _spec("model=tiny-sd", "prompt=" + "abc " * 26, "prompt_syntax=plain").prompt_syntax is None
    # compel: its syntax sets the field; plain text within 75 tokens does not (compel encodes it as diffusers does).
    assert _spec("model=tiny", "prompt=a red++ fox", "prompt_syntax=compel").prompt_syntax == "compel"
    assert _spec("model=tiny-sd", "prompt='a fox, in snow'", "prompt_syntax=compel").image_id == _spec("model=tiny-sd", "prompt='a fox, in snow'").image_id
    assert _spec("model=tiny", "prompt=" + "abc " * 26, "prompt_syntax=compel").prompt_syntax == "compel"
    # Flow families: a prompt without syntax passes untouched.
    assert _spec("model=tiny-flux", "prompt=a red fox " + "abc " * 30).prompt_syntax is None


REFUSED = [
    (["model=tiny", "negative_prompt='a AND b'"], "invalid negative_prompt='a AND b': AND (composable prompts) is not supported"),
    (["model=tiny-flux", "prompt='a (red:1.2) fox'"], "invalid prompt='a (red:1.2) fox': (...) emphasis is A1111 prompt syntax, which Flux.1 models do not weight; prompt_syntax=plain renders it as text"),
    (["model=tiny-z-image", "prompt='a fox BREAK snow'"], "BREAK is A1111 prompt syntax, which Z-Image models do not weight"),
    (["model=tiny", "prompt='(x:1.2.3)'"], "the weight '1.2.3' is not a number"),
    (["model=tiny", "prompt='a fox <lora:style:0.8>'"], "<lora:style> in a prompt needs lora_dir="),
    (["model=tiny", "prompt='a fox <lora:../style:0.8>'", "lora_dir=."], "invalid <lora:../style>: a name inside lora_dir"),
    (["model=tiny", "prompt='a fox <lora:style:0.8>'", "lora_dir=."], "invalid <lora:style>: no style.safetensors in lora_dir=."),
    (["model=tiny", "prompt='a fox <hypernet:x:1>'"], "<hypernet:...> (A1111's hypernet extra network) is not supported"),
    (["model=tiny", "negative_prompt='<lora:x:1>'", "lora_dir=."], "invalid negative_prompt='<lora:x:1>': <lora:x> in negative_prompt (adapters are named in the prompt)"),
    (["model=tiny", "prompt_syntax=a1112"], "invalid prompt_syntax='a1112': allowed: a1111, compel, plain"),
    (["model=tiny-flux", "prompt_syntax=compel"], "invalid prompt_syntax='compel': compel weights the CLIP prompts of SD 1.x and SDXL; Flux.1 models take"),
    (["model=tiny", "refiner=tiny", "prompt_syntax=compel"], "compel encodes for the base model only"),
    (["model=tiny-sd", "clip_skip=2", "prompt_syntax=compel"], "compel has no clip skip"),
    (["model=tiny", "prompt='a fox <lora:x:1>'", "prompt_syntax=compel"], "<lora:...> tags are A1111's syntax, not compel's"),
]


def test_what_cannot_be_rendered_as_written_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


def test_a_lora_file_outside_lora_dir_is_refused(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    (tmp_path / "loras" / "style.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(PlanError, match="leads out of lora_dir"):
        _spec("model=tiny", "prompt='a fox <lora:style:0.8>'", f"lora_dir={tmp_path / 'loras'}")


def _adapter(path, value: float):
    """A file planning takes for an adapter (it hashes the file; no model loads while planning)."""
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": np.full((4, 8), value, dtype="float32")}, path)
    return path


def test_a_prompts_lora_tags_add_to_the_jobs_own_adapters(tmp_path):
    style, detail = _adapter(tmp_path / "style.safetensors", 1), _adapter(tmp_path / "sub" / "detail.safetensors", 2)
    spec = _spec("model=tiny", "prompt='a fox <lora:style:0.8> <lora:sub/detail>'", f"lora_dir={tmp_path}")
    assert spec.lora == (str(style), str(detail)) and spec.lora_scale == (0.8, 1.0) and spec.prompt_syntax == "a1111"
    assert _spec("model=tiny", "prompt='a fox <lora:detail:0.5>'", f"lora_dir={tmp_path}").lora == (str(detail),)  # found below, as A1111 does
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "detail.safetensors").write_bytes(detail.read_bytes())
    with pytest.raises(PlanError, match="2 files of that name in lora_dir"):
        _spec("model=tiny", "prompt='a fox <lora:detail:0.5>'", f"lora_dir={tmp_path}")
    both = _spec("model=tiny", "prompt='a fox <lora:style:0.8>'", f"lora_dir={tmp_path}", f"lora={detail}", "lora_scale=0.5")
    assert both.lora == (str(detail), str(style)) and both.lora_scale == (0.5, 0.8)
    # the adapters are part of the id: the same prompt without lora_dir's file is another image
    assert spec.image_id != _spec("model=tiny", "prompt='a fox <lora:style:0.8> <lora:sub/detail>'", "prompt_syntax=plain").image_id
