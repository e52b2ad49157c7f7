"""Every shipped config option composes with Hydra and plans; every scheduler is a real diffusers one."""

from __future__ import annotations

import copy
import functools
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sweeper.app import config_dir
from sweeper.errors import PlanError
from sweeper.planning import schedulers
from sweeper.planning.plan import Job, plan
from sweeper.rendering import families
from sweeper.rendering.tiny import tiny_models

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def load_yaml(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)


def compose_config(*overrides: str, hydra: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@functools.lru_cache(maxsize=None)
def _job_config(overrides: tuple[str, ...]) -> dict:
    return OmegaConf.to_container(compose_config(*overrides), resolve=True)


def job_config(*overrides: str) -> dict:
    """The resolved config of one job (composing is slow: each command is composed once)."""
    return copy.deepcopy(_job_config(overrides))


def sweep_job_configs(experiment: str) -> list[tuple[tuple[str, ...], dict]]:
    """Every job of an experiment's sweep, composed as our sweeper composes it
    (sweeper.planning.hydra_jobs.JobComposer: what composing each job gives, much faster)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweeper.planning.hydra_jobs import JobComposer

    job_overrides = experiment_jobs(experiment)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
        composer = JobComposer(loader, master)
        return [(o, composer.task_container([f"experiment={experiment}", *o])) for o in job_overrides]


@functools.lru_cache(maxsize=None)
def experiment_jobs(experiment: str) -> tuple[tuple[str, ...], ...]:
    """The overrides of every job of an experiment's sweep (hydra.sweeper.params and .zip), as our sweeper expands them."""
    from hydra_plugins.sweeper_plugins.planning_sweeper import sweep_axes, zipped_jobs

    cfg = compose_config(f"experiment={experiment}", hydra=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=True)
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    return tuple(tuple(job) for job in zipped_jobs(sweep_axes(parsed), cfg.hydra.sweeper.zip or []))


# The A1111 name of every sampler the design lists, as the PNG `Sampler:` field shows it.
A1111_LABELS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_sde_karras": "DPM++ SDE Karras",
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "heun": "Heun",
    "unipc": "UniPC",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpm2": "DPM2",
    "lcm": "LCM",
    "tcd": "TCD",
    "deis": "DEIS",
    "flow_euler": "Euler",
    "flow_unipc": "UniPC",
    "flow_dpmpp_2m": "DPM++ 2M",
}


def test_the_config_groups_hold_the_documented_options():
    assert {"sd15", "sdxl", "tiny", "tiny-sd"} <= set(options("model"))  # and each family's presets (tests/test_family_*.py)
    assert options("refiner") == ["none", "sdxl", "tiny"]
    assert SCHEDULERS == sorted(A1111_LABELS)
    assert "tiny_guidance" in options("experiment")


def test_the_default_config_is_sdxl_euler_without_refiner():
    (spec,) = plan([Job(0, job_config())])
    assert (spec.model, spec.model_id, spec.family) == ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl")
    assert (spec.width, spec.height, spec.steps, spec.guidance) == (1024, 1024, 30, 5.0)
    assert (spec.scheduler, spec.refiner) == ("euler", "none")


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_and_plans(model):
    expected = load_yaml("model", model)
    (spec,) = plan([Job(0, job_config(f"model={model}"))])
    assert spec.model == model == expected["model"]["name"]
    assert spec.model_id == expected["model"]["id"]
    assert spec.family == expected["model"]["family"]
    assert (spec.width, spec.height, spec.steps) == (expected["width"], expected["height"], expected["steps"])
    assert spec.guidance == float(expected["guidance"])
    assert spec.width % 8 == 0 and spec.height % 8 == 0


@pytest.mark.parametrize("refiner", options("refiner"))
@pytest.mark.parametrize("model", ["tiny", "sdxl"])
def test_every_refiner_composes_and_plans_on_an_sdxl_base(model, refiner):
    expected = load_yaml("refiner", refiner)
    (spec,) = plan([Job(0, job_config(f"model={model}", f"refiner={refiner}"))])
    assert spec.refiner == refiner
    if refiner == "none":
        assert (spec.refiner_id, spec.refiner_split, spec.refiner_mode) == (None, None, None)
    else:
        assert spec.refiner_id == expected["id"]
        assert spec.refiner_split == expected["split"] and 0 < spec.refiner_split < 1
        assert spec.refiner_mode == expected["mode"]
    # Every mode and another split plan too.
    if refiner != "none" and model == "tiny":
        for mode in ("ensemble", "img2img"):
            (other,) = plan([Job(0, job_config(f"model={model}", f"refiner={refiner}", f"refiner.mode={mode}", "refiner.split=0.6"))])
            assert (other.refiner_mode, other.refiner_split) == (mode, 0.6)


@pytest.mark.parametrize("refiner", [r for r in options("refiner") if r != "none"])
@pytest.mark.parametrize("model", ["tiny-sd", "sd15"])
def test_a_refiner_on_an_sd15_base_is_refused(model, refiner):
    with pytest.raises(PlanError, match=f"refiner={refiner}"):
        plan([Job(0, job_config(f"model={model}", f"refiner={refiner}"))])


SCHEDULERS = [name for name in options("scheduler") if name != "auto"]


