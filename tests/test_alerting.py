"""Alerts, runbooks, Alertmanager and the Grafana dashboard (docs/alerting.md), checked with no
server: promtool and amtool (Debian `prometheus`, `prometheus-alertmanager`) do what they can,
the rest reads the files.

Metric names are checked against the catalogue in docs/metrics.md: any `lakeward_*` name it
mentions, and the library families it lists as `` `prefix_*` `` (temporal_, process_, python_).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from lakeward.cli.main import app as lakeward_app

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "docker" / "prometheus"
RULES = PROMETHEUS / "rules" / "lakeward.yml"
RULE_TESTS = PROMETHEUS / "tests" / "lakeward.test.yml"
ALERTMANAGER = REPO / "docker" / "alertmanager" / "alertmanager.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "lakeward.json"
RUNBOOKS = REPO / "docs" / "runbooks"
METRICS_DOC = REPO / "docs" / "metrics.md"
TEMPORAL_CLI = Path(sys.executable).parent / "temporal"

#: Series Prometheus makes itself: the scrape's `up` and the alerts' `ALERTS`.
PROMETHEUS_SERIES = {"up", "ALERTS"}
#: Words of PromQL that look like metric names in an expression.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
#: Grafana's variables, as PromQL promtool can parse.
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
RUNBOOK_SECTIONS = ["## What it means", "## Impact", "## Diagnosis", "## Remediation",
                    "## Escalate when"]  # fmt: skip
STAGE_ROWS = ["Capture", "Apply", "Reconcile", "API"]
REDS = ["rate", "error", "duration", "saturation"]


# --- tools -------------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: it comes from the Debian package {package}; scripts/setup.sh "
            f"installs it, or: sudo apt-get install -y {package}"
        )
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [_tool("promtool", "prometheus"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [_tool("amtool", "prometheus-alertmanager"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# --- the files, parsed -------------------------------------------------------------------------


@cache
def _yaml(path: Path) -> Any:
    """A YAML file, parsed once per session (callers only read it)."""
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _rule_tests() -> list[dict[str, Any]]:
    return [case for test in _yaml(RULE_TESTS)["tests"] for case in test["alert_rule_test"]]


@cache
def _catalogue() -> tuple[frozenset[str], frozenset[str]]:
    """Metric names and library family prefixes that docs/metrics.md documents."""
    if not METRICS_DOC.exists():
        pytest.fail("docs/metrics.md, the metric catalogue (issue 7, metrics), is missing")
    text = METRICS_DOC.read_text()
    names = frozenset(re.findall(r"\blakeward_[a-z0-9_]+", text))
    # Library families, listed as `prefix_*`; `lakeward_*` is Lakeward's own, named one by one.
    families = frozenset(re.findall(r"`([a-z]+_)\*`", text)) - {"lakeward_"}
    return names, families


def _is_known_metric(name: str) -> bool:
    names, families = _catalogue()
    if name in PROMETHEUS_SERIES or name in _recorded():
        return True
    if any(name.startswith(prefix) for prefix in families):
        return True
    # A histogram's samples and a counter's name with or without the suffix.
    stems = {name, re.sub(r"_(bucket|sum|count)$", "", name), name.removesuffix("_total")}
    return bool(stems & names) or f"{name}_total" in names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Not a parser: strings, label matchers, ranges and label lists are cut away, and what is left
    that reads as a name and is not a function or keyword is a metric. A `{__name__=~"..."}`
    selector contributes the literal prefix of its regex.
    """
    names = {
        re.match(r"[a-zA-Z_:][\w:]*", regex).group(0)  # type: ignore[union-attr]
        for regex in re.findall(r'__name__\s*=~?\s*"([a-zA-Z_:][^"]*)"', expr)
    }
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def _as_promql(expr: str) -> str:
    """A Grafana query with its variables replaced, for promtool."""
    for variable, duration in GRAFANA_RANGES.items():
        expr = expr.replace(variable, duration)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    dashboard = _dashboard()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: not label_values(selector, label)"
            yield f"variable {variable['name']}", match.group(1)


