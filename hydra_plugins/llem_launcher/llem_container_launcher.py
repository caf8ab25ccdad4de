"""`hydra/launcher=llem_container`: one long-lived container per routing key (see llem.launch.hydra_launcher)."""

from llem.launch.hydra_launcher import LlemContainerLauncherBase


class LlemContainerLauncher(LlemContainerLauncherBase):
    kind = "container"
