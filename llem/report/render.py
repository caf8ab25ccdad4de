"""`report.md` and a self-contained `report.html` for one or several campaigns.

Both are rendered from the same tables and plots. The HTML embeds every PNG as a
base64 data URI so the file can be mailed or archived on its own; the Markdown links
the PNGs written next to it.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from llem.atomic import atomic_write_text
from llem.report import decision_tables as decide
from llem.report import interactive
from llem.report.frontier import frontiers
from llem.report.frontier_plots import frontier_plots
from llem.report.carbon import BadFactor, Factors
from llem.report.collect import Campaign, collect
from llem.report.plots import Plot, config_label, make_plots
from llem.report.serving_plots import serving_plots
from llem.report.stats import (
    DEFAULT_BOOTSTRAP_MIN_N,
    DEFAULT_CV_THRESHOLD,
    DEFAULT_METRICS,
    DEFAULT_SEED,
    group_stats,
    resolve_group_by,
)
from llem.report.validity import badge
from llem.report.tables import Table, fmt
from llem.report.summary import campaign_group_by, param_columns, summary_frame, write_frame, write_stats

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
MAX_JOB_ROWS = 500

STAT_LABELS: dict[str, str] = {
    "energy_per_output_token_j": "Energy/token (J)",
    "throughput_tokens_per_s": "Throughput (tok/s)",
    "ttft_ms_p50": "TTFT p50 (ms)",
    "itl_ms_p50": "ITL p50 (ms)",
}


@dataclass
class CampaignReport:
    """Everything shown for one sweep dir."""

    campaign: Campaign
    frame: pd.DataFrame
    stats: pd.DataFrame
    plots: list[Plot]
    cv_threshold: float
    group_by: list[str] = field(default_factory=list)
    summary_paths: tuple[Path, Path] | None = None
    targets: dict[str, float] = field(default_factory=dict)  # `--slo`: answered per campaign
    factors: Factors = field(default_factory=Factors)  # carbon intensity, PUE, price


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    plots: list[Path]
    summaries: list[tuple[Path, Path]]
    answers: list[str] = field(default_factory=list)  # the `--slo` answer per campaign, one line each


def _spread(row: pd.Series, metric: str) -> str:
    mean, std, cv = row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_cv"]
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{fmt(mean)} (1 value)"
    cv_text = f"{cv * 100:.1f}%" if not pd.isna(cv) else "—"
    ci = f"{fmt(row[f'{metric}_ci_low'])}–{fmt(row[f'{metric}_ci_high'])}"
    label = "bootstrap CI" if row.get(f"{metric}_ci_method") == "bootstrap" else "CI"
    return f"{fmt(mean)} ± {fmt(std, 2)} (CV {cv_text}; {label} {ci})"


def _unstable_cell(row: pd.Series, metrics: Sequence[str]) -> str:
    flags = [row[f"{m}_unstable"] for m in metrics]
    noisy = [STAT_LABELS.get(m, m) for m, flag in zip(metrics, flags) if not pd.isna(flag) and bool(flag)]
    if noisy:
        return "yes: " + ", ".join(noisy)
    if all(pd.isna(flag) for flag in flags):
        return "n/a (under 2 values)"
    return "no"


def _verdict_cell(row: pd.Series) -> str:
    """The group's badge and why: its runs' verdicts, an unstable figure, energy scopes that were not pooled."""
    reasons = row.get("verdict_reasons")
    return badge(row.get("verdict")) + ("" if reasons is None or pd.isna(reasons) else f": {reasons}")


def status_table(campaign: Campaign) -> Table:
    rows = [[status, str(n)] for status, n in sorted(campaign.counts.items())]
    rows.append(["total", str(campaign.total)])
    note = None
    if campaign.manifest is None:
        note = "No campaign manifest: every readable result.json is a completed job; cycles follow start times."
    return Table("Jobs", ["status", "jobs"], rows, note)


def stats_table(report: CampaignReport) -> Table:
    """One row per group: by configuration (named by its swept values), or by the `group_by` keys."""
    stats, params = report.stats, param_columns(report.frame)
    metrics = [STAT_LABELS.get(m, m) for m in DEFAULT_METRICS]
    spread = (
        "Mean ± sample standard deviation, coefficient of variation (CV) and 95% Student-t "
        f"confidence interval (CI) of the mean; groups of {DEFAULT_BOOTSTRAP_MIN_N} or more values use a "
        f"percentile bootstrap instead (bootstrap CI). Unstable: CV above {report.cv_threshold:g}."
    )
    rows = []
    if not report.group_by:
        for _, row in stats.iterrows():
            rows.append(
                [
                    config_label(row, params),
                    str(row["cycles"]),
                    *(_spread(row, m) for m in DEFAULT_METRICS),
                    _unstable_cell(row, DEFAULT_METRICS),
                    _verdict_cell(row),
                ]
            )
        headers = ["Configuration", "Cycles", *metrics, "Unstable", "Verdict"]
        return Table("Statistics by configuration", headers, rows, f"Over cycles. {spread}")
    keys = resolve_group_by(report.group_by, report.frame.columns)
    for _, row in stats.iterrows():
        rows.append(
            [
                *(fmt(row[k]) for k in keys),
                str(row["configs"]),
                str(row["cycles"]),
                *(_spread(row, m) for m in DEFAULT_METRICS),
                _unstable_cell(row, DEFAULT_METRICS),
                _verdict_cell(row),
            ]
        )
    headers = [*keys, "Configurations", "Runs", *metrics, "Unstable", "Verdict"]
    note = f"Each group pools every run of the configurations that share its values. {spread}"
    return Table(f"Statistics by {', '.join(keys)}", headers, rows, note)


def jobs_table(frame: pd.DataFrame) -> Table:
    params = param_columns(frame)
    headers = [
        "Job", "Cycle", "Verdict", "Configuration", "Energy/token (J)", "Prefill J/token", "Decode J/token",
        "Throughput (tok/s)", "TTFT p50 (ms)", "TTFT p95 (ms)", "Queue p50 (ms)", "Prefill p50 (ms)",
        "ITL p50 (ms)", "ITL p95 (ms)", "Weights + KV peak (MiB)", "Reused", "Warnings",
    ]  # fmt: skip
    rows = []
    for _, row in frame.head(MAX_JOB_ROWS).iterrows():
        memory = row["memory_weights_kv_peak_bytes"]
        rows.append(
            [
                fmt(row["job_num"]),
                fmt(row["cycle"]),
                badge(row.get("verdict")),
                config_label(row, params),
                fmt(row["energy_per_output_token_j"]),
                fmt(row["prefill_energy_per_token_j"]),
                fmt(row["decode_energy_per_token_j"]),
                fmt(row["throughput_tokens_per_s"]),
                fmt(row["ttft_ms_p50"]),
                fmt(row["ttft_ms_p95"]),
                fmt(row["queue_ms_p50"]),
                fmt(row["prefill_ms_p50"]),
                fmt(row["itl_ms_p50"]),
                fmt(row["itl_ms_p95"]),
                "—" if pd.isna(memory) else fmt(float(memory) / 2**20),
                fmt(row["model_reused"]),
                fmt(row["warnings_count"]),
            ]
        )
    note = (
        "TTFT counts from each prompt's arrival at the start of its pass; queue = wait until the engine took the "
        "prompt up, prefill = from then to its first token. Memory: weights + KV cache in use at its peak, the "
        "figure every engine reports alike."
    )
    if len(frame) > MAX_JOB_ROWS:
        note += f" First {MAX_JOB_ROWS} of {len(frame)} jobs; all are in summary.csv."
    return Table("Completed jobs", headers, rows, note)


NOT_COMPLETED = ("failed", "interrupted", "invalid", "skipped")
MAX_REASON_CHARS = 300


def problem_jobs_table(campaign: Campaign) -> Table | None:
    """Failed, interrupted, invalid and skipped jobs with their reasons (None when every job completed)."""
    if campaign.manifest is None:
        return None
    jobs = [j for j in campaign.manifest.jobs if j.status in NOT_COMPLETED]
    if not jobs:
        return None
    rows = []
    for job in jobs[:MAX_JOB_ROWS]:
        reason = (job.error or "").strip().splitlines()[0] if (job.error or "").strip() else "no reason recorded"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        rows.append([str(job.job_num), job.status, " ".join(job.overrides) or "defaults", str(job.attempts), reason])
    note = "Full errors and tracebacks are in the campaign manifest."
    if len(jobs) > MAX_JOB_ROWS:
        note += f" First {MAX_JOB_ROWS} of {len(jobs)}."
    return Table("Jobs that did not complete", ["Job", "Status", "Overrides", "Attempts", "Reason"], rows, note)


def _campaign_tables(report: CampaignReport) -> list[Table]:
    problems = problem_jobs_table(report.campaign)
    tables = [status_table(report.campaign), stats_table(report), jobs_table(report.frame)]
    decisions = [
        decide.reasons_table(report.campaign),
        decide.frontier_table(report.frame),
        decide.targets_for(report.frame, report.targets),
        decide.carbon_table(report.frame, report.factors),
    ]
    return tables + ([problems] if problems is not None else []) + [t for t in decisions if t is not None]


def config_means(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Each configuration's mean of `metric` over its runs, by config hash (nulls ignored)."""
    if not len(frame):
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[metric], errors="coerce").astype(float).groupby(frame["config_hash"], sort=False).mean()