def tiny_model_for(scheduler: str) -> str:
    """A tiny model preset whose family takes schedulers of this one's kind (flow matching or not)."""
    wanted = schedulers.kind(schedulers.config(scheduler))
    tiny = [m for m in options("model") if load_yaml("model", m)["model"]["id"] in tiny_models()]
    return next(m for m in sorted(tiny, key=lambda m: m != "tiny") if families.get(load_yaml("model", m)["model"]["family"]).schedulers == wanted)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_composes_and_plans(scheduler):
    expected = load_yaml("scheduler", scheduler)
    (spec,) = plan([Job(0, job_config(f"model={tiny_model_for(scheduler)}", f"scheduler={scheduler}"))])
    assert spec.scheduler == scheduler == expected["name"]
    assert spec.scheduler_class == expected["class_name"]
    assert spec.scheduler_label == A1111_LABELS[scheduler] == expected["label"]


@pytest.mark.parametrize("model", options("model"))
def test_scheduler_auto_is_the_family_own_and_others_of_its_kind_only(model):
    family = families.get(load_yaml("model", model)["model"]["family"])
    (spec,) = plan([Job(0, job_config(f"model={model}"))])
    own = load_yaml("scheduler", family.default_scheduler)
    assert (spec.scheduler, spec.scheduler_class, spec.scheduler_label) == (own["name"], own["class_name"], own["label"])
    other = next(name for name in SCHEDULERS if schedulers.kind(schedulers.config(name)) != family.schedulers)
    with pytest.raises(PlanError) as error:
        plan([Job(0, job_config(f"model={model}", f"scheduler={other}"))])
    assert "\n" not in str(error.value) and f"invalid scheduler={other!r}: {family.title} models take {family.schedulers} schedulers: auto, " in str(error.value)


def test_every_scheduler_makes_a_different_image():
    ids = {plan([Job(0, job_config(f"model={tiny_model_for(s)}", f"scheduler={s}"))])[0].image_id for s in SCHEDULERS}
    assert len(ids) == len(SCHEDULERS)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_its_sweep_plans(experiment):
    job_overrides = experiment_jobs(experiment)
    assert job_overrides
    jobs = [Job(n, config, o) for n, (o, config) in enumerate(sweep_job_configs(experiment))]
    assert len(jobs) == len(job_overrides)
    # The fast path gives exactly what composing a job with Hydra gives.
    assert jobs[-1].config == job_config(f"experiment={experiment}", *job_overrides[-1])
    specs = plan(jobs)
    assert len(specs) >= len(jobs)
    assert len({s.image_id for s in specs}) == len(specs)


def test_the_tiny_guidance_experiment_is_3_guidances_x_4_seeds_x_2_prompts():
    cfg = compose_config("experiment=tiny_guidance", hydra=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    job_overrides = experiment_jobs("tiny_guidance")
    assert len(job_overrides) == 12
    jobs = [Job(n, config, o) for n, (o, config) in enumerate(sweep_job_configs("tiny_guidance"))]
    specs = plan(jobs)
    assert len(specs) == 3 * 4 * 2
    assert {s.guidance for s in specs} == {3.0, 5.0, 7.5}
    assert {s.seed for s in specs} == {0, 1, 2, 3}
    assert {s.model for s in specs} == {"tiny"}
    assert {s.prompt for s in specs} == {"a red bicycle leaning on a wall", "a lighthouse at dusk, oil painting"}
    assert {s.overrides for s in specs} == {" ".join(o) for o in job_overrides}


# --- the scheduler classes, checked against diffusers ---------------------------------------------

# The scheduler config the SDXL base checkpoint ships (scheduler/scheduler_config.json).
SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


@pytest.fixture(scope="module")
def diffusers():
    import diffusers

    return diffusers


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS if schedulers.kind(schedulers.config(s)) == families.DISCRETE])
def test_every_scheduler_class_exists_and_takes_its_kwargs(diffusers, scheduler):
    config = load_yaml("scheduler", scheduler)
    cls = getattr(diffusers, config["class_name"])
    assert isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)
    kwargs = config.get("kwargs") or {}
    accepted = inspect.signature(cls.__init__).parameters
    for key in kwargs:
        assert key in accepted, f"{config['class_name']} has no init argument {key}"
    for base_config in (diffusers.EulerDiscreteScheduler().config, diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG).config):
        instance = cls.from_config(base_config, **kwargs)
        assert type(instance) is cls
        for key, value in kwargs.items():
            assert instance.config[key] == value
        # Tests and demos render with 2-4 steps: the schedule must be buildable there.
        for steps in (2, 4, 30):
            instance.set_timesteps(steps)
            assert len(instance.timesteps) >= steps


def test_karras_options_really_switch_karras_sigmas_on(diffusers):
    for name in ("dpmpp_2m_karras", "dpmpp_sde_karras"):
        assert load_yaml("scheduler", name)["kwargs"]["use_karras_sigmas"] is True
    plain = load_yaml("scheduler", "dpmpp_2m")
    assert not (plain.get("kwargs") or {}).get("use_karras_sigmas", False)
    assert load_yaml("scheduler", "dpmpp_2m")["class_name"] == load_yaml("scheduler", "dpmpp_2m_karras")["class_name"]


@pytest.mark.parametrize("group, value", [("model", "nope"), ("scheduler", "euler_b"), ("refiner", "big"), ("experiment", "nope")])
def test_an_unknown_option_names_the_group_the_value_and_every_option(group, value):
    from hydra.errors import MissingConfigException

    from sweeper.app import _missing_option

    with pytest.raises(MissingConfigException) as error:
        compose_config(f"{group}={value}")
    message = _missing_option(error.value)
    assert message == f"invalid {group}={value}: no such option; allowed: {', '.join(options(group))}"
