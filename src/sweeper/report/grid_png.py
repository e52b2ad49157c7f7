"""Labelled X/Y grid images (PNG) for sharing, tiled so no file is too big to open.

Image viewers and chat apps choke on giant grids (20 x 20 SDXL images is
400 Mpx); every file written here stays within `MAX_SIDE` pixels on a side and
`MAX_PIXELS` in all: a grid that does not fit is cut into blocks of whole
rows and columns, and the blocks are spread over `out-1.png`, `out-2.png`, ...
Labels use the bundled DejaVu Sans (assets/, its licence beside it): Pillow's
own default font lacks glyphs such as "—" and "×" and draws a box for them.
Long labels wrap (long words break); cells are apart by `GAP` pixels, and
images are scaled to the cell, up or down, so a grid prints at the size asked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from sweeper.storing.files import is_regular_inside, open_image
from sweeper.report.layout import layout
from sweeper.report.sweep import ReportError, Sweep

GRID_CELL = 512
MAX_SIDE = 8192
MAX_PIXELS = 64_000_000
PAD = 6
GAP = 4  # between cells, so images that meet do not run together
MAX_LABEL_LINES = 6
TITLE_LINES = 2
INK = (20, 20, 20)
PAPER = (255, 255, 255)
NOTE_FILL = (250, 228, 228)


@dataclass(frozen=True)
class Cell:
    """What one grid cell shows: an image file, or a note when there is none to show."""

    image: Path | None = None
    note: str = ""


@dataclass(frozen=True)
class Grid:
    """One titled grid: labels of its columns (x) and rows (y), cells keyed by (row, column)."""

    title: str
    x_labels: list[str]
    y_labels: list[str]
    cells: dict[tuple[int, int], Cell]


@dataclass(frozen=True)
class _Block:
    grid: Grid
    rows: range
    cols: range
    part: str


class _Style:
    """Font and the sizes derived from it and from the cell size."""

    def __init__(self, cell: int) -> None:
        self.cell = cell
        self.pitch = cell + GAP  # from one cell to the next
        self.font = ImageFont.truetype(io.BytesIO(_font_file()), size=max(12, cell // 16))
        self.line = round(self.font.size * 1.3)

    def width(self, text: str) -> float:
        return self.font.getlength(text)

    def left(self, grid: Grid) -> int:
        if grid.y_labels == [""]:
            return PAD
        widest = max(self.width(label) for label in grid.y_labels)
        return int(min(widest, max(2 * self.cell, 160))) + 2 * PAD

    def header(self, grid: Grid) -> int:
        lines = max(len(wrap(label, self, self.cell - PAD)) for label in grid.x_labels)
        return lines * self.line + 2 * PAD

    def title_lines(self, block: _Block) -> list[str]:
        width = self.left(block.grid) + len(block.cols) * self.pitch - PAD
        return wrap(block.grid.title + block.part, self, width, max_lines=TITLE_LINES)

    def title(self, block: _Block) -> int:
        return len(self.title_lines(block)) * self.line + 2 * PAD


@cache
def _font_file() -> bytes:
    return (files("sweeper.report") / "assets" / "DejaVuSans.ttf").read_bytes()


def wrap(text: str, style: _Style, width: float, max_lines: int = MAX_LABEL_LINES) -> list[str]:
    """Greedy word wrap to `width` pixels, a word too long for a line broken where it fills one;
    the last line ends in an ellipsis when text is left over."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        if style.width(words[0]) > width:
            head, rest = _break(words[0], style, width)
            words[0:1] = [head, rest] if rest else [head]
        line = words.pop(0)
        while words and style.width(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if not lines:
        return [""]
    if words or any(style.width(line) > width for line in lines):
        lines[-1] = _ellipsize(lines[-1] + (" " if words else ""), style, width)
    return [line if style.width(line) <= width else _ellipsize(line, style, width) for line in lines]


def _break(word: str, style: _Style, width: float) -> tuple[str, str]:
    """The longest start of `word` that fits `width` (at least one character), and the rest:
    found by bisection, a few measurements whatever the word's length."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if style.width(word[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return word[:low], word[low:]


def _ellipsize(text: str, style: _Style, width: float) -> str:
    """The longest start of `text` that fits in `width` with an ellipsis: a binary search, so a
    10,000-character word is measured ~14 times, not 10,000 (it took minutes)."""
    fits, over = 0, len(text) + 1  # text[:fits] fits; text[:over] does not
    while over - fits > 1:
        middle = (fits + over) // 2
        if style.width(text[:middle].rstrip() + "…") <= width:
            fits = middle
        else:
            over = middle
    return text[:fits].rstrip() + "…"


def _blocks(grid: Grid, style: _Style, max_side: int, max_pixels: int) -> list[_Block]:
    """Cut a grid into blocks of whole rows and columns that each fit in one file."""
    left, top = style.left(grid), TITLE_LINES * style.line + 2 * PAD + style.header(grid)
    cols = max(1, (max_side - left - PAD) // style.pitch)
    width = left + min(cols, len(grid.x_labels)) * style.pitch + PAD
    rows = max(1, (min(max_side, max_pixels // width) - top - PAD) // style.pitch)
    blocks = []
    for row in range(0, len(grid.y_labels), rows):
        for col in range(0, len(grid.x_labels), cols):
            block_rows = range(row, min(row + rows, len(grid.y_labels)))
            block_cols = range(col, min(col + cols, len(grid.x_labels)))
            split = len(block_rows) < len(grid.y_labels) or len(block_cols) < len(grid.x_labels)
            part = f" (rows {row + 1}-{block_rows[-1] + 1}, columns {col + 1}-{block_cols[-1] + 1})" if split else ""
            blocks.append(_Block(grid, block_rows, block_cols, part))
    return blocks


def _size(block: _Block, style: _Style) -> tuple[int, int]:
    width = style.left(block.grid) + len(block.cols) * style.pitch + PAD
    height = style.title(block) + style.header(block.grid) + len(block.rows) * style.pitch + PAD
    return width, height


def _pages(blocks: list[_Block], style: _Style, max_side: int, max_pixels: int) -> list[list[_Block]]:
    """Stack blocks top to bottom, starting a new file when the next would not fit."""
    pages: list[list[_Block]] = []
    width = height = 0
    for block in blocks:
        block_width, block_height = _size(block, style)
        new_width, new_height = max(width, block_width), height + block_height
        if pages and new_height <= max_side and new_width * new_height <= max_pixels:
            pages[-1].append(block)
            width, height = new_width, new_height
        else:
            pages.append([block])
            width, height = block_width, block_height
    return pages


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, cell: Cell | None, box: tuple[int, int], style: _Style) -> None:
    x, y = box
    if cell is None:
        return
    if cell.image is not None:
        try:
            with open_image(cell.image) as image:
                image = image.convert("RGB")
        except (ValueError, OSError) as error:
            cell = Cell(note=f"unreadable image ({error})")
        else:
            image = ImageOps.contain(image, (style.cell, style.cell), Image.LANCZOS)  # up or down to the cell
            canvas.paste(image, (x + (style.cell - image.width) // 2, y + (style.cell - image.height) // 2))
            return
    draw.rectangle((x + 1, y + 1, x + style.cell - 2, y + style.cell - 2), fill=NOTE_FILL)
    lines = wrap(cell.note, style, style.cell - 2 * PAD, max_lines=max(1, (style.cell - 2 * PAD) // style.line))
    for n, line in enumerate(lines):
        draw.text((x + PAD, y + PAD + n * style.line), line, font=style.font, fill=INK)


def _draw_block(canvas: Image.Image, block: _Block, top: int, style: _Style) -> None:
    draw = ImageDraw.Draw(canvas)
    grid, cell, pitch = block.grid, style.cell, style.pitch
    left = style.left(grid)
    for k, line in enumerate(style.title_lines(block)):
        draw.text((PAD, top + PAD + k * style.line), line, font=style.font, fill=INK)
    header_top = top + style.title(block)
    rows_top = header_top + style.header(grid)
    for n, col in enumerate(block.cols):
        for k, line in enumerate(wrap(grid.x_labels[col], style, cell - PAD)):
            x = left + n * pitch + (cell - style.width(line)) / 2
            draw.text((x, header_top + PAD + k * style.line), line, font=style.font, fill=INK)
    for m, row in enumerate(block.rows):
        y = rows_top + m * pitch
        lines = wrap(grid.y_labels[row], style, left - 2 * PAD, max_lines=max(1, cell // style.line))
        label_top = y + (cell - len(lines) * style.line) / 2
        for k, line in enumerate(lines):
            draw.text((PAD, label_top + k * style.line), line, font=style.font, fill=INK)
        for n, col in enumerate(block.cols):
            _draw_cell(canvas, draw, grid.cells.get((row, col)), (left + n * pitch, y), style)


def write_grid(grids: list[Grid], out: Path, cell: int, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS) -> list[Path]:
    """Draw the grids as labelled PNG(s) with `cell`-pixel cells; returns the files written.

    One file `out` when everything fits, else `out-1.png`, `out-2.png`, ...
    """
    out = Path(out)
    style = _Style(cell)
    blocks = [block for grid in grids for block in _blocks(grid, style, max_side, max_pixels)]
    pages = _pages(blocks, style, max_side, max_pixels)
    if len(pages) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}-{n}{out.suffix or '.png'}") for n in range(1, len(pages) + 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    for page, path in zip(pages, paths):
        sizes = [_size(block, style) for block in page]
        canvas = Image.new("RGB", (max(w for w, _ in sizes), sum(h for _, h in sizes)), PAPER)
        top = 0
        for block, (_, height) in zip(page, sizes):
            _draw_block(canvas, block, top, style)
            top += height
        canvas.save(path, format="PNG")
    return paths


def grids(sweep: Sweep, x: str | None, y: str | None) -> list[Grid]:
    """The report's default grids (one per combination of the other swept keys) for the PNG writer."""
    found = layout(sweep, x, y)
    axis_names = ", ".join(f"{axis}: {name}" for axis, name in (("x", x), ("y", y)) if name)
    result = []
    for section in found.sections:
        title = " · ".join(f"{name} = {value}" for name, value in zip(found.keys, section.key))
        cells = {place: _grid_cell(sweep, indices[0]) for place, indices in section.cells.items()}
        result.append(Grid(" — ".join(part for part in (title, axis_names) if part), section.xs, section.ys, cells))
    return result


def _grid_cell(sweep: Sweep, index: int) -> Cell:
    row = sweep.rows[index]
    if row["status"] != "ok":
        return Cell(note=f"error: {row['error'] or ''}")
    path = sweep.dir / row["path"]
    return Cell(image=path) if is_regular_inside(path, sweep.dir) else Cell(note="missing file")


def write_grid_png(sweep: Sweep, x: str | None, y: str | None, out: Path, cell: int | None = None) -> list[Path]:
    """Labelled PNG grid(s) of the sweep; `cell` px cells (images scaled up or down to fit),
    by default as big as the largest image, at most GRID_CELL."""
    if cell is None:
        cell = min(GRID_CELL, max(max(row["width"] or 0, row["height"] or 0) for row in sweep.rows) or GRID_CELL)
    try:
        return write_grid(grids(sweep, x, y), Path(out), cell=max(16, cell))
    except OSError as error:
        raise ReportError(f"cannot write the grid {out}: {error}") from None
