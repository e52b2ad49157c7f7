"""The HTML report, checked the way a person sees it: opened in headless Chromium.

Most tests build a fake sweep dir (solid-colour PNGs, one colour per cell, and
a manifest with the real schema) instead of rendering; one test goes through
the real CLI end to end.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from itertools import product
from pathlib import Path
from importlib.resources import files
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import only_dir, run_cli
from PIL import Image, ImageDraw

from sweeper.storing import manifest, store
from sweeper import report
from sweeper.report import grid_png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRICKY_PROMPT = 'a "cat", <b>bold</b> & </script><script>alert(1)</script> café 🐱'
PROMPTS = ["a red fox", TRICKY_PROMPT]
ERROR = 'out of memory: tried to allocate <2 GiB> & "more"'
START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SIDE = 288  # larger than a thumbnail: smaller images are shown as they are


# A fake sweep dir


def colour(index: int, count: int) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(index / count, 0.85, 0.9)
    return round(red * 255), round(green * 255), round(blue * 255)


def base_row(**values) -> dict:
    row = dict.fromkeys(manifest.SCHEMA.names)
    row.update(
        status="ok", model="tiny", refiner="none", scheduler="euler", steps=2, width=SIDE, height=SIDE, mode="txt2img",
        model_id="tiny-sdxl", model_revision="v1", dtype="float32", device="cpu", rank=0, world_size=1,
        batch_size=1, batch_index=0, host="testhost", sweeper="0.1.0", diffusers="0.42.1", torch="2.13.0+cpu",
    )
    row.update(values)
    return row


def write_manifest(sweep: Path, rows: list[dict]) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest.SCHEMA), sweep / manifest.MANIFEST)


def fake_sweep(sweep: Path, *, scheduler: str = "euler", guidances=(3.0, 7.5, 10.0), seeds=range(4), fail: bool = True) -> list[dict]:
    """prompts x seeds x guidances, one solid colour per image; the last image failed (no file)."""
    combos = list(product(PROMPTS, seeds, guidances))
    rows = []
    for index, (prompt, seed, guidance) in enumerate(combos):
        image_id = hashlib.sha1(f"{scheduler}|{prompt}|{seed}|{guidance}".encode()).hexdigest()[:20]
        failed = fail and index == len(combos) - 1
        row = base_row(
            image_id=image_id, path=f"images/{image_id}.png", status="error" if failed else "ok",
            error=ERROR if failed else None, scheduler=scheduler, prompt=prompt, seed=seed, guidance=guidance,
            job_num=index, overrides=f"model=tiny scheduler={scheduler} guidance={guidance:g} seed={seed}",
            seconds=0.5 + guidance / 10, started_at=START + timedelta(seconds=index), finished_at=START + timedelta(seconds=index + 1),
        )
        row["colour"] = colour(index, len(combos))
        rows.append(row)
        if not failed:
            (sweep / "images").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (SIDE, SIDE), row["colour"]).save(sweep / row["path"])
    write_manifest(sweep, [{k: v for k, v in row.items() if k != "colour"} for row in rows])
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - model=tiny\n    - guidance=3,7.5,10\n    - seed=0,1,2,3\n", encoding="utf-8"
    )
    return rows


# Headless Chromium and the DOM it leaves


class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [node for node in self.iter() if (tag is None or node.tag == tag) and (cls is None or cls in node.classes)]

    def by_id(self, node_id: str) -> Node:
        (found,) = [node for node in self.iter() if node.attrs.get("id") == node_id]
        return found


class TreeBuilder(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


class Page:
    """What Chromium shows after the page's scripts ran: DOM, console lines, screenshot."""

    def __init__(self, html_text: str, console: list[str], screenshot: Path) -> None:
        self.html, self.console, self.screenshot = html_text, console, screenshot
        builder = TreeBuilder()
        builder.feed(html_text)
        self.dom = builder.root


