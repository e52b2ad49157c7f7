"""The command line: `python -m sweeper [-m] key=value ...`.

    python -m sweeper model=tiny                        # one run into outputs/runs/<name>/
    python -m sweeper -m model=tiny guidance=5,7.5,10   # a sweep into outputs/sweeps/<name>/
    python -m sweeper --help                            # every key and config group

`render_job` is the plain task function; our sweeper and launcher plugins
recognise it and plan all jobs of a sweep together, other Hydra launchers
call it once per job.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig

from sweeper.configs import config_dir
from sweeper.launching import stops
from sweeper.errors import DeviceFailed, Interrupted, PlanError, RankLost, RanksDisagree, StorageError, SubmitFailed, UnsafePath


def render_job(cfg: DictConfig) -> dict[str, Any]:
    """One Hydra job: render its images into the run dir (single run) or the sweep dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sweeper.storing import commands
    from sweeper.launching import distributed, launch, run
    from sweeper.planning.hydra_jobs import job_from_config
    from sweeper.rendering.runtime import this_process

    hydra_cfg = HydraConfig.get()
    single = hydra_cfg.mode == RunMode.RUN
    out_dir = Path(hydra_cfg.runtime.output_dir if single else hydra_cfg.sweep.dir)
    job = job_from_config(cfg, 0 if single else hydra_cfg.job.num + commands.running_first_job(out_dir), hydra_cfg.overrides.task)
    runtime = this_process()  # a launcher running us job by job keeps the model loaded for the next job
    prepared = run.prepare([job], out_dir, runtime=runtime)
    if not single:  # another launcher runs us job by job; the single run announced in the callback
        run.announce(prepared, out_dir)
        if prepared.dry_run:
            return {"rendered": 0, "failed": 0}
    elif distributed.rank() == 0:
        run.write_plan(prepared, out_dir)
    summary = launch.render(prepared, out_dir, processes=1, runtime=runtime)  # several ranks only under accelerate launch
    if single and distributed.rank() == 0:
        finish(out_dir)
    return {"rendered": summary.rendered, "failed": len(summary.failed)}


def finish(out_dir: Path) -> None:
    """After the last image: one manifest, the report, and exit 1 if images failed or the report could not be built."""
    from sweeper.storing import manifest
    from sweeper import report

    table = manifest.merge(out_dir)
    no_report = ""
    try:
        if report.is_stale(out_dir):
            print(f"sweeper: report: {report.write_report(out_dir, table=table)}", file=sys.stderr, flush=True)
    except Exception as error:  # the images and the manifest are kept; the exit status says the run is not whole
        no_report = (
            f"no report: {' '.join(str(error).split())}; the images and {manifest.MANIFEST} are kept in {out_dir}; "
            f"python -m sweeper.report {out_dir} builds it"
        )
    exit_if_failed(out_dir, table, also=no_report)
    if no_report:
        fail(no_report, code=1)


def stopped(out_dir: Path, planned: int) -> NoReturn:
    """After Ctrl-C (or SIGTERM, SIGHUP): one manifest and the report of what was saved, and how to go on."""
    from sweeper.launching import distributed
    from sweeper.storing import manifest
    from sweeper import report

    if distributed.rank() == 0:
        table = manifest.merge(out_dir)
        with contextlib.suppress(Exception):  # the report of a partial sweep is a nicety
            report.write_report(out_dir, table=table)
        saved = sum(status == "ok" for status in table.column("status").to_pylist())
        how = "interrupted" if stops.name() == "Ctrl-C" else f"stopped by {stops.name()}"
        print(f"sweeper: {how}: {saved} of {planned} images saved in {out_dir}; run the same command to finish", file=sys.stderr, flush=True)
    raise SystemExit(stops.exit_code())


def exit_if_failed(out_dir: Path, table=None, also: str = "") -> None:
    """Exit 1 with a summary if images of `out_dir` failed (of `table`, if read already); their rows say why.
    `also`: what else went wrong, said on the same line."""
    from sweeper.storing import manifest

    failed = manifest.failed(out_dir, table)
    if failed:
        fail(
            f"{len(failed)} image(s) failed (first: {failed[0][1]}); their rows in {Path(out_dir) / manifest.MANIFEST} "
            "have status=error; run the same command again to retry only those" + (f"; and {also}" if also else ""),
            code=1,
        )


def main() -> None:
    """Run Hydra; a mistake the user can fix ends in one line on stderr and exit code 2."""
    asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's printer
    try:
        with stops.as_ctrl_c():
            _run(show_traceback=asked == "1")
    finally:
        if asked is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


def _run(show_traceback: bool) -> None:
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    # Decorated here, not at import: hydra.main sets Hydra's global version base,
    # which would change other apps' defaults when our plugins import this module.
    hydra_main = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(render_job)
    try:
        if {"--help", "-h"} & set(sys.argv[1:]):
            # Hydra's own --help lists every option of every Hydra group (~1.5 s); ours is quick.
            print_help([arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")])
        else:
            hydra_main()
    except (PlanError, UnsafePath, RanksDisagree) as error:
        fail(str(error))
    except (StorageError, DeviceFailed, RankLost, SubmitFailed) as error:
        fail(str(error), code=1)
    except Interrupted as stop:
        stopped(stop.out_dir, stop.planned)
    except KeyboardInterrupt:
        fail("interrupted; what was stored is kept, and the same command goes on from there", code=stops.exit_code())
    except MissingConfigException as error:
        if show_traceback:
            raise
        fail(_missing_option(error))
    except (HydraException, OmegaConfBaseException) as error:
        if show_traceback:
            raise
        from sweeper.cli_errors import explain
        from sweeper.planning.validate import known_keys

        fail(explain(str(error), getattr(error, "override", None), known_keys()) or " ".join(line.strip() for line in str(error).splitlines() if line.strip()))


def print_help(overrides: list[str]) -> None:
    """Usage, the config groups and their options, and the composed config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(config_dir())
    groups = "\n".join(
        f"  {group.name}: {', '.join(sorted(option.stem for option in group.glob('*.yaml')))}"
        for group in sorted(conf.iterdir())
        if group.is_dir()
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        config = OmegaConf.to_yaml(compose(config_name="config", overrides=overrides))
    print(
        "sweeper: Stable Diffusion prompt sweeps from Hydra configs: PNGs, a Parquet manifest, a report.\n\n"
        "    python -m sweeper model=tiny                         # one run -> outputs/runs/<name>/\n"
        "    python -m sweeper -m model=tiny guidance=5,7.5,10    # a sweep -> outputs/sweeps/<name>/\n"
        "    python -m sweeper.report outputs/sweeps/<name>       # rebuild or compare reports\n"
        "    python -m sweeper.replay IMAGE.png                   # render an image again from its metadata\n\n"
        f"Config groups (group=option):\n{groups}\n\n"
        f"Config (any key=value; each key is explained in {conf / 'config.yaml'}):\n{config}\n"
        "Hydra's own flags (--cfg job, --multirun, hydra.* keys): python -m sweeper --hydra-help"
    )


def _missing_option(error) -> str:
    missing = (error.missing_cfg_file or "").rsplit("/", 1)
    if len(missing) == 2 and error.options:
        group, value = missing
        return f"invalid {group}={value}: no such option; allowed: {', '.join(sorted(error.options))}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def fail(message: str, code: int = 2) -> NoReturn:
    """End the program with one line on stderr. SystemExit, because Hydra turns
    exceptions from callbacks into warnings and from jobs into return values."""
    print(f"sweeper: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