def _median_of_means(frame: pd.DataFrame, metric: str) -> str:
    values = config_means(frame, metric).dropna()
    return fmt(float(values.median())) if len(values) else "—"


def comparison_table(reports: Sequence[CampaignReport]) -> Table:
    headers = [
        "Campaign", "Sweep dir", "Completed / total", "Failed", "Configurations",
        *(STAT_LABELS[m] for m in DEFAULT_METRICS), "Unstable groups",
    ]  # fmt: skip
    rows = []
    for report in reports:
        c = report.campaign
        rows.append(
            [
                c.name,
                str(c.sweep_dir),
                f"{c.counts.get('completed', 0)} / {c.total}",
                str(c.counts.get("failed", 0)),
                str(report.frame["config_hash"].nunique()),
                *(_median_of_means(report.frame, m) for m in DEFAULT_METRICS),
                str(int(report.stats["unstable"].sum())) if len(report.stats) else "0",
            ]
        )
    note = "Metric columns: median over configurations of each configuration's mean over cycles."
    return Table("Campaigns compared", headers, rows, note)


def shared_configs_table(reports: Sequence[CampaignReport]) -> Table | None:
    """Configurations (same config hash) measured in more than one campaign, side by side."""
    seen: dict[str, list[int]] = {}
    for i, report in enumerate(reports):
        for config_hash in report.frame["config_hash"].dropna().unique() if len(report.frame) else []:
            seen.setdefault(str(config_hash), []).append(i)
    shared = [h for h, where in seen.items() if len(set(where)) > 1]
    if not shared:
        return None
    headers = ["Configuration"]
    for i, report in enumerate(reports):
        headers += [f"{report.campaign.name} [{i + 1}] tok/s", f"{report.campaign.name} [{i + 1}] J/token"]
    means = [
        (config_means(r.frame, "throughput_tokens_per_s"), config_means(r.frame, "energy_per_output_token_j"))
        for r in reports
    ]
    rows = []
    for config_hash in shared:
        first = next(r for r in reports if config_hash in set(r.frame["config_hash"]))
        label_row = first.frame[first.frame["config_hash"] == config_hash].iloc[0]
        row = [config_label(label_row, param_columns(first.frame))]
        for throughput, energy in means:
            row += [fmt(throughput.get(config_hash)), fmt(energy.get(config_hash))]
        rows.append(row)
    return Table("Configurations measured in several campaigns", headers, rows, "Means over cycles.")


