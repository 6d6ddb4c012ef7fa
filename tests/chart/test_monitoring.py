#!/usr/bin/env python3
"""Check the chart's PrometheusRule and Grafana dashboard against sidekey itself.

kubernetes-validate has no schema for the PrometheusRule CRD, and neither it
nor helm lint reads PromQL, so this script does what a reviewer would:

  1. with default values neither object renders; with
     ci/monitoring-values.yaml exactly one of each does, with their labels;
  2. the PrometheusRule has the shape of the monitoring.coreos.com/v1 CRD
     (a JSON schema written from its documented fields; unknown fields are
     errors), every alert has a severity, a summary and a description;
  3. every alert expression and every dashboard query parses as PromQL
     (promql-parser, the Rust parser of GreptimeDB, as a Python wheel);
  4. every metric they name is one a running sidekey exposes (its /metrics,
     scraped from the real binary), every label they use is one the README's
     metrics table documents (or a scrape label: namespace, pod, job, ...),
     and every `$labels.x` an alert's text shows is kept by its expression;
  5. `monitoring.selector` reaches every series an alert reads;
  6. the alerts the issue asks for are there: stale credential, reload
     errors, token refresh failures, keys resting, refused by a limit.

Plain python3 + PyYAML + jsonschema + promql-parser; no pytest. Exit status
0 only if every check passed. Every wait is bounded; traffic stays on
127.0.0.1.

Environment:
  SIDEKEY_BIN   the sidekey binary (default target/debug/sidekey)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import promql_parser
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sidekey"
VALUES = CHART / "ci" / "monitoring-values.yaml"
HELM = REPO / "scripts" / "helm"
README = REPO / "README.md"

HELM_TIMEOUT = 300
SERVING_TIMEOUT = 30
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Labels a Kubernetes scrape adds (kube-prometheus, PodMonitor, annotations),
# plus the histogram bucket label.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "le"}
# What the issue asks the alerts to cover: alert name -> metric it must read.
REQUIRED_ALERTS = {
    "SidekeyCredentialStale": "sidekey_credential_stale_seconds",
    "SidekeyReloadErrors": "sidekey_reloads_total",
    "SidekeyTokenRefreshFailing": "sidekey_token_refreshes_total",
    "SidekeyKeysResting": "sidekey_credential_keys_rested",
    "SidekeyRefusedByLimit": "sidekey_limited_total",
}
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The fields of monitoring.coreos.com/v1 PrometheusRule, from its CRD's
# documentation; stricter than the CRD in two ways that catch our own
# mistakes: unknown fields are refused, and alerts must carry a severity.
RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "labels": STRING_MAP, "annotations": STRING_MAP},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["alert", "expr", "labels", "annotations"],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": DURATION},
                            "keep_firing_for": {"type": "string", "pattern": DURATION},
                            "labels": {
                                **STRING_MAP,
                                "required": ["severity"],
                                "properties": {"severity": {"enum": ["warning", "critical"]}},
                            },
                            "annotations": {**STRING_MAP, "required": ["summary", "description"]},
                        },
                    }},
                },
            }}},
        },
    },
}


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(HELM), "template", "mon", str(CHART), "--namespace", "llm-prod", *args],
        capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False,
    )
    check(out.returncode == 0, f"helm template {' '.join(args)}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ------------------------------------------------------------------ PromQL


def walk(node: Any) -> Iterator[Any]:
    """Every node of a promql_parser AST."""
    yield node
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from walk(child)
    for arg in getattr(node, "args", None) or []:
        yield from walk(arg)


def selectors(expr: Any) -> list[Any]:
    return [n for n in walk(expr) if isinstance(n, promql_parser.VectorSelector)]


def labels_used(expr: Any) -> set[str]:
    used: set[str] = set()
    for n in walk(expr):
        if isinstance(n, promql_parser.VectorSelector):
            used |= {m.name for m in n.matchers.matchers}
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            used |= set(n.modifier.labels)
    return used


def kept_labels(expr: Any) -> set[str]:
    """Labels an expression's result keeps: those of its outermost `by`."""
    for n in walk(expr):
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            return set(n.modifier.labels)
    return set()


