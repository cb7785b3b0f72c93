"""The Grafana dashboard (deploy/grafana) against a live server: every panel's and variable's
PromQL, parsed (promql-parser), selects only metrics and labels that `/metrics` exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser as pq
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy/grafana"
DASHBOARD = GRAFANA / "human-numbers.json"
# labels Prometheus adds to every series it scrapes (the target's), not the app's
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Grafana's own variables where PromQL wants a duration: a value for the parser
DURATIONS = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
LABEL_VALUES = re.compile(r"label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)", re.S)
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")

Exported = dict[str, set[str]]  # sample name -> the labels its samples carry


def exported(text: str) -> Exported:
    """What a /metrics answer exports: each sample's name (a histogram's _bucket, _sum and
    _count, a counter's _total) with the labels it carries."""
    out: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # a collapsed row keeps its panels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel's target and every query variable."""
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", "")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            yield f"variable {var['name']!r}", query, ""


def problems(expr: str, have: Exported, legend: str = "") -> list[str]:
    """What in `expr` a server exporting `have` would not answer: a metric it does not
    export, a label none of the metrics selected carries; a query that does not parse."""
    grafana = LABEL_VALUES.fullmatch(expr.strip())
    if grafana:  # Grafana's label_values(selector, label), not PromQL
        expr, wanted = grafana["selector"] or "", {grafana["label"]}
    else:
        wanted = set(LEGEND.findall(legend))
    try:
        tree = pq.parse(DURATIONS.sub("5m", expr)) if expr else None
    except ValueError as e:
        return [f"does not parse: {e}"]
    found: list[str] = []
    selected: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            if node.name is None or node.name not in have:
                found.append(f"metric {node.name!r} is not exported")
                return
            labels = have[node.name] | TARGET_LABELS
            selected.update(labels)
            for m in node.matchers.matchers:
                if m.name not in labels:
                    found.append(f"{node.name} has no label {m.name!r}")
        elif isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            wanted.update(node.modifier.labels)

    if tree is not None:
        pq.walk(tree, visit)
    if not grafana and tree is None:
        found.append("an empty query")
    if not found:
        found += [f"no metric selected has a label {label!r}" for label in wanted - selected]
    return found


def test_every_query_of_the_dashboard_selects_what_a_live_server_exports(scraped):
    have = exported(scraped)
    dashboard = json.loads(DASHBOARD.read_text())
    checked = list(queries(dashboard))
    assert len(checked) >= 20  # every panel's targets and both query variables
    bad = {
        f"{where}: {expr}": p
        for where, expr, legend in checked
        if (p := problems(expr, have, legend))
    }
    assert not bad, bad
    # the engine's metrics of this PR are all on it, under vLLM's names
    text = " ".join(expr for _, expr, _ in checked)
    for name in (
        "num_requests_running",
        "num_requests_waiting",
        "time_to_first_token_seconds_bucket",
        "inter_token_latency_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in text and name in have, name


def test_the_check_refuses_a_misspelled_metric_or_label_and_bad_promql(scraped):
    have = exported(scraped)
    good = 'sum by (model) (num_requests_waiting{job=~"$job", model=~"$model"})'
    assert problems(good, have, "{{model}}") == []
    assert problems(good.replace("requests", "request"), have) == [
        "metric 'num_request_waiting' is not exported"
    ]
    assert problems(good.replace("model=~", "modle=~"), have) == [
        "num_requests_waiting has no label 'modle'"
    ]
    assert problems(good.replace("by (model)", "by (route)"), have) == [
        "no metric selected has a label 'route'"
    ]
    assert problems(good, have, "{{versoin}}") == ["no metric selected has a label 'versoin'"]
    assert problems("time_to_first_token_seconds_bucket", have) == []
    assert problems("time_to_first_token_seconds", have) == [  # a histogram's name alone
        "metric 'time_to_first_token_seconds' is not exported"
    ]
    assert problems("rate(model_tokens_total[$__rate_interval]", have)[0].startswith(
        "does not parse"
    )
    assert problems("label_values(num_requests_waiting, model)", have) == []
    assert problems("label_values(num_requests_waiting, route)", have) == [
        "no metric selected has a label 'route'"
    ]


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar():
    """deploy/grafana/kustomization.yaml makes the dashboard's ConfigMap, labelled as the
    sidecar of Grafana's Helm chart looks for, under a name that does not change."""
    kustomization = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["human-numbers.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    assert generator["options"]["disableNameSuffixHash"] is True
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "human-numbers" and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/human-numbers.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