def _facts(report: CampaignReport) -> list[str]:
    c, frame = report.campaign, report.frame
    facts = [f"Sweep dir: `{c.sweep_dir}`"]
    if c.manifest is not None:
        facts.append(f"Cycles planned: {c.manifest.cycles}; structure: {c.manifest.structure}")
        facts += [
            f"Equivalent to `{' '.join(d.same_as)}` (ran once for both; {', '.join(d.differs_in)} has no effect): "
            f"`{' '.join(d.overrides)}`"
            for d in c.manifest.duplicates if d.kind == "equivalent"
        ]
    if len(frame):
        facts.append("Models: " + ", ".join(sorted(set(frame["model_name"].dropna()))))
        facts.append("Energy sources: " + ", ".join(sorted(set(frame["energy_source"].dropna()))))
        if frame["energy_per_output_token_j"].isna().all():
            reasons = sorted(set(frame["energy_unavailable_reason"].dropna()))
            facts.append("Energy: not measured" + (f" — {'; '.join(reasons)}" if reasons else ""))
    params = [p for p in param_columns(frame) if p not in c.fixed]
    facts.append("Swept: " + (", ".join(params) if params else "nothing besides backend"))
    if c.fixed:
        facts.append("Fixed settings: " + ", ".join(f"{k}={fmt(v)}" for k, v in c.fixed.items()))
    facts.append("Verdicts: " + decide.verdict_counts(frame) + " (rules: docs/validity.md)")
    if report.summary_paths:
        facts.append(f"Summary: `{report.summary_paths[0]}`, `{report.summary_paths[1]}`")
    return facts


