"""The campaign engine: plan → run → resume → repeat, driven by the llem sweeper or from Python.

    from llem.campaign import run_campaign
    outcome = run_campaign(["backend.batch_size=1,4"], sweep_dir="runs/batch")

The Hydra sweeper and launchers are thin adapters over this package.
"""

from llem.campaign.api import run_campaign
from llem.campaign.engine import (
    Campaign,
    CampaignInterrupted,
    CampaignOptions,
    CampaignOutcome,
    launch_plain,
)
from llem.campaign.planning import (
    CampaignError,
    PlannedCampaign,
    is_llem_app,
    manifest_path,
    parse_axes,
    plan_campaign,
)
from llem.campaign.session import JobSession
from llem.campaign.state import CampaignState, recorded_shuffle_seed

__all__ = [
    "Campaign",
    "CampaignError",
    "CampaignInterrupted",
    "CampaignOptions",
    "CampaignOutcome",
    "CampaignState",
    "JobSession",
    "PlannedCampaign",
    "is_llem_app",
    "launch_plain",
    "manifest_path",
    "parse_axes",
    "plan_campaign",
    "recorded_shuffle_seed",
    "run_campaign",
]
