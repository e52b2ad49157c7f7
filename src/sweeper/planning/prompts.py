"""Prompts: the prompt keys of a composed job config -> a list of prompt rows.

    conf/ -> plan (prompt_rows here) -> schedule -> render -> store -> report

Pure and quick, no torch: it runs at planning time, on every rank.

- `prompt` (a string or a list of strings) or `prompt_file` (replaces it):
  a text file holds one prompt per line (blank lines skipped); a `.csv` file
  has a header row with a `prompt` column, and every other column is a
  per-row config value (`CSV_PARAMS`), an empty cell meaning "not set here".
- Every prompt that uses template syntax is expanded with the combinatorial
  generator of the `dynamicprompts` library: `a {red|blue} car` is two rows,
  `a __colors__ car` one row per line of `colors.txt` in the `wildcards` dir.
  dynamicprompts is imported only when some prompt holds `{` or a `__name__`.

Expansion order is defined, so every rank plans the same rows: prompts in
their order (list position, file line, CSV row); a template's expansions in
the combinatorial generator's order, the leftmost choice varying slowest
(`{a|b} {x|y}` -> a x, a y, b x, b y); a wildcard's values in file order
(duplicates dropped), files matched by a glob in sorted name order; the random
forms (`{~a|b}`, `__~name__`) drawn from a generator seeded by the template's
text, so they pick the same on every run.

Prompt files are read by prompt_files.py, templates expanded by templates.py
with the wildcard folders of wildcards.py. Errors raise `PlanError` with one
line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sweeper.planning import prompt_files, templates
from sweeper.errors import invalid, show

DEFAULT_LIMIT = 100_000  # the default max_images; plan.py passes its budget


@dataclass(frozen=True)
class PromptRow:
    """One prompt to render, with the config values its row sets."""

    prompt: str
    # The dynamicprompts template this prompt came from; None when the prompt had no template syntax.
    template: str | None = None
    # Per-row config values (from a CSV row), e.g. {"seed": 3, "guidance": 7.5}; empty for plain
    # prompts. A plain dict of its own (JSON-ready), in the CSV's column order.
    params: Mapping[str, Any] = field(default_factory=dict)
    # Position (0-based) of the prompt it came from: in the `prompt` list, or
    # among the prompt file's prompts (non-blank lines / CSV data rows).
    # Rows expanded from one template share it (to zip per-prompt lists).
    source: int = 0

    def __hash__(self) -> int:
        return hash((self.prompt, self.template, tuple(self.params.items()), self.source))


def prompt_rows(c: Mapping[str, Any], limit: int = DEFAULT_LIMIT) -> tuple[list[PromptRow], str | None]:
    """Rows, and the prompt_file label (str(prompt_file) or None).

    Templates may expand to `limit` rows in all (with the rows before them);
    one asking for more is refused, naming the template.
    """
    prompt_file = c.get("prompt_file")
    if prompt_file is not None:
        label = str(prompt_file)
        path = Path(label).expanduser()
        if not path.is_file():
            raise invalid("prompt_file", prompt_file, "no such file")
        if path.suffix.lower() == ".csv":
            sources = prompt_files.read_csv(path, prompt_file, limit)
        else:
            sources = prompt_files.read_text(path, prompt_file, limit)
    else:
        label = None
        value = c.get("prompt")
        prompts = [value] if isinstance(value, str) else value
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise invalid("prompt", value, "must be a string or a list of strings")
        if not prompts:
            raise invalid("prompt", value, "needs at least one prompt")
        for prompt in prompts:
            if len(prompt) > templates.MAX_PROMPT_CHARS:
                raise invalid("prompt", prompt[:80] + "...", f"{len(prompt)} characters long, over the limit of {templates.MAX_PROMPT_CHARS} for a prompt")
        sources = [(p, {}, None) for p in prompts]

    rows: list[PromptRow] = []
    # A wildcards dir is checked whenever it is set; dynamicprompts loads only for a template.
    expander = templates.Expander(c["wildcards"]) if c.get("wildcards") is not None else None
    for index, (prompt, params, where) in enumerate(sources):
        if not templates.is_template(prompt):
            rows.append(PromptRow(prompt, None, dict(params), index))
            continue
        if expander is None:
            expander = templates.Expander(c.get("wildcards"))
        if where is None:
            fail = lambda why, p=prompt: invalid("prompt", p, why)  # noqa: E731
        else:
            fail = lambda why, p=prompt, w=where: invalid("prompt_file", prompt_file, f"{w}, prompt {show(p)}: {why}")  # noqa: E731
        expanded = expander.expand(prompt, max(limit - len(rows), 0), limit, fail)
        if expanded == [prompt]:
            rows.append(PromptRow(prompt, None, dict(params), index))
        else:
            rows.extend(PromptRow(p, prompt, dict(params), index) for p in expanded)
    return rows, label
