"""Config of `hydra/launcher=llem_slurm` (options documented in llem.launch.slurm.options and docs/cluster.md)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from llem.launch.slurm.options import SlurmOptions


@dataclass
class LlemSlurmLauncherConf(SlurmOptions):
    _target_: str = "hydra_plugins.llem_slurm_launcher.llem_slurm_launcher.LlemSlurmLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="llem_slurm", node=LlemSlurmLauncherConf, provider="llem")
