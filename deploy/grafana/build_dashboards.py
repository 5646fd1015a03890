#!/usr/bin/env python3
"""Generate the Grafana dashboards (training, churn, serving) from one readable description.

    python deploy/grafana/build_dashboards.py          # rewrites helm/unirec/dashboards/*.json
    python deploy/grafana/build_dashboards.py --check  # exit 1 when the committed JSON is stale

The JSON under helm/unirec/dashboards/ is the single copy both deployments use: Compose mounts the
folder into Grafana's file provisioning, the Helm chart reads it with .Files.Get into a ConfigMap
for the Grafana sidecar. Metric names are those of docs/metrics.md. Every expression uses only
Grafana's `$__rate_interval` and the dashboard's own variables (`$job`, `$rank`, `$feature`,
`$route`), so tests can evaluate each of them against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "helm" / "unirec" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]
    """(PromQL, legend) pairs."""
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict = field(default_factory=dict)
    thresholds: list[tuple[float | None, str]] | None = None
    decimals: int | None = None
    stacked: bool = False


def stat(title: str, expr: str, unit: str = "short", description: str = "", **kw) -> Panel:
    return Panel(title, [(expr, "")], kind="stat", unit=unit, width=kw.pop("width", 6), height=4,
                 description=description, **kw)


def _variable(name: str, label: str, query: str, multi: bool = True) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def _datasource_variable() -> dict:
    return {"name": "datasource", "label": "Datasource", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False}


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    steps = [{"color": "green", "value": None}]
    if panel.thresholds:
        steps = [{"color": color, "value": value} for value, color in panel.thresholds]
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if panel.kind == "timeseries":
        defaults["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": True}
        if panel.stacked:
            defaults["custom"].update(fillOpacity=40, stacking={"mode": "normal", "group": "A"})
        defaults["color"] = {"mode": "palette-classic"}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "desc"}} if panel.kind == "timeseries" else {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
    }
    options.update(panel.options)
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DS, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": True,
                     "refId": chr(ord("A") + i)} for i, (expr, legend) in enumerate(panel.targets)],
    }


def dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[Panel]) -> dict:
    laid_out, x, y, row_h, pid = [], 0, 0, 0, 1
    for panel in panels:
        if x + panel.width > 24:
            x, y, row_h = 0, y + row_h, 0
        laid_out.append(_panel_json(panel, pid, x, y))
        pid, x, row_h = pid + 1, x + panel.width, max(row_h, panel.height)
    return {
        "uid": uid, "title": title, "description": description, "tags": ["unirec"],
        "editable": False, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-3h", "to": "now"}, "timezone": "utc",
        "templating": {"list": [_datasource_variable(), *variables]},
        "annotations": {"list": []}, "links": [
            {"type": "dashboards", "tags": ["unirec"], "asDropdown": True, "title": "unirec", "includeVars": True,
             "keepTime": True}],
        "panels": laid_out,
    }


def training() -> dict:
    sel = 'job=~"$job",rank=~"$rank"'
    return dashboard(
        "unirec-training", "unirec / training",
        "Streaming trainer: throughput, Kafka lag, loss, progressive validation, checkpoints and exports.",
        [_variable("job", "Job", "label_values(unirec_trainer_events_total, job)"),
         _variable("rank", "Rank", 'label_values(unirec_trainer_events_total{job=~"$job"}, rank)')],
        [
            stat("Events/s (all ranks)", f"sum(rate(unirec_trainer_events_total{{{sel}}}[{RI}]))", "ops"),
            stat("Consumer lag (events)", f"sum(unirec_trainer_consumer_lag{{{sel}}})", "short",
                 "End offset minus next offset to read, summed over partitions.",
                 thresholds=[(None, "green"), (100000, "orange"), (1000000, "red")]),
            stat("Progressive AUC (recent)", f'avg(unirec_trainer_progressive_auc{{{sel},window="recent"}})',
                 "percentunit", "AUC of predictions made before training on each batch.", decimals=3,
                 thresholds=[(None, "red"), (0.6, "orange"), (0.7, "green")]),
            stat("Checkpoint age", f"max(unirec_trainer_checkpoint_age_seconds{{{sel}}})", "s",
                 "Seconds since the last completed checkpoint (oldest rank).",
                 thresholds=[(None, "green"), (900, "orange"), (1800, "red")]),
            Panel("Events/s per rank", [
                (f"sum by (rank) (rate(unirec_trainer_events_total{{{sel}}}[{RI}]))", "rank {{rank}}")], unit="ops"),
            Panel("Optimiser steps/s per rank", [
                (f"sum by (rank) (rate(unirec_trainer_batches_total{{{sel}}}[{RI}]))", "rank {{rank}}")],
                unit="ops"),
            Panel("Consumer lag per partition", [
                (f"sum by (topic, partition) (unirec_trainer_consumer_lag{{{sel}}})", "{{topic}}/{{partition}}")],
                description="Events not yet read, per topic partition."),
            Panel("Event-time delay", [
                (f"time() - max(unirec_trainer_event_time_watermark_seconds{{{sel}}})", "now - watermark")],
                unit="s", description="Wall clock minus the largest event time trained on."),
            Panel("Training loss (last batch)", [
                (f"avg by (rank) (unirec_trainer_loss{{{sel}}})", "rank {{rank}}")], decimals=4),
            Panel("Progressive AUC", [
                (f"avg by (window) (unirec_trainer_progressive_auc{{{sel}}})", "{{window}}")],
                unit="percentunit", decimals=3),
            Panel("Progressive log loss", [
                (f"avg by (window) (unirec_trainer_progressive_logloss{{{sel}}})", "{{window}}")], decimals=4),
            Panel("Checkpoint age", [
                (f"max by (rank) (unirec_trainer_checkpoint_age_seconds{{{sel}}})", "rank {{rank}}")], unit="s"),
            Panel("Checkpoint write time", [
                ("histogram_quantile(0.5, sum by (le) (rate(unirec_trainer_checkpoint_duration_seconds_bucket"
                 f"{{{sel}}}[{RI}])))", "p50"),
                ("histogram_quantile(0.95, sum by (le) (rate(unirec_trainer_checkpoint_duration_seconds_bucket"
                 f"{{{sel}}}[{RI}])))", "p95")], unit="s",
                description="Must stay well under the pod's terminationGracePeriodSeconds."),
            Panel("Exports published", [
                (f"sum by (kind) (increase(unirec_trainer_exports_total{{{sel}}}[{RI}]))", "{{kind}}")]),
            Panel("Dead-lettered events/s", [
                (f"sum by (reason) (rate(unirec_trainer_dlq_total{{{sel}}}[{RI}]))", "{{reason}}")], unit="ops",
                width=24, description="Malformed events sent to the dead-letter topic, by reason."),
        ],
    )


def churn() -> dict:
    sel = 'job=~"$job",feature=~"$feature"'
    by = "max by (feature)"  # every rank may report the merged window: never double count
    return dashboard(
        "unirec-churn", "unirec / vocabulary churn",
        "Per feature, values of the last closed window: distinct, new and vanished IDs, and the load each "
        "feature puts on the unified embedding table.",
        [_variable("job", "Job", "label_values(unirec_churn_distinct_ids, job)"),
         _variable("feature", "Feature", 'label_values(unirec_churn_distinct_ids{job=~"$job"}, feature)')],
        [
            stat("Distinct IDs (all features)", f"sum({by} (unirec_churn_distinct_ids{{{sel}}}))"),
            stat("New IDs (all features)", f"sum({by} (unirec_churn_new_ids{{{sel}}}))"),
            stat("Table rows occupied", f"sum({by} (unirec_churn_table_occupied_rows{{{sel}}}))", "short",
                 "Estimated rows of the unified table occupied by all features together."),
            stat("Worst collision rate", f"max(unirec_churn_collision_rate{{{sel}}})", "percentunit", decimals=3,
                 thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")]),
            Panel("New IDs per window", [(f"{by} (unirec_churn_new_ids{{{sel}}})", "{{feature}}")]),
            Panel("Vanished IDs per window", [(f"{by} (unirec_churn_vanished_ids{{{sel}}})", "{{feature}}")],
                  description="IDs of the previous window absent from this one."),
            Panel("New-ID rate", [(f"{by} (unirec_churn_new_id_rate{{{sel}}})", "{{feature}}")], unit="ops",
                  description="New IDs per second of event time."),
            Panel("Distinct IDs per window", [(f"{by} (unirec_churn_distinct_ids{{{sel}}})", "{{feature}}")]),
            Panel("Window-to-window Jaccard", [(f"{by} (unirec_churn_jaccard{{{sel}}})", "{{feature}}")],
                  unit="percentunit", decimals=3, description="1 = same IDs as the previous window."),
            Panel("Table load per feature", [
                (f"{by} (unirec_churn_table_occupied_rows{{{sel}}})", "{{feature}}")],
                description="Rows of the shared table each feature occupies (stacked).", stacked=True,
                options={"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                    "calcs": ["lastNotNull"]}}),
            Panel("Collision rate per feature", [(f"{by} (unirec_churn_collision_rate{{{sel}}})", "{{feature}}")],
                  unit="percentunit", decimals=3,
                  description="Expected share of the feature's IDs sharing a row with another ID."),
            Panel("Stale rows share per feature", [(f"{by} (unirec_churn_stale_share{{{sel}}})", "{{feature}}")],
                  unit="percentunit", decimals=3,
                  description="Share of the feature's rows not updated for the configured number of steps."),
            Panel("Top features by new IDs", [(f"topk(10, {by} (unirec_churn_new_ids{{{sel}}}))", "{{feature}}")],
                  kind="bargauge", width=24, height=7,
                  options={"orientation": "horizontal", "displayMode": "gradient",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}),
        ],
    )


def serving() -> dict:
    sel = 'job=~"$job"'
    rsel = 'job=~"$job",route=~"$route"'
    lat = "unirec_serve_request_latency_seconds_bucket"
    return dashboard(
        "unirec-serving", "unirec / serving",
        "Inference service: traffic, latency, errors, the model being served and its freshness.",
        [_variable("job", "Job", "label_values(unirec_serve_requests_total, job)"),
         _variable("route", "Route", 'label_values(unirec_serve_requests_total{job=~"$job"}, route)')],
        [
            stat("Requests/s", f"sum(rate(unirec_serve_requests_total{{{rsel}}}[{RI}]))", "reqps", width=5),
            stat("p99 latency", f"histogram_quantile(0.99, sum by (le) (rate({lat}{{{rsel}}}[{RI}])))", "s",
                 width=5, thresholds=[(None, "green"), (0.05, "orange"), (0.2, "red")]),
            stat("5xx ratio", f'(sum(rate(unirec_serve_requests_total{{{rsel},status=~"5.."}}[{RI}])) or vector(0))'
                 f" / sum(rate(unirec_serve_requests_total{{{rsel}}}[{RI}]))", "percentunit", width=4,
                 decimals=3, thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")]),
            Panel("Model version", [(f"max by (version) (unirec_serve_model_info{{{sel}}})", "{{version}}")],
                  kind="stat", width=5, height=4,
                  options={"textMode": "name", "colorMode": "none", "graphMode": "none"}),
            stat("Model freshness", f"max(unirec_serve_model_age_seconds{{{sel}}})", "s", width=5,
                 description="Now minus the served model's event-time watermark (worst replica).",
                 thresholds=[(None, "green"), (1800, "orange"), (7200, "red")]),
            Panel("Requests/s by route and status", [
                (f"sum by (route, status) (rate(unirec_serve_requests_total{{{rsel}}}[{RI}]))",
                 "{{route}} {{status}}")], unit="reqps"),
            Panel("Latency percentiles", [
                (f"histogram_quantile({q}, sum by (le, route) (rate({lat}{{{rsel}}}[{RI}])))", f"p{n} {{{{route}}}}")
                for q, n in ((0.5, 50), (0.9, 90), (0.99, 99))], unit="s"),
            Panel("Errors by status", [
                (f'sum by (route, status) (rate(unirec_serve_requests_total{{{rsel},status!~"2.."}}[{RI}]))',
                 "{{route}} {{status}}")], unit="reqps", description="Every non-2xx answer, 4xx included."),
            Panel("Events per predict request", [
                (f"histogram_quantile({q}, sum by (le) (rate(unirec_serve_batch_size_bucket{{{sel}}}[{RI}])))",
                 f"p{n}") for q, n in ((0.5, 50), (0.99, 99))]),
            Panel("Dynamic batching: forwards/s and requests per forward", [
                (f"sum(rate(unirec_serve_forwards_total{{{sel}}}[{RI}]))", "forwards/s"),
                (f"sum(rate(unirec_serve_forward_requests_sum{{{sel}}}[{RI}])) / "
                 f"sum(rate(unirec_serve_forward_requests_count{{{sel}}}[{RI}]))", "requests per forward"),
                (f"sum(rate(unirec_serve_forward_events_sum{{{sel}}}[{RI}])) / "
                 f"sum(rate(unirec_serve_forward_events_count{{{sel}}}[{RI}]))", "events per forward")],
                description="Above 1 request per forward: concurrent requests were scored together."),
            Panel("Model freshness per replica", [
                (f"max by (instance) (unirec_serve_model_age_seconds{{{sel}}})", "{{instance}}")], unit="s"),
            Panel("Model swaps and refused artifacts", [
                (f"sum by (kind) (increase(unirec_serve_swaps_total{{{sel}}}[{RI}]))", "swap {{kind}}"),
                (f"sum by (reason) (increase(unirec_serve_failed_loads_total{{{sel}}}[{RI}])) or on() vector(0)",
                 "refused {{reason}}"),
                (f"count by (version) (unirec_serve_refused_version_info{{{sel}}}) or on() vector(0)",
                 "refused version {{version}}")],
                description="A refused artifact leaves the previous model serving."),
            Panel("Unseen-ID share per feature", [
                (f"sum by (feature) (rate(unirec_serve_unseen_ids_total{{{sel}}}[{RI}])) / "
                 f"sum by (feature) (rate(unirec_serve_lookups_total{{{sel}}}[{RI}]))", "{{feature}}")],
                unit="percentunit", decimals=3, description="Looked-up IDs never seen in training."),
            Panel("Missing and unknown features", [
                (f"sum by (feature) (rate(unirec_serve_missing_features_total{{{sel}}}[{RI}]))", "missing {{feature}}"),
                (f"sum(rate(unirec_serve_unknown_features_total{{{sel}}}[{RI}]))", "unknown feature")],
                unit="ops", width=24),
        ],
    )


DASHBOARDS = {"training.json": training, "churn.json": churn, "serving.json": serving}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards {stale}: run python deploy/grafana/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