# --- Markdown ---------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    if table.rows:
        lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
        lines.append("|" + "---|" * len(table.headers))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    else:
        lines.append("_No rows yet._")
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines) + "\n"


def _campaign_markdown(report: CampaignReport, out_dir: Path, heading: str) -> str:
    parts = [f"## {heading}", "", *(f"- {fact}" for fact in _facts(report)), ""]
    parts += [f"- Problem: {p}" for p in report.campaign.problems]
    parts.append("")
    for table in _campaign_tables(report):
        parts.append(table_markdown(table))
    parts.append("### Plots\n")
    for plot in report.plots:
        if plot.path is None:
            parts.append(f"> {plot.note}\n")
        else:
            parts.append(f"![{plot.title}]({Path(os.path.relpath(plot.path, out_dir)).as_posix()})\n")
            if plot.note:
                parts.append(f"> {plot.note}\n")
    return "\n".join(parts)


def render_markdown(reports: Sequence[CampaignReport], out_dir: Path, title: str) -> str:
    parts = [f"# {title}", ""]
    if len(reports) > 1:
        parts.append(table_markdown(comparison_table(reports)))
        shared = shared_configs_table(reports)
        if shared:
            parts.append(table_markdown(shared))
        differences = decide.differences_table([(r.campaign.name, r.frame) for r in reports])
        if differences:
            parts.append(table_markdown(differences))
    for i, report in enumerate(reports):
        heading = f"Campaign {i + 1}: {report.campaign.name}" if len(reports) > 1 else report.campaign.name
        parts.append(_campaign_markdown(report, out_dir, heading))
    return "\n".join(parts)


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-style: italic; }
.problem { color: #a00; }
section.campaign { border-top: 2px solid #888; margin-top: 2em; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table_html(table: Table) -> str:
    out = [f"<h3>{_e(table.title)}</h3>"]
    if table.rows:
        out.append('<table class="llem-table">')
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in table.headers) + "</tr></thead>")
        out.append("<tbody>")
        out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        out.append("</tbody></table>")
    else:
        out.append('<p class="note">No rows yet.</p>')
    if table.note:
        out.append(f'<p class="note">{_e(table.note)}</p>')
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _campaign_html(report: CampaignReport, heading: str, anchor: str) -> str:
    out = [f'<section class="campaign" id="{_e(anchor)}">', f"<h2>{_e(heading)}</h2>", "<ul>"]
    out += [f"<li>{_e(fact.replace('`', ''))}</li>" for fact in _facts(report)]
    out += [f'<li class="problem">Problem: {_e(p)}</li>' for p in report.campaign.problems]
    out.append("</ul>")
    for table in _campaign_tables(report):
        out.append(table_html(table))
    if frontiers(report.frame):
        out.append("<h3>Energy frontiers (interactive)</h3>")
        out.append(interactive.frontier_html(report.frame, anchor))
    out.append("<h3>Plots</h3>")
    for plot in report.plots:
        if plot.path is None:
            out.append(f'<p class="note plot-note">{_e(plot.note)}</p>')
        else:
            out.append(
                f'<figure><img src="{_data_uri(plot.path)}" alt="{_e(plot.title)}">'
                f"<figcaption>{_e(plot.title)}</figcaption></figure>"
                + (f'<p class="note">{_e(plot.note)}</p>' if plot.note else "")
            )
    out.append("</section>")
    return "\n".join(out)


