"""The Grafana dashboards of deploy/grafana as the tests read them: every panel's PromQL,
the template variables, and the substitution Grafana makes before it queries Prometheus.

PromQL is not parsed here, only tokenised: enough to name the metrics and labels an
expression uses (strings, ranges and label matchers are told apart), while Prometheus
itself (promtool offline, a real server in the lab) judges the syntax.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcp.kpi.prometheus import Prometheus, Sample

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"

#: Grafana's own variables in Prometheus queries, and what the tests put in their place: a
#: rate window of four lab scrape intervals and more, a step, a dashboard range.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
#: `$name`, `${name}` and `${name:format}` (Grafana's variable syntax).
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_NAME = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_OFFSET = re.compile(r"\boffset\s+\w+")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "inf", "nan"}
#: `label_values(selector, label)` of a Prometheus query variable.
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\s*\)", re.DOTALL)
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel's target."""

    dashboard: str
    panel: str
    ref: str
    expr: str
    legend: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


@dataclass(frozen=True)
class Variable:
    """A query variable: `label_values(selector, label)`, with Grafana's optional regex
    (its first capture group is the value)."""

    name: str
    selector: str
    label: str
    regex: str

    def values(self, found: list[str]) -> list[str]:
        """The variable's options from the label's values, as Grafana derives them."""
        if not self.regex:
            return sorted(set(found))
        pattern = re.compile(self.regex.removeprefix("/").removesuffix("/"))
        values = set()
        for value in found:
            match = pattern.search(value)
            if match:
                values.add(match.group(1) if match.groups() else match.group(0))
        return sorted(values)


def paths() -> list[Path]:
    return sorted(GRAFANA.glob("*.json"))


def load(path: Path) -> Json:
    found: Json = json.loads(path.read_text())
    return found


def panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, rows' own panels included (a collapsed row holds its panels)."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: Json) -> Iterator[Query]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(
                dashboard["uid"], panel["title"], target["refId"], target["expr"], target["legendFormat"]
            )


def variables(dashboard: Json) -> list[Variable]:
    """The query variables in their order (each may use the ones before it)."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.fullmatch(text.strip())
        assert match, f"{dashboard['uid']}: variable {variable['name']} is not label_values(...): {text}"
        found.append(
            Variable(variable["name"], match.group(1).strip(), match.group(2), variable.get("regex", ""))
        )
    return found


def used_variables(text: str) -> set[str]:
    """The variables a text refers to (`$1` of a label_replace is not one)."""
    return {a or b for a, b in _VARIABLE.findall(text)} - {str(n) for n in range(10)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with Grafana's variables replaced by `values` and the builtins; a variable
    without a value is an error (Grafana would send it to Prometheus as is)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():
            return match.group(0)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in values:
            raise KeyError(f"no value for ${name} in {text}")
        return values[name]

    return _VARIABLE.sub(one, text)


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or labels)."""
    text = _without_strings(expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    text = _without_strings(expr)
    found = set()
    for matchers in _MATCHERS.findall(text):
        found.update(_MATCHER_NAME.findall(matchers))
    for grouping in _GROUPING.findall(text):
        found.update(name.strip() for name in grouping.split(",") if name.strip())
    return found


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND_LABEL.findall(legend))


#: Who answers an expression in the tests: the lab's Prometheus, or one scraping a process
#: the lab does not run (the injector; a controller watching a Kubernetes API).
LAB, INJECTOR, KUBERNETES = "lab", "injector", "kubernetes"


def scraped_from(expr: str) -> str:
    """Which Prometheus of the tests has the data of an expression (`LAB`, `INJECTOR` or
    `KUBERNETES`)."""
    names = metric_names(expr)
    if names and all(name.startswith("meshcp_injector_") for name in names):
        return INJECTOR
    if any(name.startswith("meshcp_kubernetes_") for name in names):
        return KUBERNETES
    return LAB


async def variable_values(
    client: Prometheus, dashboard: Json, preferred: Mapping[str, str], needed: set[str]
) -> dict[str, str]:
    """A value for each variable in `needed` (and those they depend on), evaluated in order
    against one Prometheus as Grafana does: the options from the variable's own query (with
    the earlier values substituted) must include the `preferred` value, if any; else the
    first option is taken. No option is an error."""
    found = variables(dashboard)
    for variable in reversed(found):
        if variable.name in needed:
            needed |= used_variables(variable.selector)
    values: dict[str, str] = {}
    for variable in found:
        if variable.name not in needed:
            continue
        selector = substitute(variable.selector, values)
        answer = await client.query(f"group by ({variable.label}) ({selector})")
        options = variable.values([sample.labels[variable.label] for sample in answer])
        assert options, f"{dashboard['uid']}: variable {variable.name} has no values ({selector})"
        wanted = preferred.get(variable.name)
        assert wanted is None or wanted in options, f"{variable.name}: {wanted!r} not in {options}"
        values[variable.name] = wanted or options[0]
    return values


async def expressions(
    client: Prometheus, source: str, preferred: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """Every panel expression of every dashboard whose data `source` has, by
    `dashboard / panel / refId`, its variables substituted with values from `client`
    (`preferred` values by dashboard uid, where given)."""
    found = {}
    for path in paths():
        dashboard = load(path)
        mine = [query for query in queries(dashboard) if scraped_from(query.expr) == source]
        if not mine:
            continue
        needed = set().union(*(used_variables(query.expr) for query in mine))
        values = await variable_values(client, dashboard, preferred.get(dashboard["uid"], {}), needed)
        found.update({query.name: substitute(query.expr, values) for query in mine})
    return found


async def evaluate(client: Prometheus, expressions: Mapping[str, str]) -> dict[str, list[Sample]]:
    """Each expression's instant vector at now, by name (an empty list: no data)."""
    return {name: await client.query(expr) for name, expr in expressions.items()}
