"""`hydra/launcher=llem_container`: one long-lived container per routing key (per backend)."""

from hydra_plugins.llem_launcher.llem_local_launcher import LlemLocalLauncher


class LlemContainerLauncher(LlemLocalLauncher):
    kind = "container"