def browse(page: Path, tmp_path: Path, fragment: str = "", size: tuple[int, int] = (1280, 1600), flags: tuple[str, ...] = ()) -> Page:
    """Open a file in headless Chromium (must be installed: a missing browser fails, never skips)."""
    assert Path(CHROMIUM).exists(), "chromium is not installed (Debian package `chromium`)"
    screenshot = tmp_path / f"screenshot-{page.stem}.png"
    command = [
        CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={size[0]},{size[1]}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        f"--screenshot={screenshot}", *flags, "--dump-dom", page.resolve().as_uri() + fragment,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return Page(result.stdout, console, screenshot)


def assert_screenshot(page: Page, colours: list[tuple[int, int, int]]) -> None:
    """The screenshot is a real picture of the page, showing the thumbnails' colours."""
    shot = Image.open(page.screenshot)
    assert shot.format == "PNG" and shot.size == (1280, 1600)
    pixels = np.asarray(shot.convert("RGB"), dtype=np.int32).reshape(-1, 3)
    assert len(np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2])) > 50
    for rgb in colours:
        assert (np.abs(pixels - np.array(rgb)).max(axis=1) <= 12).sum() > 1000, f"no thumbnail of colour {rgb} on screen"


def labels(block: Node, cls: str) -> list[str]:
    return [node.text() for node in block.find_all("th", cls)]


# Tests


def test_report_shows_one_labelled_grid_per_section_and_the_tables(tmp_path):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    assert report.write_report(sweep) == sweep / "report.html"
    page = browse(sweep / "report.html", tmp_path)
    assert page.console == []

    # Defaults: x = seed (4 values), y = guidance (3); the prompt (2 values) makes the sections.
    blocks = page.dom.by_id("grid-blocks").find_all("div", "block")
    assert len(blocks) == 2
    assert sorted(block.find_all("h3")[0].text() for block in blocks) == sorted(f"prompt = {prompt}" for prompt in PROMPTS)
    for block in blocks:
        assert labels(block, "xlabel") == ["0", "1", "2", "3"]
        assert labels(block, "ylabel") == ["3", "7.5", "10"]
        assert "seed →" in block.text() and "guidance ↓" in block.text()
    grid = page.dom.by_id("grid-blocks")
    assert len(grid.find_all("td", "cell")) == 24 and len(grid.find_all("button", "tile")) == 24
    (failed,) = grid.find_all("button", "error")
    assert ERROR in failed.text()
    images = grid.find_all("img")
    assert len(images) == 23 and all(img.attrs["loading"] == "lazy" for img in images)
    assert all(img.attrs["src"].startswith(".thumbs/") and img.attrs["src"].endswith(".webp") for img in images)
    assert grid.find_all(cls="broken") == []
    assert "24 of 24 images in 2 grids" in page.dom.by_id("grid-status").text()

    # Tables: counts and time per value, errors with their messages, overrides, versions.
    axes = page.dom.by_id("axes")
    assert [node.text() for node in axes.find_all("h3")] == ["prompt", "guidance", "seed"]  # the start line's order
    guidance_table = axes.find_all("table")[1]
    assert [[td.text() for td in tr.find_all("td")] for tr in guidance_table.find_all("tr")[1:]] == [
        ["3", "8", "8", "0", "0.8 s"], ["7.5", "8", "8", "0", "1.25 s"], ["10", "8", "7", "1", "1.5 s"],
    ]
    assert len(axes.find_all("svg", "chart")) == 3 and len(axes.find_all("rect")) == 2 + 4 + 3
    assert ERROR in page.dom.by_id("errors").text()
    overrides = page.dom.by_id("overrides").text()
    assert "python -m sweeper -m model=tiny guidance=3,7.5,10 seed=0,1,2,3" in overrides
    assert "model=tiny scheduler=euler guidance=7.5 seed=2" in overrides
    environment = page.dom.by_id("environment").text()
    assert all(text in environment for text in ("0.42.1", "2.13.0+cpu", "testhost", "float32", "cpu"))

    # Self-contained: nothing is fetched from the network.
    source = (sweep / "report.html").read_text(encoding="utf-8")
    assert "<link" not in source and "@import" not in source
    assert 'src="http' not in source and "fetch(" not in source
    assert_screenshot(page, [row["colour"] for row in rows[:4]])