def _runbook_blocks(path: Path, language: str) -> Iterator[str]:
    yield from re.findall(rf"^ *```{language}\n(.*?)^ *```", path.read_text(), re.M | re.S)


def _runbook_promql() -> Iterator[tuple[str, str]]:
    for path in sorted(RUNBOOKS.glob("Lakeward*.md")):
        for block in _runbook_blocks(path, "promql"):
            for line in block.splitlines():
                if line.strip():
                    yield path.name, line.strip()


def _runbook_commands() -> Iterator[tuple[str, list[str]]]:
    """(runbook, argv) of each command in the runbooks' sh blocks; pipes split into commands."""
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in _runbook_blocks(path, "sh"):
            for line in block.replace("\\\n", " ").splitlines():
                argv: list[str] = []
                for token in [*shlex.split(line, comments=True), "|"]:
                    if token in {"|", "&&", ">"}:
                        if argv:
                            yield path.name, argv
                        argv = []
                    else:
                        argv.append(token)


def _check_promql_parses(exprs: list[tuple[str, str]], tmp_path: Path) -> None:
    """promtool check rules over the expressions, as recording rules."""
    rules = [{"record": f"lakeward_check:expr{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _matchers(matchers: list[str]) -> list[tuple[str, str, str]]:
    parsed = []
    for matcher in matchers:
        match = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*', matcher)
        assert match, f"cannot read the matcher {matcher!r}"
        parsed.append((match.group(1), match.group(2), match.group(3)))
    return parsed


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    """Whether an alert's static labels (alertname and the rule's labels) fit the matchers."""
    for name, op, value in matchers:
        actual = labels.get(name, "")
        fits = re.fullmatch(value, actual) if "~" in op else actual == value
        if bool(fits) == op.startswith("!"):
            return False
    return True


def _static_labels(name: str) -> dict[str, str]:
    return {"alertname": name, **_alerts()[name].get("labels", {})}


# --- Prometheus: config, rules and their unit tests --------------------------------------------


def test_prometheus_config_and_rules_pass_promtool_check() -> None:
    for args in (
        ["check", "config", str(PROMETHEUS / "prometheus.yml")],  # its rule files too
        ["check", "rules", str(RULES)],
    ):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_the_rules_the_tests_cover() -> None:
    config = _yaml(PROMETHEUS / "prometheus.yml")
    loaded = {path for pattern in config["rule_files"] for path in PROMETHEUS.glob(pattern)}
    assert RULES in loaded
    tested = {(RULE_TESTS.parent / p).resolve() for p in _yaml(RULE_TESTS)["rule_files"]}
    assert tested == {RULES.resolve()}


def test_scrape_jobs_are_the_ones_the_alerts_select() -> None:
    jobs = {job["job_name"] for job in _yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    assert {"lakeward-worker", "lakeward-api", "temporal"} <= jobs
    exprs = " ".join(rule["expr"] for rule in _alerts().values())
    for selected in re.findall(r'job\s*=~?\s*"([^"]+)"', exprs):
        assert any(re.fullmatch(selected, job) for job in jobs), f"job {selected} is not scraped"


def test_every_alert_has_severity_summary_description_and_its_runbook_url() -> None:
    alerts = _alerts()
    assert len(alerts) >= 11
    for name, rule in alerts.items():
        assert name.startswith("Lakeward"), name
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook_url") == f"docs/runbooks/{name}.md", name


def test_the_issue_s_alert_families_are_all_there() -> None:
    alerts = " ".join(rule["expr"] for rule in _alerts().values())
    for needle in [
        "pipeline:lakeward_freshness_slo_errors:ratio_rate1h",
        "pipeline:lakeward_freshness_slo_errors:ratio_rate6h",
        "pipeline:lakeward_batch_errors:ratio_rate1h",
        "pipeline:lakeward_batch_errors:ratio_rate6h",
        "lakeward_reconcile_differences",
        "lakeward_dead_letters_total",
        "lakeward_kafka_backlog_records",
        'up{job=~"lakeward-.*"}',
        'up{job="temporal"}',
        "temporal_request_failure",
        "temporal_long_request_failure",
        "lakeward_circuit_breaker_state",
        "lakeward_retries_total",
    ]:
        assert needle in alerts, f"no alert on {needle}"


def test_every_alert_fires_in_a_test_case_and_each_family_has_a_silent_case() -> None:
    fired = {case["alertname"] for case in _rule_tests() if case.get("exp_alerts")}
    silent = {case["alertname"] for case in _rule_tests() if not case.get("exp_alerts")}
    alerts = set(_alerts())
    assert alerts <= fired, f"never shown firing: {sorted(alerts - fired)}"

    def family(name: str) -> str:
        return re.sub(r"(Fast|Slow)$", "", name)

    missing = {family(name) for name in alerts} - {family(name) for name in silent}
    assert not missing, f"no case where these stay silent: {sorted(missing)}"


# --- runbooks ----------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_that_names_it() -> None:
    for name in _alerts():
        path = RUNBOOKS / f"{name}.md"
        assert path.exists(), f"{name} has no runbook at {path.relative_to(REPO)}"
        text = path.read_text()
        assert text.startswith(f"# {name}\n"), f"{path.name} must start with '# {name}'"
        positions = [text.find(section) for section in RUNBOOK_SECTIONS]
        assert -1 not in positions and positions == sorted(positions), (
            f"{path.name} needs the sections {RUNBOOK_SECTIONS}, in that order"
        )
        assert "```promql" in text and "```sh" in text, f"{path.name}: PromQL and commands"


def test_every_runbook_belongs_to_an_alert_and_the_index_lists_them_all() -> None:
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == set(_alerts()), "runbooks without an alert or alerts without a runbook"
    index = (RUNBOOKS / "README.md").read_text()
    for name in pages:
        assert f"[{name}]({name}.md)" in index, f"docs/runbooks/README.md does not list {name}"


def test_runbook_promql_parses_and_names_only_catalogued_metrics(tmp_path: Path) -> None:
    queries = list(_runbook_promql())
    assert len(queries) >= 20
    _check_promql_parses(queries, tmp_path)
    for where, expr in queries:
        unknown = {name for name in metric_names(expr) if not _is_known_metric(name)}
        assert not unknown, f"{where}: {expr} names {unknown}, not in docs/metrics.md"


def _lakeward_command(argv: list[str]) -> tuple[Any, list[str]]:
    """The click command an argv names, and the arguments left. (Typer 0.29 vendors click, so
    a group is recognised by its `commands`, not by click's classes.)"""
    command: Any = typer.main.get_command(lakeward_app)
    rest = argv[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands"), f"{argv}: no such lakeward command"
    return command, rest


def _flags(argv: list[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in argv if token.startswith("-") and token != "-"}


@cache
def _help(argv: tuple[str, ...]) -> str:
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(argv)} --help: {result.stderr}"
    return result.stdout + result.stderr


@cache
def _temporal_global_options() -> str:
    """`temporal options`: --address, --namespace and the other flags every command takes."""
    argv = [str(TEMPORAL_CLI), "options"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def _subcommand(argv: list[str]) -> list[str]:
    words = []
    for token in argv[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        words.append(token)
    return words


def test_runbook_commands_exist_with_the_flags_they_use() -> None:
    checked = set()
    for runbook, argv in _runbook_commands():
        tool = argv[0]
        if tool in {"lakeward", ".venv/bin/lakeward"}:
            command, rest = _lakeward_command(argv)
            known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
            unknown = _flags(rest) - known
            assert not unknown, f"{runbook}: {shlex.join(argv)}: no option {unknown}"
        elif tool == "temporal":
            words = _subcommand(argv)
            text = _help((str(TEMPORAL_CLI), *words))
            assert f"temporal {' '.join(words)} [flags]" in text, f"{runbook}: {argv}"
            text += _temporal_global_options()
            for flag in _flags(argv):
                assert re.search(rf"{flag}\b", text), f"{runbook}: {shlex.join(argv)}: {flag}"
        elif tool == "amtool":
            words = _subcommand(argv)
            text = _help((_tool("amtool", "prometheus-alertmanager"), *words))
            assert f"usage: amtool {' '.join(words)} " in text, f"{runbook}: {argv}"
            for flag in _flags(argv):
                assert re.search(rf"{re.escape(flag)}\b", text), f"{runbook}: {flag}"
        elif tool.startswith("scripts/ops/"):
            script = REPO / tool
            assert script.is_file() and script.stat().st_mode & 0o111, f"{runbook}: {tool}"
        else:
            continue
        checked.add(tool.rpartition("/")[2])
    assert {"lakeward", "temporal", "amtool"} <= checked


# --- Alertmanager ------------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool() -> None:
    result = _amtool("check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "pipeline=orders"], "page"),
        (["severity=critical", "alertname=LakewardTargetDown", "job=lakeward-worker"], "page"),
        (["severity=warning", "pipeline=orders"], "ticket"),
        (["severity=info"], "ticket"),
    ],
)
def test_alertmanager_routes_critical_to_page_and_warning_to_ticket(
    labels: list[str], receiver: str
) -> None:
    result = _amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}", *labels,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_groups_by_pipeline() -> None:
    route = _yaml(ALERTMANAGER)["route"]
    assert route["group_by"] == ["pipeline"]


def test_inhibition_rules_name_existing_alerts_and_labels_they_keep() -> None:
    rules = _yaml(ALERTMANAGER)["inhibit_rules"]
    exp_labels: dict[str, list[dict[str, str]]] = {}
    for case in _rule_tests():
        for alert in case.get("exp_alerts") or []:
            exp_labels.setdefault(case["alertname"], []).append(alert["exp_labels"])
    for rule in rules:
        sides = [_matchers(rule["source_matchers"]), _matchers(rule["target_matchers"])]
        for matchers in sides:
            named = [name for name in _alerts() if _matches(_static_labels(name), matchers)]
            assert named, f"inhibit rule {rule}: {matchers} match no alert"
            for name in named:
                for labels in exp_labels[name]:
                    missing = set(rule["equal"]) - set(labels)
                    assert not missing, f"{name} fires without {missing}, which {rule} compares"


def test_inhibition_mutes_what_the_issue_asks() -> None:
    def mutes(source: str, target: str) -> bool:
        return any(
            _matches(_static_labels(source), _matchers(rule["source_matchers"]))
            and _matches(_static_labels(target), _matchers(rule["target_matchers"]))
            for rule in _yaml(ALERTMANAGER)["inhibit_rules"]
        )

    for target in ["LakewardNoApplyProgress", "LakewardFreshnessBudgetBurnFast",
                   "LakewardErrorBudgetBurnSlow"]:  # fmt: skip
        assert mutes("LakewardTargetDown", target)
    assert mutes("LakewardCircuitBreakerOpen", "LakewardErrorBudgetBurnFast")
    assert not mutes("LakewardCircuitBreakerOpen", "LakewardFreshnessBudgetBurnFast")
    assert mutes("LakewardFreshnessBudgetBurnFast", "LakewardFreshnessBudgetBurnSlow")
    assert not mutes("LakewardTargetDown", "LakewardReconcileDifferences")


def test_compose_fills_the_webhook_urls_into_a_valid_config(tmp_path: Path) -> None:
    from tests.test_compose import _services

    service = _services()["alertmanager"]
    assert service["entrypoint"] == ["/bin/sh", "-ec"]
    script = service["command"][0].replace("$$", "$")
    prepare, _, start = script.partition(" && exec ")
    assert start.startswith("/bin/alertmanager --config.file=/alertmanager/alertmanager.yml")
    written = tmp_path / "alertmanager.yml"
    prepare = prepare.replace("/etc/alertmanager/alertmanager.yml", str(ALERTMANAGER))
    prepare = prepare.replace("> /alertmanager/alertmanager.yml", f"> {written}")
    urls = {
        "ALERTMANAGER_PAGE_WEBHOOK_URL": "https://hooks.example.com/page/T0KEN?x=1",
        "ALERTMANAGER_TICKET_WEBHOOK_URL": "https://tickets.example.com/api/alerts",
    }
    for env in (service["environment"], urls):
        subprocess.run(["/bin/sh", "-ec", prepare], env=env, check=True, timeout=30)
        result = _amtool("check-config", str(written))
        assert result.returncode == 0, result.stdout + result.stderr
        config = yaml.safe_load(written.read_text())
        receivers = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
        expected = env["ALERTMANAGER_PAGE_WEBHOOK_URL"], env["ALERTMANAGER_TICKET_WEBHOOK_URL"]
        assert (receivers["page"], receivers["ticket"]) == expected


# --- Grafana -----------------------------------------------------------------------------------


def test_dashboard_queries_parse_and_name_only_catalogued_metrics(tmp_path: Path) -> None:
    queries = list(_dashboard_queries())
    assert len(queries) >= 40
    _check_promql_parses([(where, _as_promql(expr)) for where, expr in queries], tmp_path)
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: {expr} names no metric"
        unknown = {name for name in names if not _is_known_metric(name)}
        assert not unknown, f"{where}: {expr} names {unknown}, not in docs/metrics.md"


def test_alert_rules_name_only_catalogued_metrics() -> None:
    for rule in _rules():
        unknown = {name for name in metric_names(rule["expr"]) if not _is_known_metric(name)}
        where = rule.get("alert") or rule.get("record")
        assert not unknown, f"{where} names {unknown}, not in docs/metrics.md"


def test_metric_names_sees_what_a_query_selects() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, pipeline) (rate(lakeward_freshness_seconds_bucket"
        '{pipeline=~"$pipeline", le="60"}[$__rate_interval]))) / on (job) group_left (x) '
        'max(up offset 5m) and rate({__name__=~"temporal_request(_total)?"}[5m]) > 1e3'
    )
    assert metric_names(expr) == {"lakeward_freshness_seconds_bucket", "up", "temporal_request"}
    assert not _is_known_metric("lakeward_no_such_metric_total")


def test_dashboard_has_a_reds_row_per_stage() -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    current = None
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"].split(" ")[0], [])
        elif current is not None:
            current.append(panel)
    for stage in STAGE_ROWS:
        panels = rows.get(stage)
        assert panels, f"no row for {stage}"
        titles = " ".join(panel["title"].lower() for panel in panels)
        for word in REDS:
            assert word in titles, f"the {stage} row has no {word} panel"
        quantiles = [
            target["expr"]
            for panel in panels
            if "duration" in panel["title"].lower()
            for target in panel["targets"]
        ]
        for q in ("0.5", "0.95", "0.99"):
            assert any(f"histogram_quantile({q}," in expr for expr in quantiles), (stage, q)


def test_dashboard_business_panels_are_there() -> None:
    exprs = " ".join(expr for _, expr in _dashboard_queries())
    for metric in [
        "lakeward_freshness_seconds_bucket", "lakeward_freshness_lag_seconds",
        "lakeward_kafka_backlog_records", "lakeward_apply_records_total",
        "lakeward_snapshot_progress_ratio", "lakeward_reconcile_differences",
        "lakeward_dead_letters_total", "lakeward_circuit_breaker_state",
    ]:  # fmt: skip
        assert metric in exprs, f"no panel shows {metric}"


def test_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    sources = _yaml(GRAFANA / "provisioning" / "datasources" / "datasources.yml")["datasources"]
    prometheus_uid = next(s["uid"] for s in sources if s["type"] == "prometheus")
    taken: set[tuple[int, int]] = set()
    ids = set()
    for panel in _dashboard()["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == prometheus_uid, panel["title"]
        pos = panel["gridPos"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert pos["x"] + pos["w"] <= 24 and not cells & taken, f"{panel['title']} overlaps"
        taken |= cells


def test_compose_provisions_the_dashboard_directory() -> None:
    from tests.test_compose import _services

    provider = _yaml(GRAFANA / "provisioning" / "dashboards" / "lakeward.yml")["providers"][0]
    mounts = {
        volume["target"]: Path(volume["source"])
        for volume in _services()["grafana"]["volumes"]
        if volume["type"] == "bind"
    }
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
