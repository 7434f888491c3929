"""The snapshot report: one self-contained HTML file (styles inline, figures embedded as
PNG data URIs) that opens offline in any browser. Pure: it renders the aggregates it is
given; `segmentation/stages/report.py` computes them from the tables.
"""

from __future__ import annotations

import base64
import html
import io

from segmentation.plots import plt

KPI_LABELS = {
    "customers": ("customers", "{:,.0f}"),
    "active_customers": ("active customers (bought in the last 365 days)", "{:,.0f}"),
    "repurchase_rate": ("repurchase rate (active customers with 2+ orders)", "{:.1%}"),
    "churn_rate": ("churn rate (customers in lifecycle stage churned)", "{:.1%}"),
    "mean_churn_probability": ("mean churn probability (scored customers)", "{:.1%}"),
    "revenue_365d": ("trailing 12-month revenue", "{:,.0f}"),
    "total_clv": ("predicted 12-month CLV", "{:,.0f}"),
}


def data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pareto_figure(value_tiers: list[dict]):
    figure, axis = plt.subplots(figsize=(6, 4))
    xs = [0.0] + [t["cumulative_customer_share"] for t in value_tiers]
    ys = [0.0] + [t["cumulative_revenue_share"] or 0.0 for t in value_tiers]
    axis.plot(xs, ys, marker="o")
    for t, x, y in zip(value_tiers, xs[1:], ys[1:]):
        axis.annotate(t["value_tier"], (x, y), textcoords="offset points", xytext=(5, -12))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("share of customers, most valuable first")
    axis.set_ylabel("share of trailing revenue")
    return figure


