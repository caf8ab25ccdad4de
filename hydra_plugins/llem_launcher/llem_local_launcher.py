"""`hydra/launcher=llem_local`: one warm local worker process per routing key (see llem.launch.hydra_launcher)."""

from llem.launch.hydra_launcher import LlemLauncher


class LlemLocalLauncher(LlemLauncher):
    kind = "local"