def exposed_metrics(sidekey_bin: Path) -> set[str]:
    """Metric names a real sidekey (built-in config) exposes on /metrics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKEY_")}
    env["SIDEKEY_LOG"] = "info"
    proc = subprocess.Popen(
        [str(sidekey_bin), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--log-format", "json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + SERVING_TIMEOUT
        admin = None
        assert proc.stderr is not None
        while admin is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "sidekey is serving":
                admin = event.get("admin")
        check(admin is not None, "sidekey did not log 'sidekey is serving'")
        with HTTP.open(f"http://{admin}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    names: set[str] = set()
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(m.group(1))
        if m.group(2) == "histogram":
            names |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
    check(len(names) > 10, f"only {len(names)} metric families on /metrics")
    return names


def documented_labels() -> set[str]:
    """Label names in the README's metrics table (its third column)."""
    labels: set[str] = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `sidekey_"):
            cells = line.split("|")
            labels |= set(re.findall(r"`([a-z_]+)`", cells[3]))
    check(len(labels) > 5, "no labels found in the README's metrics table")
    return labels


def check_query(where: str, text: str, metrics: set[str], labels: set[str]) -> Any:
    try:
        expr = promql_parser.parse(text)
    except Exception as e:  # noqa: BLE001 (the parser raises its own types)
        raise CheckFailed(f"{where}: not PromQL: {e}\n{text}") from None
    names = {s.name for s in selectors(expr)}
    check(names, f"{where}: reads no metric")
    unknown = sorted(names - metrics)
    check(not unknown, f"{where}: sidekey exposes no metric {unknown}")
    stray = sorted(labels_used(expr) - labels)
    check(not stray, f"{where}: labels {stray} are neither documented nor scrape labels")
    return expr


# ------------------------------------------------------------------ checks


def check_rule(rule: dict[str, Any], selector: str, metrics: set[str], labels: set[str]) -> int:
    try:
        jsonschema.validate(rule, RULE_SCHEMA)
    except jsonschema.ValidationError as e:
        raise CheckFailed(f"PrometheusRule: {e.message} at {list(e.absolute_path)}") from None
    want = {m.name: (m.op, m.value) for m in
            promql_parser.parse("x{" + selector + "}").matchers.matchers}
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    seen = [a["alert"] for a in alerts]
    check(len(seen) == len(set(seen)), f"duplicate alert names: {seen}")
    for a in alerts:
        where = f"alert {a['alert']}"
        expr = check_query(where, a["expr"], metrics, labels)
        for s in selectors(expr):
            got = {m.name: (m.op, m.value) for m in s.matchers.matchers}
            missing = {k: v for k, v in want.items() if got.get(k) != v}
            check(not missing, f"{where}: {s.name} lacks the selector's {missing}")
        kept = kept_labels(expr)
        for field, text in a["annotations"].items():
            check(text.count("{{") == text.count("}}"), f"{where}: unbalanced {{{{ }}}} in {field}")
            shown = set(re.findall(r"\$labels\.([a-z_]+)", text))
            check(shown <= kept, f"{where}: {field} shows {sorted(shown - kept)}, "
                                 f"which the expression drops (it keeps {sorted(kept)})")
        check(a["labels"].get("team") == "platform", f"{where}: alertLabels not applied")
    for name, metric in REQUIRED_ALERTS.items():
        match = [a for a in alerts if a["alert"] == name]
        check(match and metric in a_metrics(match[0]), f"no alert {name} on {metric}")
    return len(alerts)


def a_metrics(alert: dict[str, Any]) -> set[str]:
    return {s.name for s in selectors(promql_parser.parse(alert["expr"]))}


def check_dashboard(cm: dict[str, Any], metrics: set[str], labels: set[str]) -> int:
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1",
          "dashboard ConfigMap lacks the grafana_dashboard label")
    check(cm["metadata"].get("annotations", {}).get("grafana_folder") == "LLM",
          "dashboard annotations not applied")
    dash = json.loads(cm["data"]["sidekey.json"])
    check(dash.get("uid") and dash.get("title"), "dashboard has no uid or title")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    check(variables.get("datasource", {}).get("type") == "datasource",
          "dashboard has no $datasource variable (it must not pin a data source)")
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), "duplicate panel ids")
    # Grafana variables replaced by values of the right type, then parsed.
    subst = {"$__rate_interval": "5m", "$namespace": ".*", "$pod": ".*", "$route": ".*"}
    queries = 0
    for p in dash["panels"]:
        g = p["gridPos"]
        check(g["x"] + g["w"] <= 24, f"panel {p['title']!r} is wider than the grid")
        if p["type"] == "row":
            continue
        check(p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} pins a data source")
        check(p.get("description"), f"panel {p['title']!r} has no description")
        for t in p["targets"]:
            text = t["expr"]
            for k, v in subst.items():
                text = text.replace(k, v)
            check("$" not in text, f"panel {p['title']!r}: unknown variable in {t['expr']}")
            check_query(f"panel {p['title']!r}", text, metrics, labels)
            queries += 1
    for v in ("namespace", "pod", "route"):
        q = variables[v]["definition"]
        m = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", q)
        check(m and m.group(1) in metrics and m.group(3) in labels,
              f"variable {v}: {q} does not name an exposed metric and label")
    return queries


def run() -> list[str]:
    done: list[str] = []
    sidekey_bin = Path(os.environ.get("SIDEKEY_BIN", REPO / "target" / "debug" / "sidekey")).absolute()
    check(os.access(sidekey_bin, os.X_OK), f"SIDEKEY_BIN {sidekey_bin} is not an executable")

    kinds = [(d["kind"], d["metadata"]["name"]) for d in render()]
    check(not any(k == "PrometheusRule" or n.endswith("-dashboard") for k, n in kinds),
          f"monitoring objects rendered by default: {kinds}")
    done.append("default values render no PrometheusRule and no dashboard")

    values = yaml.safe_load(VALUES.read_text())
    docs = render("-f", str(VALUES))
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    boards = [d for d in docs if d["kind"] == "ConfigMap" and "sidekey.json" in d.get("data", {})]
    check(len(rules) == 1 and len(boards) == 1,
          f"expected one PrometheusRule and one dashboard, got {len(rules)} and {len(boards)}")
    check(rules[0]["metadata"]["labels"].get("release") == "kube-prometheus-stack",
          "prometheusRule.labels not applied")
    done.append(f"{VALUES.name} renders one PrometheusRule and one dashboard ConfigMap")

    metrics = exposed_metrics(sidekey_bin)
    labels = documented_labels() | SCRAPE_LABELS
    n = check_rule(rules[0], values["monitoring"]["selector"], metrics, labels)
    done.append(f"{n} alerts: CRD shape, PromQL, exposed metrics ({len(metrics)}), "
                "documented labels, the selector on every series, the required alerts")
    q = check_dashboard(boards[0], metrics, labels)
    done.append(f"dashboard: {q} queries parse and read exposed metrics and documented labels")
    return done


def main() -> int:
    try:
        for line in run():
            print(f"ok   {line}")
    except CheckFailed as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
