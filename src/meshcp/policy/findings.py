"""What `meshcp analyze` reports: a finding (code, object, field, message, location) and
the catalogue of codes, each with its severity. The codes never change meaning (scripts
and CI match on them); docs/cli.md lists them."""

from __future__ import annotations

from dataclasses import dataclass

from meshcp.model.meta import ObjectRef

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    severity: str
    title: str


def _catalog(*codes: Code) -> dict[str, Code]:
    return {code.code: code for code in codes}


#: Every code `analyze` can report; never renumbered (scripts and CI match on them).
CODES: dict[str, Code] = _catalog(
    Code("MCP0001", ERROR, "a manifest file is not YAML, JSON or UTF-8"),
    Code("MCP0002", ERROR, "an object is invalid: a field has a wrong value"),
    Code("MCP0003", WARNING, "a manifest's kind or apiVersion is not one meshcp reads; it is ignored"),
    Code("MCP0004", WARNING, "an object is defined twice; the first definition is used"),
    Code("MCP0005", ERROR, "the source cannot be read"),
    Code("MCP0101", ERROR, "a TrafficTarget names a ServiceAccount that does not exist"),
    Code("MCP0102", ERROR, "a TrafficTarget names a namespace that is not known"),
    Code("MCP0103", ERROR, "a TrafficTarget or TrafficSplit names a route that does not exist"),
    Code("MCP0104", ERROR, "a TrafficTarget or TrafficSplit names a route that is invalid"),
    Code("MCP0105", ERROR, "a TrafficTarget names an HTTPRouteGroup match that the group does not have"),
    Code("MCP0106", WARNING, "a pod runs as a ServiceAccount that does not exist"),
    Code("MCP0107", ERROR, "a Service's targetPort names a port the pod does not have"),
    Code("MCP0108", WARNING, "an EndpointSlice names a Service that does not exist"),
    Code("MCP0201", WARNING, "a TrafficTarget allows nothing"),
    Code("MCP0202", WARNING, "a TrafficTarget is shadowed: another one already allows all it allows"),
    Code("MCP0203", INFO, "a TrafficTarget's destination has no meshed pod (yet)"),
    Code("MCP0204", WARNING, "a TrafficTarget is in a namespace outside the mesh"),
    Code("MCP0205", WARNING, "UDP routes are not supported"),
    Code("MCP0206", ERROR, "two pods claim one proxy UUID; neither is served"),
    Code("MCP0207", ERROR, "MeshConfig trustDomain is not the CA's"),
    Code("MCP0208", WARNING, "several MeshConfigs; only the first by name is used"),
    Code("MCP0209", WARNING, "a TrafficTarget source is in a namespace outside the mesh"),
    Code("MCP0210", WARNING, "an OSM MeshConfig field meshcp does not support; it is ignored"),
    Code("MCP0211", WARNING, "meshcp's MeshConfig overrides a setting of OSM's MeshConfig"),
    Code("MCP0212", WARNING, "several OSM MeshConfigs; only the first by namespace/name is used"),
    Code("MCP0213", WARNING, "an object's meshcp and OSM labels or annotations disagree; meshcp's is used"),
    Code("MCP0301", WARNING, "a Service port's protocol cannot be decided; http is assumed"),
    Code("MCP0302", INFO, "a Service port's appProtocol is not one meshcp knows; its name decides"),
    Code("MCP0303", WARNING, "a meshed Service has no clusterIP yet"),
    Code("MCP0401", ERROR, "a TrafficSplit's backend lacks a port of the apex service"),
    Code("MCP0402", ERROR, "a TrafficSplit's apex or backend Service does not exist"),
    Code("MCP0403", ERROR, "several TrafficSplits share one apex service; none applies"),
    Code("MCP0404", WARNING, "a TrafficSplit's weights are all zero"),
    Code("MCP0900", WARNING, "another problem found while building the policy"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its code, the object and the field (a path as `Field` names it) it is
    in, what is wrong; `location` (`file:line` of the field, or empty) is added by whoever
    knows where objects came from."""

    code: str
    ref: ObjectRef
    message: str
    field: str = ""
    location: str = ""

    @property
    def severity(self) -> str:
        return CODES[self.code].severity

    def line(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field = f" {self.field}:" if self.field else ":"
        return f"{where}{self.severity} {self.code} {self.ref}{field} {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "object": str(self.ref),
            "field": self.field,
            "location": self.location,
            "message": self.message,
        }
