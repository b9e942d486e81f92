"""The Grafana dashboard and the Prometheus alert rules query what the service exposes.

Every metric and label that ops/grafana/otp-login.json and ops/prometheus/alerts.yml use must be in a live /metrics
after real traffic through the native stack (read with prometheus_client's parser); every expression must be
valid PromQL and the alerts must fire as their unit tests say (promtool, from Debian's prometheus package, which
`make test` installs).
"""
import json
import re
import shutil
import subprocess

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import post
from tests.support.processes import REPO_DIR
from tests.support.smtp import code_from_email
from tests.support.waiting import wait_for

DASHBOARD = REPO_DIR / "ops" / "grafana" / "otp-login.json"
ALERTS = REPO_DIR / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO_DIR / "ops" / "prometheus" / "alerts.test.yml"
# Made by Prometheus at scrape time, not by the service: the target's health and its target labels.
SCRAPE_METRICS = {"up"}
TARGET_LABELS = {"job", "instance"}

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
  | (?P<space>\s+)
""", re.X)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATORS = {"and", "or", "unless", "bool", "offset"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
                 "count_values", "group", "limitk", "limit_ratio"}


def promql_parts(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """The selectors of a PromQL expression, as (metric name, [(label, operator, value)]), and the label names
    it groups or matches on (by, without, on, ignoring, group_left, group_right). Enough PromQL for rules and
    dashboards: it raises on anything it cannot place, rather than skipping it."""
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if not match:
            raise ValueError(f"cannot read {expr[position:position + 20]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        position = match.end()
    selectors, grouping, i = [], set(), 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind != "ident" or text in _OPERATORS:
            i += 1
        elif text in _GROUPING:
            i += 1
            if following == "(":
                i += 1
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        grouping.add(tokens[i][1])
                    i += 1
                i += 1
        elif following == "(" or text in _AGGREGATIONS:
            i += 1  # a function or an aggregation
        else:
            matchers, i = [], i + 1
            if following == "{":
                i += 1
                while tokens[i][1] != "}":
                    if tokens[i][0] == "ident":
                        label, operator, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2][1]
                        matchers.append((label, operator, json.loads(value) if value.startswith('"') else value[1:-1]))
                        i += 3
                    else:
                        i += 1
                i += 1
            selectors.append((text, matchers))
    return selectors, grouping


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{panel['title']} {target['refId']}": target["expr"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])}


def test_the_promql_reader_finds_metrics_labels_and_grouping():
    selectors, grouping = promql_parts(
        'histogram_quantile(0.95, sum by (le, channel) (rate(otp_delivery_seconds_bucket{channel="sms"}[5m])))'
        ' / ignoring(x) max(up{job="otp-api", status=~"5.."}) and on() vector(1) > 0.5')
    assert selectors == [("otp_delivery_seconds_bucket", [("channel", "=", "sms")]),
                         ("up", [("job", "=", "otp-api"), ("status", "=~", "5..")])]
    assert grouping == {"le", "channel", "x"}


@pytest.mark.django_db(transaction=True)
def test_every_metric_and_label_the_dashboard_and_alerts_query_is_exposed(stack, inbox, sms):
    # Real traffic through nginx, one of each outcome the queries name: an email sent and its code verified (one
    # wrong try first), an SMS retried then refused for good by Twilio, a login without an account, and a number
    # the SMS rules refuse. Four sends: the stack allows a client five a minute.
    assert post(stack, "/register/", {"email": "dash@example.com"}).status_code == 202
    code = code_from_email(inbox.wait_for_message("dash@example.com"))
    wrong = "000000" if code != "000000" else "111111"
    assert post(stack, "/verify-otp/", {"email": "dash@example.com", "code": wrong}).status_code == 400
    assert post(stack, "/verify-otp/", {"email": "dash@example.com", "code": code}).status_code == 200
    sms.script.extend([500, 400])
    assert post(stack, "/register/", {"mobile": "+14155552001"}).status_code == 202
    assert post(stack, "/login/", {"email": "nobody-here@example.com"}).status_code == 202
    assert post(stack, "/register/", {"mobile": "+442079460000"}).json()["code"] == "number_not_allowed"

    def exposed():
        text = requests.get(f"http://127.0.0.1:{stack.api_port}/metrics", timeout=10).text
        samples: dict[str, dict[str, set[str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = samples.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    labels.setdefault(label, set()).add(value)
        # Counts are written to Redis once a second by each process: wait until every outcome is in.
        statuses = samples.get("otp_deliveries_total", {}).get("status", set())
        ready = ({"sent", "failed", "no_account"} <= statuses and "otp_delivery_retries_total" in samples
                 and "otp_sms_refused_total" in samples)
        return samples if ready else None

    samples = wait_for(exposed, timeout=30, message="every delivery outcome in /metrics")
    queries = {**{f"alert {name}": expr for name, expr in alert_expressions().items()},
               **{f"panel {name}": expr for name, expr in dashboard_expressions().items()}}
    assert len(queries) > 15
    problems = []
    for where, expr in queries.items():
        selectors, grouping = promql_parts(expr)
        assert selectors, f"{where}: no metric found in {expr!r}"
        known_labels = set(TARGET_LABELS)
        for metric, matchers in selectors:
            if metric in SCRAPE_METRICS:
                continue
            if metric not in samples:
                problems.append(f"{where}: {metric} is not in /metrics")
                continue
            known_labels |= set(samples[metric])
            for label, operator, value in matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in samples[metric]:
                    problems.append(f"{where}: {metric} has no label {label}")
                elif operator == "=" and value not in samples[metric][label]:
                    problems.append(f"{where}: {metric}{{{label}={value!r}}} never appeared "
                                    f"(seen: {sorted(samples[metric][label])})")
        for label in grouping - known_labels:
            problems.append(f"{where}: groups by {label}, which none of its metrics has")
    assert not problems, "\n".join(problems)


def promtool() -> str:
    path = shutil.which("promtool")
    # Not a skip: an unchecked rules file is how an alert that can never fire gets shipped.
    assert path, "promtool is missing: `make promtool` installs Debian's prometheus package, which has it"
    return path


def test_the_alert_rules_are_valid_and_fire_as_their_unit_tests_say():
    checked = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool checks expressions only inside rule files: each panel query becomes a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr}
        for index, expr in enumerate(dashboard_expressions().values())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "otp-login" and all(
        target["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"] for target in panel.get("targets", []))