def render_html(reports: Sequence[CampaignReport], title: str) -> str:
    body = [f"<h1>{_e(title)}</h1>"]
    if len(reports) > 1:
        body.append(table_html(comparison_table(reports)))
        shared = shared_configs_table(reports)
        if shared:
            body.append(table_html(shared))
        differences = decide.differences_table([(r.campaign.name, r.frame) for r in reports])
        if differences:
            body.append(table_html(differences))
    for i, report in enumerate(reports):
        heading = f"Campaign {i + 1}: {report.campaign.name}" if len(reports) > 1 else report.campaign.name
        body.append(_campaign_html(report, heading, f"campaign-{i + 1}"))
    bundle = (
        interactive.plotly_bundle()
        if interactive.available() and any(frontiers(r.frame) for r in reports)
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n{bundle}</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# --- Orchestration ----------------------------------------------------------------------


def build_campaign_report(
    sweep_dir: Path,
    plots_dir: Path,
    *,
    group_by: Sequence[str] = (),
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    seed: int = DEFAULT_SEED,
    write_summaries: bool = True,
    targets: dict[str, float] | None = None,
    factors: Factors | None = None,
) -> CampaignReport:
    """Read, summarise (refreshing `<sweep_dir>/summary*`), compute statistics and draw plots.

    Statistics are grouped by `group_by`, else by the campaign's `group_by` (in its manifest),
    else one group per configuration.
    """
    campaign = collect(Path(sweep_dir))
    keys = campaign_group_by(campaign, group_by)
    frame = summary_frame(campaign, keys)
    stats = group_stats(frame, group_by=keys, cv_threshold=cv_threshold, seed=seed)
    summary_paths = None
    if write_summaries:
        try:
            summary_paths = write_frame(frame, campaign.sweep_dir)
            write_stats(stats, campaign.sweep_dir)
        except OSError as error:
            campaign.problems.append(f"could not write summary files into {campaign.sweep_dir}: {error}")
    plots = make_plots(frame, plots_dir) + serving_plots(frame, plots_dir) + frontier_plots(frame, plots_dir)
    return CampaignReport(campaign, frame, stats, plots, cv_threshold, keys, summary_paths, dict(targets or {}),
                          (factors or Factors()).over(_campaign_factors(campaign)))  # fmt: skip


def _campaign_factors(campaign: Campaign) -> Factors:
    """The carbon and cost factors of the campaign's `campaign.report` (in its manifest); a bad one is reported."""
    try:
        return Factors.from_campaign(campaign.manifest.report if campaign.manifest is not None else None)
    except BadFactor as error:
        campaign.problems.append(f"campaign manifest: {error}; the campaign's factors are not used")
        return Factors()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "campaign"


def write_report(
    sweep_dirs: Sequence[Path],
    out_dir: Path | None = None,
    *,
    group_by: Sequence[str] = (),
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    seed: int = DEFAULT_SEED,
    targets: dict[str, float] | None = None,
    factors: Factors | None = None,
) -> ReportFiles:
    """Write report.md, report.html and the PNGs under `out_dir/plots/`.

    Default `out_dir`: the sweep dir for one campaign, `./llem-report` for several.
    """
    dirs = [Path(d) for d in sweep_dirs]
    if not dirs:
        raise ValueError("no sweep dir given")
    out = Path(out_dir) if out_dir is not None else (dirs[0] if len(dirs) == 1 else Path.cwd() / "llem-report")
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for i, sweep_dir in enumerate(dirs):
        plots_dir = out / "plots" if len(dirs) == 1 else out / "plots" / f"{i + 1}-{_slug(sweep_dir.name)}"
        reports.append(
            build_campaign_report(
                sweep_dir, plots_dir, group_by=group_by, cv_threshold=cv_threshold, seed=seed, targets=targets,
                factors=factors,
            )
        )
    title = (
        f"llem report: {reports[0].campaign.name}"
        if len(reports) == 1
        else f"llem report: {len(reports)} campaigns compared"
    )
    md = atomic_write_text(out / REPORT_MD, render_markdown(reports, out, title))
    page = atomic_write_text(out / REPORT_HTML, render_html(reports, title))
    pngs = [p.path for r in reports for p in r.plots if p.path is not None]
    summaries = [r.summary_paths for r in reports if r.summary_paths is not None]
    answers = [f"{r.campaign.name}: {decide.cheapest_meeting(r.frame, targets).summary()}" for r in reports if targets]
    return ReportFiles(md, page, pngs, summaries, answers)
