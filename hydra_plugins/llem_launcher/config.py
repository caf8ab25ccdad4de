"""Configs of the llem launchers (`hydra/launcher=llem_local`, `hydra/launcher=llem_container`)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from llem.launch.options import ContainerOptions, LocalOptions


@dataclass
class LlemLocalLauncherConf(LocalOptions):
    _target_: str = "hydra_plugins.llem_launcher.llem_local_launcher.LlemLocalLauncher"


@dataclass
class LlemContainerLauncherConf(ContainerOptions):
    _target_: str = "hydra_plugins.llem_launcher.llem_container_launcher.LlemContainerLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="llem_local", node=LlemLocalLauncherConf, provider="llem")
ConfigStore.instance().store(
    group="hydra/launcher", name="llem_container", node=LlemContainerLauncherConf, provider="llem"
)
