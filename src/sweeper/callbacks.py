"""Hydra callback: names the output dir, checks single runs, merges the manifest, writes the report.

Registered in conf/config.yaml (`hydra.callbacks.sweeper`), so it works with
any launcher: basic, joblib, submitit, ray, or ours. Importing it also makes
Hydra write its job files without following links (see `_save_config`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Sequence

import hydra.core.utils as hydra_utils
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweeper.errors import UnsafePath
from sweeper.storing.files import check_not_link, folder, write_atomic
from sweeper.planning.spec import EXECUTION_FIELDS

# Overrides that change neither which images a sweep holds nor their pixels:
# left out of the default name, so adding them still resumes the same dir.
# (hydra.* too: the launcher, its process count, logging.)
_NOT_IN_NAME = ("dry_run", "score", "scorer", *EXECUTION_FIELDS)
_MAX_KEYS = 48  # characters of key names in a default dir name


def default_name(task_overrides: Sequence[str]) -> str:
    """A dir name made from the command's overrides: the same command, the same dir.

    The keys the command sets, sorted, and a short hash of the fixed values:
    `guidance_model_seed-1f3a9c` for `-m model=tiny guidance=5,7.5 seed=0,1`,
    whatever the order of the overrides. A swept key's values are not in the
    hash, so adding values to a sweep resumes its dir and renders only the new
    images; no value is in the name itself (prompts and paths make poor names).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys, fixed = set(), set()
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.get_key_element().lstrip("+~")
        if key.split(".")[0] in _NOT_IN_NAME or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        keys.add(key)
        if not override.is_sweep_override():
            fixed.add(f"{key}={override.get_value_element_as_str()}")
    if not keys:
        return "default"
    digest = hashlib.sha1("\n".join([*sorted(fixed), "--", *sorted(keys)]).encode("utf-8")).hexdigest()[:6]
    text = re.sub(r"[^A-Za-z0-9._]+", "-", "_".join(sorted(keys)))[:_MAX_KEYS].strip(".-_")
    return f"{text}-{digest}"


def _name_output_dir(config: DictConfig, key: str) -> None:
    """Fill `${name}` in hydra.<key>.dir when the user gave no name (key: run or sweep)."""
    raw_dir = OmegaConf.to_container(config.hydra[key], resolve=False)["dir"]
    name = config.get("name")
    if name is not None and (not isinstance(name, str) or name in (".", "..") or not re.fullmatch(r"[^/\\\x00]+", name)):
        from sweeper.app import fail

        fail(f"invalid name={name!r}: must be one directory name, without / or ..")
    if name is not None or "${name}" not in str(raw_dir):
        return
    task_overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    _set_output_dir(config, key, str(raw_dir).replace("${name}", default_name(task_overrides)))


def _set_output_dir(config: DictConfig, key: str, value: str) -> None:
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra[key].dir = value
        # Jobs are composed again from these overrides: they must land in the same dir.
        config.hydra.overrides.hydra.append(f"hydra.{key}.dir='{value}'")


def _agree_among_ranks(config: DictConfig, key: str) -> None:
    """Under several ranks, rank 0's output dir and seed nonce for all.

    Each rank would stamp its own ${now:...} (hydra #2070) and draw its own seeds for -1.
    """
    from sweeper.launching import distributed
    from sweeper.app import fail
    from sweeper.errors import RankLost
    from sweeper.rendering.runtime import this_process

    if distributed.launched():
        runtime = this_process()  # the one the sweeper plugin and the jobs plan with next
        try:
            out_dir, runtime.seed_nonce = distributed.broadcast((str(config.hydra[key].dir), runtime.seed_nonce))
        except RankLost as error:
            fail(str(error), code=1)  # not raised: Hydra turns a callback's exception into a warning
        _set_output_dir(config, key, out_dir)


class SweeperCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from sweeper.launching import distributed, run
        from sweeper.app import fail
        from sweeper.planning.hydra_jobs import job_from_config
        from sweeper.errors import PlanError, RankLost, RanksDisagree, UnsafePath

        _name_output_dir(config, "run")
        _agree_among_ranks(config, "run")
        out_dir = Path(config.hydra.run.dir)
        try:
            prepared = run.prepare([job_from_config(config, 0, config.hydra.overrides.task)], out_dir)
            if distributed.launched():
                distributed.agree_on_plan(prepared.specs)
        except (PlanError, UnsafePath, RanksDisagree, RankLost) as error:
            fail(str(error))  # before Hydra makes the run dir (or writes into one): no files left
        if distributed.rank() == 0:
            run.announce(prepared, out_dir)
        if prepared.dry_run:
            raise SystemExit(0)  # before Hydra makes the run dir: a dry run leaves no files

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _name_output_dir(config, "sweep")
        _agree_among_ranks(config, "sweep")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sweeper.launching import distributed
        from sweeper.app import finish

        sweep_dir = Path(config.hydra.sweep.dir)
        submitted_only = config.hydra.launcher.get("wait", True) is False  # a SLURM array still rendering
        if sweep_dir.is_dir() and distributed.rank() == 0 and not config.get("dry_run") and not submitted_only:  # a dry run writes nothing
            finish(sweep_dir)


# Hydra writes `.hydra/*.yaml` and the job log into each job's dir by path, after
# on_run_start has checked the dir for links, and follows links: a link swapped in
# between would be written through. Its two writers are replaced by ones that open
# the job dir and `.hydra` without following links. This module is imported
# wherever Hydra runs a job of ours (its callbacks are built, or unpickled by
# joblib and submitit workers, before run_job), and run_job looks both up at call time.


def _save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """Hydra's `_save_config`, written as files.write_atomic writes (a link at the file is replaced)."""
    output_dir = Path(output_dir)
    write_atomic(output_dir / filename, OmegaConf.to_yaml(cfg).encode("utf-8"), durable=False, root=output_dir.parent)


class _LogFile(logging.FileHandler):
    """The job log's logging.FileHandler, its file opened in its folder without following a link."""

    def _open(self):
        path = Path(self.baseFilename)
        append = "a" in self.mode
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        with folder(path.parent) as dir_fd:
            try:
                fd = os.open(path.name, flags, 0o666, dir_fd=dir_fd)
            except OSError as error:
                if error.errno == errno.ELOOP:
                    check_not_link(path)
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{path} is not a regular file; sweeper writes its log only into one: remove it")
        return os.fdopen(fd, "a" if append else "w", encoding=self.encoding, errors=self.errors)


_hydra_configure_log = hydra_utils.configure_log


def _configure_log(log_config: Any, verbose_config: Any = False) -> None:
    """Hydra's `configure_log`, with each logging.FileHandler opened as _LogFile opens it."""
    if log_config is not None:
        conf = OmegaConf.to_container(log_config, resolve=True)
        for handler in (conf.get("handlers") or {}).values():
            if isinstance(handler, dict) and handler.get("class") == "logging.FileHandler":
                handler["class"] = f"{__name__}._LogFile"
        log_config = OmegaConf.create(conf)
    try:
        _hydra_configure_log(log_config, verbose_config)
    except ValueError as error:  # logging.config's "Unable to configure handler": say why in one line
        if isinstance(error.__cause__, UnsafePath):
            raise error.__cause__ from None
        raise


hydra_utils._save_config = _save_config
hydra_utils.configure_log = _configure_log
