"""Templates: a prompt in dynamicprompts syntax -> every prompt it expands to.

`a {red|blue} car` is two prompts, `a __colors__ car` one per line of
`colors.txt` in the wildcards dir (wildcards.py), expanded with the
combinatorial generator of the `dynamicprompts` library, which is imported
only when some prompt is a template. Expansion is bounded in time, prompts
and characters: a few variables that multiply ask for more than any machine has.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sweeper.errors import invalid, one_line
from sweeper.planning.wildcards import MissingWildcard, WildcardLoop, manager_class, read_wildcards, wildcard_files

# What makes a prompt a template: a `{` (variants, ${variables}, %{wraps}) or a
# `__name__` wildcard. Anything else is taken as it is, without dynamicprompts.
_WILDCARD_HINT = re.compile(r"__[^_].*?__", re.S)
_CACHE_ENTRIES = 256


def is_template(prompt: str) -> bool:
    return "{" in prompt or ("__" in prompt and _WILDCARD_HINT.search(prompt) is not None)


# (template, wildcards dir, fingerprint of its files) -> every prompt the template expands to.
# Planning composes one config per job, and a sweep plans every job with the same
# templates: parsing one costs milliseconds, a look-up nothing.
_EXPANSIONS: dict[tuple[str, str | None, tuple], tuple[str, ...]] = {}


# Bounds on expanding one template: a few hundred characters of variables that
# double each other ask for more prompts, time and memory than any machine has.
MAX_PROMPT_CHARS = 20_000  # one prompt or template (CLIP reads 77 tokens of it)
MAX_EXPANSION_CHARS = 50_000_000  # all the prompts of one template
EXPANSION_SECONDS = 1.0  # to parse and make the first prompt ...
SECONDS_PER_PROMPT = 0.002  # ... and then per prompt made (a real template needs ~40 us)
# All the templates of one prompt list or file together (300 templates of 0.3 s each would
# take 100 s, on every rank and re-run): a start, a little per template, the same per prompt.
ALL_TEMPLATES_SECONDS = 2.0
SECONDS_PER_TEMPLATE = 0.05  # a real template parses in ~10 ms


class _OverBudget(BaseException):  # not Exception: a library's `except Exception` must not swallow it
    pass


class _Budget:
    """Stops a template's expansion that takes too long or makes too much text.

    A watchdog thread raises `_OverBudget` in the expanding thread once the
    time is up (CPython's PyThreadState_SetAsyncExc, checked between bytecodes),
    so a generator that never yields is stopped as surely as a slow one, at no
    cost to a template that expands in time.
    """

    def __init__(self, allowance: float) -> None:
        self.start = time.perf_counter()
        self.allowance = allowance  # seconds, besides SECONDS_PER_PROMPT per prompt made
        self.count = 0
        self.chars = 0
        self.reason = ""
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._active = False

    def __enter__(self) -> _Budget:
        self._target = threading.get_ident()
        self._active = True
        self._done.clear()
        self._watchdog = threading.Thread(target=self._watch, name="sweeper-template-budget", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        with self._lock:
            self._active = False
        self._done.set()
        self._watchdog.join()
        if self.reason == "time" and exc_type is None:  # fired as the expansion ended: take it back
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), None)

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            if time.perf_counter() > self.start + self.allowance + SECONDS_PER_PROMPT * self.count:
                with self._lock:
                    if self._active:
                        self.reason = "time"
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(_OverBudget))
                return

    def produced(self, prompt: str) -> None:
        self.count += 1
        self.chars += len(prompt)
        if len(prompt) > MAX_PROMPT_CHARS:
            self.reason = "prompt"
            raise _OverBudget()
        if self.chars > MAX_EXPANSION_CHARS:
            self.reason = "chars"
            raise _OverBudget()

    def why(self) -> str:
        if self.reason == "prompt":
            return f"the template makes a prompt of more than {MAX_PROMPT_CHARS} characters (variables or wildcards that multiply); narrow it"
        if self.reason == "chars":
            return f"the template makes more than {MAX_EXPANSION_CHARS} characters of prompts; narrow it"
        if self.allowance < EXPANSION_SECONDS:
            return (
                f"the templates take too long to expand in all (over {ALL_TEMPLATES_SECONDS:g} s and {SECONDS_PER_TEMPLATE:g} s "
                "per template): variables or wildcards that include each other multiply; narrow them"
            )
        return (
            f"the template takes too long to expand ({self.count} prompts in {time.perf_counter() - self.start:.1f} s): "
            "variables or wildcards that include each other multiply; narrow it"
        )


class Expander:
    """Expands templates for one prompt_rows call (one wildcards dir)."""

    def __init__(self, wildcards: Any) -> None:
        if wildcards is None:
            self.dir = None
        else:
            if not isinstance(wildcards, (str, os.PathLike)) or not str(wildcards):
                raise invalid("wildcards", wildcards, "must be null or the path of a folder of wildcard files (name.txt, one value per line)")
            self.dir = Path(wildcards).expanduser()
            if not self.dir.is_dir():
                raise invalid("wildcards", wildcards, "no such directory (a folder of wildcard files: name.txt, one value per line)")
        self.shown = None if wildcards is None else str(wildcards)
        self._spent = 0.0  # seconds spent expanding, and what that allows: ALL_TEMPLATES_SECONDS and more
        self._allowed = ALL_TEMPLATES_SECONDS
        self._files: list[tuple[str, Path, int, int]] | None = None
        self._fingerprint: tuple | None = None
        self._manager = None

    def fingerprint(self) -> tuple:
        """The wildcard files' names, sizes and times: an edited file is read again."""
        if self._fingerprint is None:
            self._fingerprint = tuple((name, size, mtime) for name, _, size, mtime in self.files())
        return self._fingerprint

    def files(self) -> list[tuple[str, Path, int, int]]:
        """(name, path, size, mtime) of the folder's wildcard files, found without leaving it.

        A received folder is data: a link that leads outside it, or back into a
        folder already walked (`a -> .`), is refused, and so are too many or too large files.
        """
        if self._files is None:
            self._files = [] if self.dir is None else wildcard_files(self.dir, self._fail_dir)
        return self._files

    def _fail_dir(self, why: str) -> Exception:
        return invalid("wildcards", self.shown, why)

    def expand(self, template: str, cap: int, limit: int, fail: Callable[[str], Exception]) -> list[str]:
        """The template's prompts, at most `cap` of them, in the generator's order (duplicates dropped)."""
        uses_wildcards = "__" in template
        key = (template, str(self.dir.resolve()) if uses_wildcards and self.dir else None, self.fingerprint() if uses_wildcards else ())
        prompts = _EXPANSIONS.get(key)
        if prompts is None:
            tic = time.perf_counter()
            prompts = self._generate(template, cap + 1, fail)
            self._spent += time.perf_counter() - tic
            self._allowed += SECONDS_PER_PROMPT * len(prompts)
            if len(prompts) <= cap:  # complete: keep it
                if len(_EXPANSIONS) >= _CACHE_ENTRIES:
                    _EXPANSIONS.clear()
                _EXPANSIONS[key] = prompts
        if len(prompts) > cap:
            if cap == limit:
                raise fail(f"the template expands to more than {limit} prompts, over the max_images budget; raise max_images or narrow the template")
            raise fail(
                f"the template expands to more than {cap} prompts, which with the {_count(limit - cap)} before it "
                f"is over the max_images budget of {limit}; raise max_images or narrow the templates"
            )
        if not prompts:
            raise fail("the template expands to no prompt")
        return list(prompts)

    def _generate(self, template: str, count: int, fail: Callable[[str], Exception]) -> tuple[str, ...]:
        from itertools import islice
        from random import Random

        from dynamicprompts.commands import SequenceCommand
        from dynamicprompts.enums import SamplingMethod
        from dynamicprompts.parser.parse import parse
        from dynamicprompts.sampling_context import SamplingContext
        from pyparsing import ParseBaseException

        if len(template) > MAX_PROMPT_CHARS:
            raise fail(f"the template is {len(template)} characters long, over the limit of {MAX_PROMPT_CHARS}")
        self._allowed += SECONDS_PER_TEMPLATE
        budget = _Budget(min(EXPANSION_SECONDS, self._allowed - self._spent))
        try:
            with budget:
                command = parse(template)
        except ParseBaseException as exc:
            raise fail(f"syntax error in the template: {one_line(exc.msg)} at char {exc.loc}") from None
        except _OverBudget:
            raise fail(budget.why()) from None
        # In a sequence a random or cyclical part ({~a|b}, __~name__) gives one value per
        # combination; at the top it would go on for ever.
        command = SequenceCommand(tokens=[command])
        seed = int.from_bytes(hashlib.sha256(template.encode("utf-8")).digest()[:8], "big")
        context = SamplingContext(
            default_sampling_method=SamplingMethod.COMBINATORIAL,
            wildcard_manager=self.manager(),
            rand=Random(seed),
        )
        prompts: dict[str, None] = {}
        try:
            # Duplicates are dropped as they come; a generator that only repeats itself
            # (as a few do) still stops, at `guard` results.
            guard = 4 * count + 1000
            produced = 0
            with budget:
                for result in islice(context.sample_prompts(command), guard):
                    produced += 1
                    prompt = str(result).strip()
                    budget.produced(prompt)
                    prompts[prompt] = None
                    if len(prompts) >= count:
                        break
                else:
                    if produced == guard:
                        raise fail(f"the template gives the same {len(prompts)} prompts over and over")
        except _OverBudget:
            raise fail(budget.why()) from None
        except MissingWildcard as exc:
            raise fail(self._missing(exc.name)) from None
        except WildcardLoop as exc:
            chain = " -> ".join(f"__{name}__" for name in exc.chain)
            raise fail(f"a wildcard includes itself ({chain}), so the template never ends") from None
        except RecursionError:
            raise fail("the template refers to itself (a wildcard or variable that includes itself)") from None
        except Exception as exc:  # a library error: still one line, naming the template
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise fail(f"cannot expand the template: {one_line(reason)}") from None
        return tuple(prompts)

    def _missing(self, name: str) -> str:
        wildcard = f"__{name}__"
        if self.dir is None:
            return f"wildcard {wildcard} needs a wildcards dir, but wildcards is null; set wildcards=DIR, a folder holding {name}.txt"
        return f"wildcard {wildcard} not found in the wildcards dir {self.shown!r} (no {name}.txt, or it is empty)"

    def manager(self):
        if self._manager is None:
            self._manager = manager_class()({} if self.dir is None else read_wildcards(self.dir, self.files(), self._fail_dir))
        return self._manager


def _count(n: int) -> str:
    return f"{n} prompt" if n == 1 else f"{n} prompts"