def test_an_opened_image_shows_all_its_parameters_and_prompts_stay_text(tmp_path):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    tricky = next(row for row in rows if row["prompt"] == TRICKY_PROMPT and row["status"] == "ok")
    page = browse(report.write_report(sweep), tmp_path, fragment=f"#img=0:{tricky['image_id']}")
    assert page.console == []  # the prompt's </script><script>alert(1) did not run or break anything
    box = page.dom.by_id("lightbox")
    assert "hidden" not in box.attrs
    (full,) = box.find_all("img")
    assert full.attrs["src"] == tricky["path"]
    params = {tr.find_all("th")[0].text(): tr.find_all("td")[0].text() for tr in box.find_all("tr")}
    assert params["prompt"] == TRICKY_PROMPT and params["image_id"] == tricky["image_id"]
    assert params["guidance"] == f"{tricky['guidance']:g}" and params["seed"] == str(tricky["seed"])
    assert params["scheduler"] == "euler" and params["torch"] == "2.13.0+cpu"
    # Only the fields that are set: no row of nulls (the negative prompt, the refiner's split, ...).
    unset = {name for name in manifest.SCHEMA.names if tricky.get(name) is None}
    assert {"negative_prompt", "refiner_split"} <= unset and set(params) == set(manifest.SCHEMA.names) - unset
    # The prompt shows as text everywhere: no element came out of it.
    assert page.dom.find_all("b") == [] and len(page.dom.find_all("script")) == 2


def test_thumbnails_are_made_once_and_linked_relative_to_the_report(tmp_path):
    sweep = tmp_path / "sweeps" / "a b#1"  # a name that needs quoting in a URL
    rows = fake_sweep(sweep)
    report.write_report(sweep)
    thumbs = sorted((sweep / report.THUMBS_DIR).iterdir())
    assert [path.name for path in thumbs] == sorted(f"{row['image_id']}.webp" for row in rows if row["status"] == "ok")
    with Image.open(thumbs[0]) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (store.THUMB_SIDE, store.THUMB_SIDE)
    stamps = {path: path.stat().st_mtime_ns for path in thumbs}

    output = tmp_path / "elsewhere" / "cmp.html"
    assert report.write_report(sweep, output=output) == output
    assert {path: path.stat().st_mtime_ns for path in thumbs} == stamps
    data = embedded_data(output)["sweeps"][0]
    assert data["base"] == "../sweeps/a%20b%231/"
    assert (output.parent / unquote(data["base"]) / data["thumbs"] / f"{rows[0]['image_id']}{data['ext']}").is_file()


def embedded_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">') + len('<script type="application/json" id="report-data">')
    return json.loads(text[start : text.index("</script>", start)])


