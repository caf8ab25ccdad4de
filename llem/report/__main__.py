"""`python -m llem.report SWEEP_DIR [SWEEP_DIR ...]`: write report.md, report.html and plots.

Exit status: 0 on success, 2 when an argument is not a campaign dir or names an
unknown column, so scripts can tell a usage mistake from a crash.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from llem.report.collect import NotACampaign, is_campaign
from llem.report.target import TARGETS, BadTarget, parse_targets
from llem.report.carbon import BadFactor, Factors
from llem.report.stats import DEFAULT_BOOTSTRAP_MIN_N, DEFAULT_CV_THRESHOLD, DEFAULT_SEED, UnknownColumn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llem.report",
        description="Summarise one or more llem campaign sweep dirs into report.md and report.html with plots. "
        "Also refreshes summary.csv and summary.parquet in each sweep dir.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR", help="campaign sweep dir(s)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default: the sweep dir; ./llem-report for several)"
    )
    parser.add_argument(
        "--group-by", nargs="+", action="extend", default=[], metavar="KEY",
        help="keys to group statistics by, e.g. backend fp_precision model_reused (default: the campaign's "
        "group_by, else one group per configuration, named by its swept keys)",
    )  # fmt: skip
    parser.add_argument(
        "--cv-threshold", type=float, default=DEFAULT_CV_THRESHOLD,
        help=f"flag groups whose coefficient of variation exceeds this (default {DEFAULT_CV_THRESHOLD})",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED,
        help=f"bootstrap seed, used only for groups of {DEFAULT_BOOTSTRAP_MIN_N} or more values; smaller groups "
        "get a Student-t interval, which needs no seed (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--slo", action="append", default=[], metavar="NAME=VALUE",
        help="a latency target, e.g. ttft_p99_ms=200 or tpot_p99_ms=50 (repeatable): name the lowest-energy "
        "configuration that meets every target (names: " + ", ".join(TARGETS) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--carbon-intensity", type=float, default=None, metavar="G_PER_KWH",
        help="grid carbon intensity in gCO2e/kWh, for emissions per 1,000 tokens and requests (no default)",
    )  # fmt: skip
    parser.add_argument(
        "--pue", type=float, default=None, help="facility power usage effectiveness (≥ 1) applied to device energy"
    )
    parser.add_argument(
        "--price-per-kwh", type=float, default=None, metavar="PRICE", help="electricity price per kWh (no default)"
    )
    return parser


def _error(message: str) -> int:
    print(f"llem.report: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for sweep_dir in args.sweep_dirs:
        if not is_campaign(sweep_dir):
            return _error(
                f"{sweep_dir} is not a campaign dir (no .state/campaign_manifest.json and no */result.json under it)"
            )
    if args.cv_threshold <= 0:
        return _error("--cv-threshold must be positive")
    try:
        targets = parse_targets(args.slo)
        factors = Factors.from_values(args.carbon_intensity, args.pue, args.price_per_kwh)
    except (BadTarget, BadFactor) as error:
        return _error(str(error))
    from llem.report.render import write_report  # matplotlib only once arguments are known to be good

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            files = write_report(
                args.sweep_dirs, args.out, group_by=args.group_by, cv_threshold=args.cv_threshold, seed=args.seed,
                targets=targets, factors=factors,
            )
        except (NotACampaign, UnknownColumn) as error:
            return _error(str(error))
    for warning in caught:
        print(f"llem.report: warning: {warning.message}", file=sys.stderr)
    for csv_path, parquet_path in files.summaries:
        print(f"llem.report: summary written to {csv_path} and {parquet_path}")
    for line in files.answers:
        print(f"llem.report: {line}")
    print(f"llem.report: report written to {files.markdown} and {files.html}")
    out = files.markdown.parent
    print(f"llem.report: {len(files.plots)} plots under {out / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
