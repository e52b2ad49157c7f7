"""Hydra's own launcher test suites, run on our `accelerate` launcher (any task function)."""

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import _UNSPECIFIED_, VersionBase
from pytest import fixture, mark

from hydra_plugins.sweeper_plugins.accelerate_launcher import AccelerateLauncher


@fixture(autouse=True)
def fresh_version_base():
    """The suites expect Hydra's defaults of a fresh process (no version_base given)."""
    VersionBase.instance().version_base = _UNSPECIFIED_


def test_discovery() -> None:
    assert AccelerateLauncher.__name__ in [plugin.__name__ for plugin in Plugins.instance().discover(Launcher)]


@mark.parametrize("launcher_name, overrides", [("accelerate", [])])
class TestAccelerateLauncher(LauncherTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/job_logging=hydra_debug", "hydra/job_logging=disabled", "hydra/launcher=accelerate"])],
)
class TestAccelerateLauncherIntegration(IntegrationTestSuite):
    pass
