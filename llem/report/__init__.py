"""Campaign results people can read: summary tables, statistics across cycles, reports with plots.

Only the light modules are imported here, so the campaign launcher can call
`write_summary` without loading matplotlib; plots and rendering live in
`llem.report.plots` and `llem.report.render` (`python -m llem.report` runs them).
"""

from __future__ import annotations

from llem.report.collect import Campaign, NotACampaign, ReportWarning, collect, is_campaign
from llem.report.stats import describe, group_stats
from llem.report.summary import read_summary, summary_frame, write_summary

__all__ = [
    "Campaign",
    "NotACampaign",
    "ReportWarning",
    "collect",
    "describe",
    "group_stats",
    "is_campaign",
    "read_summary",
    "summary_frame",
    "write_summary",
]