def test_axes_are_chosen_and_checked(tmp_path, capsys):
    sweep = tmp_path / "sweep-a"
    fake_sweep(sweep)
    loaded = report.load_sweep(sweep)
    assert loaded.swept == ["prompt", "guidance", "seed"]  # in the start line's order
    assert report.choose_axes(loaded) == ("seed", "guidance")
    assert report.choose_axes(loaded, y="seed") == ("guidance", "seed")
    assert report.choose_axes(loaded, x="host") == ("host", "seed")

    # The real CLI: an unknown column is one line naming the allowed ones, exit 2.
    result = run_cli(str(sweep), "--x", "sampler", cwd=tmp_path, module="sweeper.report")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("sweeper: error: --x: no column 'sampler'") and "guidance" in line and "seed" in line

    for argv, expected in [
        ([str(tmp_path / "nowhere")], "is not a directory"),
        ([str(tmp_path)], "no images in"),
        ([str(sweep), "--x", "seed", "--y", "seed"], "--x and --y are both 'seed'"),
        ([str(sweep), "--bogus"], "unrecognized arguments: --bogus"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            report.main(argv)
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("sweeper: error: ") and expected in line
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"])
    assert exit_info.value.code == 0 and "--compare" in capsys.readouterr().out


def many_images(sweep: Path, values: list[dict]) -> None:
    """A sweep dir of one image (and cached thumbnail) per `values`, all hard links to one file: 10,000s in no time."""
    (sweep / "images").mkdir(parents=True)
    (sweep / report.THUMBS_DIR).mkdir()
    Image.new("RGB", (SIDE, SIDE), (200, 60, 60)).save(sweep / "one.png")
    Image.new("RGB", (SIDE, SIDE), (200, 60, 60)).save(sweep / "one.webp")
    rows = []
    for index, row in enumerate(values):
        image_id = f"{index:020d}"
        os.link(sweep / "one.png", sweep / "images" / f"{image_id}.png")
        os.link(sweep / "one.webp", sweep / report.THUMBS_DIR / f"{image_id}.webp")
        rows.append(base_row(image_id=image_id, path=f"images/{image_id}.png", prompt="p", job_num=index, seconds=0.1, **row))
    write_manifest(sweep, rows)


def test_ten_thousand_images_open_one_page_at_a_time(tmp_path):
    sweep = tmp_path / "big"
    many_images(sweep, [dict(steps=steps, guidance=float(guidance), seed=seed) for steps, guidance, seed in product(range(1, 11), range(1, 11), range(100))])

    page_file = report.write_report(sweep)
    assert page_file.stat().st_size < 4_000_000
    page = browse(page_file, tmp_path)
    assert page.console == []
    grid = page.dom.by_id("grid-blocks")
    images = grid.find_all("img")
    assert 0 < len(images) <= report.PAGE_CELLS and all(img.attrs["loading"] == "lazy" for img in images)
    assert len(grid.find_all("th", "xlabel")) <= report.MAX_COLS * len(grid.find_all("div", "block"))
    (pick,) = page.dom.by_id("grid-pager").find_all("select")
    pages = pick.find_all("option")
    assert len(pages) * report.PAGE_CELLS >= 10_000 and pages[0].text() == f"page 1 of {len(pages)}"
    assert f"10000 of 10000 images in 10 grids, {len(pages)} pages" in page.dom.by_id("grid-status").text()

    last = browse(page_file, tmp_path, fragment=f"#page={len(pages)}")
    assert last.console == []
    assert "guidance = 10" in last.dom.by_id("grid-blocks").find_all("h3")[-1].text()  # y = steps: of equal counts, the later axis


# Appended to a copy of a report: opens (focuses) the seed filter, as a click or Tab does, and notes its options.
OPEN_SEED_FILTER = """<script>
const label = [...document.querySelectorAll("#grid-controls label")].find((node) => node.firstChild.textContent === "seed");
const pick = label.querySelector("select");
document.documentElement.dataset.before = `${pick.options.length} ${pick.value}`;
pick.dispatchEvent(new Event("focus"));
document.documentElement.dataset.after = `${pick.options.length} ${pick.value}`;
</script>"""


def test_a_key_of_twenty_thousand_values_opens_and_its_filter_lists_them_once_opened(tmp_path):
    """At 100,000 seeds, a list as long as a key's values spread into a call's arguments overflowed the
    stack (the page stayed blank). Here a V8 stack 1/8 of the usual makes 20,000 values do the same."""
    count = 20_000
    sweep = tmp_path / "seeds"
    many_images(sweep, [dict(guidance=5.0, seed=seed) for seed in range(count)])
    page_file = report.write_report(sweep)
    probe = page_file.with_name("probe.html")
    probe.write_text(page_file.read_text(encoding="utf-8").replace("</body>", OPEN_SEED_FILTER + "</body>"), encoding="utf-8")

    page = browse(probe, tmp_path, fragment="#x=seed&y=&f.seed=12345", flags=("--js-flags=--stack-size=120",))
    assert page.console == []
    assert "1 of 20000 images in 1 grid" in page.dom.by_id("grid-status").text()
    assert [img.attrs["src"] for img in page.dom.by_id("grid-blocks").find_all("img")] == [f"{report.THUMBS_DIR}/{12345:020d}.webp"]
    root = page.dom.find_all("html")[0].attrs
    assert root["data-before"] == "2 12345"  # "all" and the chosen seed: 20,000 options wait until it is opened
    assert root["data-after"] == f"{count + 1} 12345"


def test_compare_pairs_images_on_shared_keys_and_lists_what_differs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_sweep(a, scheduler="euler")
    fake_sweep(b, scheduler="ddim", guidances=(7.5, 10.0, 12.0), fail=False)
    output = tmp_path / "compare.html"
    report.write_report(a, compare=b, output=output)
    page = browse(output, tmp_path)
    assert page.console == []

    section = page.dom.by_id("compare")
    (differ,) = section.find_all("table", "differ")
    assert [[td.text() for td in tr.find_all("td")] for tr in differ.find_all("tr")[1:]] == [["scheduler", "euler", "ddim"]]
    # guidance 7.5 and 10 x 4 seeds x 2 prompts are in both; guidance 3 only in A, 12 only in B.
    assert "16 matched pairs; 8 images only in A, 8 only in B" in section.text()
    pairs = section.find_all("tr", "pair")
    assert len(pairs) == 16
    for pair in pairs:
        side_a, side_b = pair.find_all("td", "side-a"), pair.find_all("td", "side-b")
        assert len(side_a) == len(side_b) == 1
        (image_b,) = side_b[0].find_all("img")
        assert image_b.attrs["src"].startswith("b/.thumbs/")
    first = [td.text() for td in pairs[0].find_all("td")[:3]]
    assert first == [PROMPTS[0], "0", "7.5"]  # prompts in the sweep's order, then seed, then guidance
    assert len(section.find_all("button", "error")) == 1  # A's failed image, paired with B's


def test_tiles_take_the_size_asked_for_headers_wrap_and_a_compared_pair_opens_side_by_side(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fake_sweep(a, scheduler="euler")
    fake_sweep(b, scheduler="ddim", guidances=(7.5, 10.0, 12.0), fail=False)
    output = report.write_report(a, compare=b, output=tmp_path / "compare.html")

    page = browse(output, tmp_path, fragment="#size=384")
    assert page.console == []
    assert "--cell: 384px" in page.dom.find_all("html")[0].attrs.get("style", "")
    (size,) = [node for node in page.dom.find_all("label", "size")]
    assert [option.text() for option in size.find_all("option")] == [f"{px} px" for px in (64, 96, 128, 192, 256, 384, 512)]
    images = page.dom.by_id("grid-blocks").find_all("img")
    assert images and all(img.attrs["src"].startswith("a/images/") for img in images)  # larger than a thumbnail: the image itself
    css = (files("sweeper.report") / "assets" / "report.css").read_text()
    header_rule = next(line for line in css.splitlines() if line.startswith("table.grid th.xlabel"))
    assert "nowrap" not in header_rule and "ellipsis" not in header_rule  # headers wrap, never cut

    page = browse(output, tmp_path, fragment="#pair=1")
    assert page.console == []
    box = page.dom.by_id("lightbox")
    assert "hidden" not in box.attrs
    (pair,) = box.find_all("div", "pair")
    side_a, side_b = pair.find_all("figure")
    assert side_a.find_all("img")[0].attrs["src"].startswith("a/images/") and side_b.find_all("img")[0].attrs["src"].startswith("b/images/")
    rows = {tr.find_all("th")[0].text(): [td.text() for td in tr.find_all("td")] for tr in box.find_all("tbody")[0].find_all("tr")}
    assert rows["scheduler"] == ["euler", "ddim"] and rows["prompt"][0] == rows["prompt"][1]
    differ = {tr.find_all("th")[0].text() for tr in box.find_all("tr", "differ")}
    assert "scheduler" in differ and "prompt" not in differ and "negative_prompt" not in rows  # unset in both: left out


def test_grid_png_is_labelled_and_tiled_when_too_big(tmp_path, capsys):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    out = tmp_path / "grid.png"
    assert report.main([str(sweep), "--grid", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(sweep / "report.html"), str(out)]
    with Image.open(out) as grid:
        width, height = grid.size
        found = {rgb for _, rgb in grid.convert("RGB").getcolors(1 << 20)}
    assert width >= 4 * 32 and height >= 2 * 3 * 32 and width <= 8192 and height <= 8192
    assert {row["colour"] for row in rows if row["status"] == "ok"} <= found  # every image, pixel for pixel
    assert grid_png.NOTE_FILL in found  # the failed one as a note

    loaded = report.load_sweep(sweep)
    tiles = grid_png.write_grid(report.grids(loaded, "seed", "guidance"), tmp_path / "small.png", cell=32, max_side=120)
    assert [path.name for path in tiles] == [f"small-{n}.png" for n in range(1, len(tiles) + 1)] and len(tiles) > 2
    found = set()
    for path in tiles:
        with Image.open(path) as tile:
            assert max(tile.size) <= 120
            found |= {rgb for _, rgb in tile.convert("RGB").getcolors(1 << 20)}
    assert {row["colour"] for row in rows if row["status"] == "ok"} <= found


def test_grid_png_prints_well_glyphs_gaps_wrapped_labels_and_the_cell_asked_for(tmp_path, capsys):
    sweep = tmp_path / "sweep-a"
    fake_sweep(sweep)  # SIDE-pixel images
    big, default = tmp_path / "big.png", tmp_path / "default.png"
    assert report.main([str(sweep), "--x", "seed", "--y", "guidance", "--grid", str(big), "--cell", str(4 * SIDE)]) == 0
    assert report.main([str(sweep), "--x", "seed", "--y", "guidance", "--grid", str(default)]) == 0
    with Image.open(big) as enlarged, Image.open(default) as plain:
        assert enlarged.width >= 4 * (4 * SIDE) > plain.width >= 4 * SIDE  # --cell enlarges small images; by default their size

    style = grid_png._Style(64)
    def drawn(text: str) -> bytes:
        image = Image.new("L", (64, 64))
        ImageDraw.Draw(image).text((8, 8), text, font=style.font, fill=255)
        return image.tobytes()

    assert all(drawn(mark) != drawn("\uffff") for mark in "—×·…")  # glyphs, not the missing-glyph box
    words = "a photograph of an astronaut riding a horse on the moon, highly detailed, golden hour"
    lines = grid_png.wrap(words, style, 160)
    assert len(lines) > 2 and " ".join(lines) == words and all(style.width(line) <= 160 for line in lines)  # wrapped, not cut
    long_word = grid_png.wrap("x" * 40, style, 64)
    assert len(long_word) > 1 and "".join(long_word) == "x" * 40

    # Cells are apart: across two neighbouring images runs paper, GAP pixels wide.
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(red)
    Image.new("RGB", (16, 16), (0, 0, 255)).save(blue)
    grid = grid_png.Grid("t", ["a", "b"], [""], {(0, 0): grid_png.Cell(red), (0, 1): grid_png.Cell(blue)})
    (path,) = grid_png.write_grid([grid], tmp_path / "gap.png", cell=32)
    with Image.open(path) as drawn:
        rgb = np.asarray(drawn.convert("RGB"))
        red_rows = np.flatnonzero((rgb == (255, 0, 0)).all(axis=2).any(axis=1))
        names = {(255, 0, 0): "r", (0, 0, 255): "b", grid_png.PAPER: "w"}
        line = "".join(names.get(tuple(int(v) for v in pixel), "?") for pixel in rgb[red_rows[len(red_rows) // 2]])
    assert "r" * 32 + "w" * grid_png.GAP + "b" * 32 in line and "rb" not in line  # each image scaled to its 32 px cell, then the gap


def test_report_imports_no_torch():
    code = "import sys, sweeper.report; print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'diffusers'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.slow
def test_report_of_a_real_sweep_shows_its_two_by_two_grid(tmp_path, tiny_models):
    result = run_cli("-m", "model=tiny", "guidance=3,7", "seed=0,1", "steps=2", "width=64", "height=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    made = run_cli(str(sweep), cwd=tmp_path, module="sweeper.report")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(sweep / "report.html")
    page = browse(sweep / "report.html", tmp_path)
    assert page.console == []
    (block,) = page.dom.by_id("grid-blocks").find_all("table", "grid")
    assert labels(block, "xlabel") == ["0", "1"] and labels(block, "ylabel") == ["3", "7"]
    assert len(block.find_all("td", "cell")) == 4 and len(block.find_all("img")) == 4
    assert block.find_all(cls="broken") == []
    assert "model=tiny guidance=3,7 seed=0,1 steps=2 width=64 height=64" in page.dom.by_id("overrides").text()