def migration_figure(cells: list[dict], order: list[str]):
    sources = [t for t in ["(new)", *order] if any(c["from_tier"] == t for c in cells)]
    targets = [t for t in [*order, "(gone)"] if any(c["to_tier"] == t for c in cells)]
    grid = [[sum(c["customers"] for c in cells if c["from_tier"] == f and c["to_tier"] == t) for t in targets] for f in sources]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    image = axis.imshow(grid, cmap="Blues")
    axis.set_xticks(range(len(targets)), targets)
    axis.set_yticks(range(len(sources)), sources)
    axis.set_xlabel("to tier")
    axis.set_ylabel("from tier")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            axis.text(j, i, f"{value:,}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, label="customers")
    return figure


def clv_figure(clv_by_tier: list[dict]):
    figure, axis = plt.subplots(figsize=(6, 4))
    stats = [
        {"label": t["value_tier"], "whislo": t["p10"], "q1": t["p25"], "med": t["p50"], "q3": t["p75"], "whishi": t["p90"], "fliers": []}
        for t in clv_by_tier if t["p50"] is not None
    ]
    if stats:
        axis.bxp(stats, showfliers=False)
    axis.set_ylabel("predicted CLV (10th-90th percentile whiskers)")
    return figure


def churn_sources_sentence(sources: list[str]) -> str:
    """What scored this snapshot's customers, in one sentence (from customer_tiers.churn_score_source)."""
    if not sources:
        return "No customer of this snapshot has a churn score."
    baselines = [s.removeprefix("baseline:") for s in sources if s.startswith("baseline:")]
    if baselines:
        return (f"No churn model beat every baseline: churn scores come from the {', '.join(baselines)} baseline, "
                "turned into a probability on the evaluation rows.")
    return f"Churn scores come from {', '.join(s.replace('model:', 'model version ') for s in sources)}."


def missing_sentences(missing: dict[str, str]) -> list[str]:
    """One line per reason: the tier columns a skipped model stage left empty, and why."""
    by_reason: dict[str, list[str]] = {}
    for column, reason in missing.items():
        by_reason.setdefault(reason, []).append(column)
    return [f"{', '.join(columns)} ({reason})" for reason, columns in by_reason.items()]


def lift_figure(churn: dict):
    figure, axis = plt.subplots(figsize=(6, 4))
    names = list(churn["scores"])
    for offset, key in ((-0.2, "lift_10"), (0.2, "lift_20")):
        axis.bar([i + offset for i in range(len(names))], [churn["scores"][n].get(key) or 0 for n in names], width=0.4,
                 label=key.replace("lift_", "lift in top ") + "%")
    axis.set_xticks(range(len(names)), names, rotation=15)
    axis.axhline(1.0, color="grey", linestyle=":")
    axis.set_ylabel("lift over the churn rate")
    axis.legend()
    return figure


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def _outcomes_html(outcomes: list[dict]) -> str:
    """One section per treatment: its uplift on each metric, treated against control, with the interval."""
    sections = []
    for treatment in dict.fromkeys(o["treatment"] for o in outcomes):
        rows = [[o["metric"], o["as_of_date"], f"{o['treated_customers']:,}", f"{o['control_customers']:,}",
                 _num(o["treated_value"], "{:.3f}"), _num(o["control_value"], "{:.3f}"), _num(o["uplift"], "{:+.3f}"),
                 "-" if o["ci_low"] is None else f"[{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]",
                 "too small to tell" if o["too_small"] else ("yes" if o["significant"] else "no")]
                for o in outcomes if o["treatment"] == treatment]
        sections.append(f"<h2>Treatment {html.escape(treatment)}: measured uplift</h2>" + _table(
            ["metric", "snapshot", "treated", "control", "treated value", "control value", "uplift", "interval", "significant"], rows))
    return "\n".join(sections)


def _drivers_html(drivers: list[dict]) -> str:
    """Per risk tier, its top churn drivers: mean contribution and share of the tier."""
    if not drivers:
        return ""
    rows = [[d["churn_risk_tier"], str(d["rank"]), d["feature"], f"{d['mean_contribution']:+.3f}", _pct(d["customer_share"])]
            for d in drivers]
    return ("<h3>Top churn drivers by risk tier</h3><p>Mean contribution to the model's margin over the tier's "
            "customers (0 where a feature is not among a customer's three drivers), and the share of the tier with it "
            "among its drivers.</p>" + _table(["risk tier", "rank", "feature", "mean contribution", "share of tier"], rows))


def grade_html(what: str, graded: dict | None, ungraded: str) -> str:
    """One sentence: a model's quality grade and why (see the README's "Quality grades")."""
    if not graded or not graded.get("grade"):
        return f"<p>{html.escape(what)} quality: not graded ({html.escape(ungraded)}).</p>"
    return (f"<p>{html.escape(what)} quality: <strong>{html.escape(graded['grade'])}</strong> "
            f"({html.escape(str(graded.get('grade_reason')))}).</p>")


def render(data: dict, figures: dict[str, str]) -> str:
    """The report as one HTML document."""
    kpis, previous = data["kpis"], data.get("previous_kpis")
    kpi_rows = []
    for key, (label, pattern) in KPI_LABELS.items():
        now = kpis.get(key)
        before = previous.get(key) if previous else None
        change = "-" if now is None or before is None else (
            pattern.replace("{:", "{:+").format(now - before) if "%" not in pattern else f"{100 * (now - before):+.1f} pts"
        )
        kpi_rows.append([label, _num(now, pattern), _num(before, pattern), change])
    value_rows = [[t["value_tier"], f"{t['customers']:,}", _pct(t["customer_share"]), f"{t['revenue']:,.0f}", _pct(t["revenue_share"])]
                  for t in data["value_tiers"]]
    cluster_rows = [[c["cluster_name"], f"{c['customers']:,}", _pct(c["customer_share"]), _pct(c["revenue_share"]),
                     _num(c["mean_clv"], "{:,.1f}"), _pct(c["mean_churn_probability"])] for c in data["clusters"]]
    churn = data["churn"]
    churn_html = "<p>No churn champion yet.</p>"
    if churn:
        churn_rows = [[name, _num(m.get("roc_auc"), "{:.3f}"), _num(m.get("pr_auc"), "{:.3f}"), _num(m.get("lift_10"), "{:.2f}"),
                       _pct(m.get("capture_10")), _num(m.get("lift_20"), "{:.2f}"), _pct(m.get("capture_20"))]
                      for name, m in churn["scores"].items()]
        churn_html = (
            f"<p>Champion {html.escape(churn['model'])}, evaluated out of time at {html.escape(str(churn['evaluation_cutoff']))} "
            f"(churn = no purchase in {html.escape(str(churn['horizon_days']))} days).</p>"
            + _table(["score", "ROC AUC", "PR AUC", "lift@10%", "capture@10%", "lift@20%", "capture@20%"], churn_rows)
            + grade_html("Churn model", churn, "trained before grades")
            + f'<img alt="churn lift" src="{figures["lift"]}">'
        )
    churn_html += f"<p>{html.escape(churn_sources_sentence(data.get('churn_score_sources') or []))}</p>"
    migration_html = "<p>No earlier snapshot: no migrations yet.</p>"
    if data["migration"]:
        migration_html = (f"<p>Value tier, {html.escape(str(data['previous_as_of']))} to {html.escape(str(data['as_of']))}.</p>"
                          f'<img alt="migration matrix" src="{figures["migration"]}">')
    images = {key: f'<img alt="{key}" src="{uri}">' for key, uri in figures.items()}
    outcomes_html = _outcomes_html(data.get("outcomes") or [])
    missing_html = "".join(f"<p>Not predicted: {html.escape(line)}.</p>" for line in missing_sentences(data.get("missing_predictions") or {}))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Customer tiers as of {html.escape(str(data['as_of']))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%;display:block;margin:1em 0}}h2{{border-bottom:1px solid #ddd}}</style></head><body>
<h1>Customer tiers as of {html.escape(str(data['as_of']))}</h1>
<p>Pipeline run {html.escape(str(data['pipeline_run_id']))}; value tiers ranked by {html.escape(str(data['value_rank_by']))};
customer_tiers Delta version {html.escape(str(data['tiers_version']))}.</p>
{missing_html}
<h2>KPIs</h2>
{_table(["KPI", str(data['as_of']), str(data.get('previous_as_of') or '-'), "change"], kpi_rows)}
<h2>Value tiers</h2>
{_table(["tier", "customers", "share", "trailing revenue", "revenue share"], value_rows)}
{images['pareto']}
<h2>Migration between tiers</h2>
{migration_html}
<h2>Lifetime value by tier</h2>
{grade_html("Lifetime value model", data.get("clv_grade"), "graded only on a holdout check: segmentation clv --holdout-days N")}
{images['clv']}
<h2>Churn model against its baselines</h2>
{churn_html}
{_drivers_html(data.get("churn_drivers") or [])}
<h2>Clusters</h2>
{_table(["cluster", "customers", "share", "revenue share", "mean CLV", "mean churn probability"], cluster_rows)}
{outcomes_html}
</body></html>
"""
