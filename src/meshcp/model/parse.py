"""Kubernetes-style manifests -> model objects, with a precise reason for anything invalid.

Pure (no I/O): the file source and the Kubernetes source both call `parse_object`, so an
object means the same thing whichever way it arrived, and a bad one is reported the same
way — which field, what is wrong — and skipped, instead of taking the mesh down or being
half-applied. Only the fields meshcp uses are read; other Kubernetes fields are ignored,
except in meshcp's own MeshConfig, where an unknown field is almost always a typo.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from meshcp.model.core import (
    PROTOCOLS,
    ContainerPort,
    EndpointSlice,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from meshcp.model.meshconfig import CERT_PROVIDERS, SIDECAR_LOG_LEVELS, MeshConfig
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.smi import (
    HTTPMatch,
    HTTPRouteGroup,
    IdentitySubject,
    SplitBackend,
    SplitMatch,
    TargetRule,
    TCPRoute,
    TrafficSplit,
    TrafficTarget,
    UDPRoute,
)
from meshcp.model.state import MeshObject

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: HTTP methods an HTTPRouteGroup may name (the SMI enum); "*" is every method.
HTTP_METHODS = ("*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


class InvalidObject(ValueError):
    """A manifest that cannot become a model object; `reason` says which field and why."""

    def __init__(self, ref: ObjectRef, reason: str) -> None:
        super().__init__(f"{ref}: {reason}" if ref.kind or ref.name else reason)
        self.ref = ref
        self.reason = reason


def parse_object(manifest: Mapping[str, Any]) -> MeshObject:
    """The model object a manifest describes; raises `InvalidObject` for anything invalid."""
    ref = ref_of(manifest)
    if not isinstance(manifest, Mapping):
        raise InvalidObject(ref, f"a manifest must be a mapping, got {_got(manifest)}")
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InvalidObject(ref, "kind: required")
    if not isinstance(api_version, str) or not api_version:
        raise InvalidObject(ref, "apiVersion: required")
    spec = _KINDS.get(kind)
    if spec is None:
        raise InvalidObject(ref, f"unsupported kind {kind} ({api_version})")
    if api_version not in spec.versions:
        supported = ", ".join(spec.versions)
        raise InvalidObject(ref, f"unsupported apiVersion {api_version} for {kind} (supported: {supported})")
    root = _Node(manifest, "")
    try:
        meta = _meta(root.field("metadata"), spec)
        return spec.build(root, meta, api_version)
    except _FieldError as error:
        raise InvalidObject(ref, str(error)) from None


def ref_of(manifest: object) -> ObjectRef:
    """Best-effort reference of a manifest, even an invalid one, so a problem can name it.

    Missing parts are empty; namespaced kinds without a namespace get "default" (as kubectl
    does), cluster-scoped kinds never have one.
    """
    if not isinstance(manifest, Mapping):
        return ObjectRef("", "", "")
    kind = manifest.get("kind")
    kind = kind if isinstance(kind, str) else ""
    metadata = manifest.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name = name if isinstance(name, str) else ""
    namespace = namespace if isinstance(namespace, str) else ""
    spec = _KINDS.get(kind)
    if spec is not None:
        namespace = (namespace or "default") if spec.namespaced else ""
    return ObjectRef(kind, namespace, name)


def port_protocol(app_protocol: str, name: str) -> str:
    """How a service port is spoken: appProtocol when it is one meshcp knows, else the port
    name's prefix (`tcp-server-first`, or the part before the first `-`, or the whole name),
    else http. An unknown appProtocol (Kubernetes allows implementation-specific values such
    as `kubernetes.io/h2c`) falls through to the name rule rather than rejecting the Service."""
    declared = app_protocol.lower()
    if declared in PROTOCOLS:
        return declared
    lowered = name.lower()
    if lowered == "tcp-server-first" or lowered.startswith("tcp-server-first-"):
        return "tcp-server-first"
    prefix = lowered.split("-", 1)[0]
    return prefix if prefix in PROTOCOLS else "http"


def re2_incompatibility(pattern: str) -> str | None:
    """Why Envoy's RE2 would refuse (or read differently) a pattern Python accepts, or None.

    Envoy compiles every regex with RE2, which has no backtracking features. A pattern that
    only Python understands would be NACKed by every proxy, so it is refused at the source.
    """
    return _Re2Scanner(pattern).problem()


# --- reading fields -------------------------------------------------------------------------


class _FieldError(Exception):
    """A field is wrong; the message starts with the field's path."""


@dataclass(frozen=True, slots=True)
class _Node:
    """A value in a manifest and the path that names it in messages (`spec.ports[0].port`)."""

    value: Any
    path: str

    def fail(self, problem: str) -> NoReturn:
        raise _FieldError(f"{self.path}: {problem}" if self.path else problem)

    @property
    def present(self) -> bool:
        return self.value is not None

    def mapping(self) -> Mapping[str, Any]:
        if self.value is None:
            return {}
        if not isinstance(self.value, Mapping):
            self.fail(f"must be a mapping, got {_got(self.value)}")
        for key in self.value:
            if not isinstance(key, str):
                self.fail(f"keys must be strings, got {_got(key)}")
        return self.value

    def field(self, key: str) -> _Node:
        return _Node(self.mapping().get(key), f"{self.path}.{key}" if self.path else key)

    def items(self) -> list[_Node]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            self.fail(f"must be a list, got {_got(self.value)}")
        return [_Node(item, f"{self.path}[{index}]") for index, item in enumerate(self.value)]

    def string(self, *, required: bool = False) -> str:
        if self.value is None or (required and self.value == ""):
            if required:
                self.fail("required")
            return ""
        if not isinstance(self.value, str):
            self.fail(f"must be a string, got {_got(self.value)}{_quote_hint(self.value)}")
        return self.value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            self.fail(f"must be true or false, got {_got(self.value)}")
        return self.value

    def port(self) -> int:
        value = self.value
        if value is None:
            self.fail("required")
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"must be a port number 1..65535, got {_got(value)}")
        if not 1 <= value <= 65535:
            self.fail(f"must be a port number 1..65535, got {value}")
        return value

    def string_map(self) -> Mapping[str, str]:
        values = self.mapping()
        for key, value in values.items():
            if not isinstance(value, str):
                _Node(value, f"{self.path}.{key}").string()
        return frozen_map(values)


def _got(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _quote_hint(value: object) -> str:
    """YAML turns `version: 1`, `on`, `2024-01-01` into non-strings; say how to keep text."""
    if isinstance(value, bool | int | float) or type(value).__name__ in ("date", "datetime"):
        return " (quote it to keep it text)"
    return ""


# --- names and values -----------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HEADER_NAME = re.compile(r":?[!#$%&'*+.^_`|~0-9a-z-]+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _dns_label(node: _Node, *, required: bool = True) -> str:
    """RFC 1123 label: namespaces, port names, most single-segment names."""
    value = node.string(required=required)
    if value and (len(value) > 63 or not _LABEL.fullmatch(value)):
        node.fail(
            "must be a DNS label (lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit, at most 63 characters), got {_got(value)}"
        )
    return value


def _dns_1035_label(node: _Node) -> str:
    """RFC 1035 label: Service names (they become DNS names, so they must start with a letter)."""
    value = node.string(required=True)
    if len(value) > 63 or not _LABEL_1035.fullmatch(value):
        node.fail(
            "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, "
            f"ending with a letter or digit, at most 63 characters), got {_got(value)}"
        )
    return value


def _dns_subdomain(node: _Node, *, required: bool = True) -> str:
    """RFC 1123 subdomain: the name rule of most Kubernetes kinds."""
    value = node.string(required=required)
    if value and (len(value) > 253 or not all(_LABEL.fullmatch(part) for part in value.split("."))):
        node.fail(
            "must be a DNS subdomain (dot-separated lowercase labels of letters, digits and '-', "
            f"at most 253 characters), got {_got(value)}"
        )
    return value


def _port_name(node: _Node) -> str:
    """IANA service name: a container port name, or a Service targetPort given by name."""
    value = node.string()
    if value and (len(value) > 15 or not _PORT_NAME.fullmatch(value) or "--" in value or value.isdigit()):
        node.fail(
            "must be a port name (at most 15 lowercase letters, digits and single '-', with at "
            f"least one letter), got {_got(value)}"
        )
    return value


def _ip(node: _Node) -> str:
    value = node.string()
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            node.fail(f"must be an IP address, got {_got(value)}")
    return value


def _duration(node: _Node) -> float:
    """Go/Kubernetes duration ("100ms", "1h30m", "0") in seconds."""
    value = node.value
    if not isinstance(value, str):
        node.fail(f'must be a duration such as "100ms", "1s" or "24h", got {_got(value)}')
    if value == "0":
        return 0.0
    seconds, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or not value:
        node.fail(
            f'must be a duration such as "100ms", "1s" or "24h" (ns, us, ms, s, m, h), got {_got(value)}'
        )
    return seconds


def _regex(node: _Node) -> str:
    pattern = node.string()
    reason = re2_incompatibility(pattern)
    if reason is not None:
        node.fail(f"{reason}, in {_got(pattern)}")
    try:
        re.compile(pattern)
    except re.error as error:
        node.fail(f"invalid regular expression {_got(pattern)}: {error}")
    return pattern


# --- RE2 compatibility ----------------------------------------------------------------------

_RE2_ESCAPES = frozenset("dDsSwWbBAafnrtvx0")
_RE2_CLASS_ESCAPES = frozenset("dDsSwWafnrtvx0")
_RE2_FLAGS = frozenset("ims")
_PY_FLAGS = frozenset("aiLmsux-")
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_PY_ONLY_QUANTIFIER = re.compile(r"\{,\d+\}")
_RE2_MAX_REPEAT = 1000


class _Re2Scanner:
    """One left-to-right pass over a pattern, looking for what RE2 lacks.

    RE2 has no backreferences, lookaround, atomic groups, possessive quantifiers,
    conditionals, comments or verbose mode, knows no `\\Z`, `\\u`, `\\N{...}`, reads `{,n}`
    as text and `[[` as a POSIX class, and refuses repeat counts above 1000. Syntax errors
    are left to Python's compiler, which runs after this and words them better.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.index = 0
        self.after_quantifier = False

    def problem(self) -> str | None:
        while self.index < len(self.pattern):
            problem = self._step()
            if problem is not None:
                return problem
        return None

    def _step(self) -> str | None:
        pattern, index = self.pattern, self.index
        char = pattern[index]
        if char in "*+?":
            return self._quantifier(char, 1)
        if char == "{":
            if _PY_ONLY_QUANTIFIER.match(pattern, index):
                return "'{,n}' is text to RE2 (Envoy): write {0,n}"
            quantifier = _QUANTIFIER.match(pattern, index)
            if quantifier:
                counts = [int(count) for count in quantifier.groups() if count]
                if any(count > _RE2_MAX_REPEAT for count in counts):
                    return f"repeat counts above {_RE2_MAX_REPEAT} are not supported by RE2 (Envoy)"
                return self._quantifier("{", len(quantifier.group(0)))
        self.after_quantifier = False
        if char == "\\":
            return self._escape(in_class=False)
        if char == "[":
            return self._class()
        self.index += 1
        if char == "(" and pattern[index + 1 : index + 2] == "?":
            self.index += 1
            return _group_problem(pattern[index + 2 :])
        return None

    def _quantifier(self, token: str, length: int) -> str | None:
        if self.after_quantifier and token == "+":
            return "possessive quantifiers (such as *+) are not supported by RE2 (Envoy)"
        # `*?` is a lazy quantifier (fine in RE2); a quantifier after it is Python's error.
        self.after_quantifier = not (self.after_quantifier and token == "?")
        self.index += length
        return None

    def _escape(self, *, in_class: bool) -> str | None:
        escaped = self.pattern[self.index + 1 : self.index + 2]
        self.index += 2
        if not escaped or (escaped.isascii() and not escaped.isalnum()):
            return None  # punctuation is literal in both; a trailing "\" is Python's error
        if escaped in "123456789":
            if in_class:
                return f"octal escapes such as \\{escaped} are not portable to RE2 (Envoy): use \\x.."
            return f"backreferences (\\{escaped}) are not supported by RE2 (Envoy)"
        if escaped not in (_RE2_CLASS_ESCAPES if in_class else _RE2_ESCAPES):
            if escaped == "Z":
                return "\\Z is not supported by RE2 (Envoy): use $"
            return f"the escape \\{escaped} is not supported by RE2 (Envoy)"
        return None

    def _class(self) -> str | None:
        """A `[...]` set; a `]` right after `[` or `[^` is a literal."""
        pattern = self.pattern
        self.index += 2 if pattern[self.index + 1 : self.index + 2] == "^" else 1
        start = self.index
        while self.index < len(pattern):
            char = pattern[self.index]
            if char == "\\":
                problem = self._escape(in_class=True)
                if problem is not None:
                    return problem
                continue
            if char == "]" and self.index > start:
                self.index += 1
                return None
            if char == "[":
                return "'[' inside a character class is read differently by RE2 (Envoy): escape it as \\["
            pair = pattern[self.index : self.index + 2]
            if pair in ("--", "&&", "~~", "||"):
                return f"{pair!r} inside a character class is ambiguous: escape it"
            self.index += 1
        return None


def _group_problem(rest: str) -> str | None:
    """What RE2 lacks in the group extension that `rest` (the text after `(?`) starts."""
    if rest.startswith("P="):
        return "backreferences ((?P=name)) are not supported by RE2 (Envoy)"
    if rest[:1] in ("=", "!") or rest[:2] in ("<=", "<!"):
        return "lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not supported by RE2 (Envoy)"
    if rest.startswith(">"):
        return "atomic groups ((?>...)) are not supported by RE2 (Envoy)"
    if rest.startswith("("):
        return "conditional groups ((?(1)...)) are not supported by RE2 (Envoy)"
    if rest.startswith("#"):
        return "comments ((?#...)) are not supported by RE2 (Envoy)"
    flags = re.match(r"[a-zA-Z-]*", rest)
    letters = flags.group(0) if flags else ""
    if letters and set(letters) <= _PY_FLAGS:
        unsupported = sorted(set(letters) - _RE2_FLAGS - {"-"})
        if unsupported:
            return f"the flag {unsupported[0]!r} is not supported by RE2 (Envoy); only i, m and s are"
    return None


# --- metadata -------------------------------------------------------------------------------


def _meta(node: _Node, kind: _Kind) -> Meta:
    name = kind.name_rule(node.field("name"))
    namespace = ""
    if kind.namespaced:
        namespace = _dns_label(node.field("namespace"), required=False) or "default"
    return Meta(
        name=name,
        namespace=namespace,
        labels=node.field("labels").string_map(),
        annotations=node.field("annotations").string_map(),
    )


# --- Kubernetes core ------------------------------------------------------------------------


def _namespace(root: _Node, meta: Meta, version: str) -> Namespace:
    return Namespace(meta)


def _service_account(root: _Node, meta: Meta, version: str) -> ServiceAccount:
    return ServiceAccount(meta)


def _service(root: _Node, meta: Meta, version: str) -> Service:
    spec = root.field("spec")
    ports = tuple(_service_port(node) for node in spec.field("ports").items())
    seen: dict[tuple[int, str], int] = {}
    names: set[str] = set()
    for index, port in enumerate(ports):
        where = f"spec.ports[{index}]"
        if (port.port, port.transport) in seen:
            other = seen[(port.port, port.transport)]
            raise _FieldError(f"{where}.port: {port.port}/{port.transport} is also spec.ports[{other}]")
        seen[(port.port, port.transport)] = index
        if port.name and port.name in names:
            raise _FieldError(f"{where}.name: {port.name!r} is used by two ports")
        names.add(port.name)
    cluster_ip = spec.field("clusterIP")
    if cluster_ip.value != "None":
        _ip(cluster_ip)
    selector = spec.field("selector").string_map()
    return Service(
        meta=meta,
        ports=ports,
        # Kubernetes: an empty selector is no selector (endpoints are managed elsewhere).
        selector=selector or None,
        cluster_ip=cluster_ip.string(),
    )


def _service_port(node: _Node) -> ServicePort:
    port = node.field("port").port()
    name = _dns_label(node.field("name"), required=False)
    transport = node.field("protocol").string() or "TCP"
    if transport not in ("TCP", "UDP", "SCTP"):
        node.field("protocol").fail(f"must be TCP, UDP or SCTP, got {_got(transport)}")
    target = node.field("targetPort")
    target_port: int | str = port
    if isinstance(target.value, str) and target.value.isdigit():
        target_port = _Node(int(target.value), target.path).port()
    elif isinstance(target.value, str):
        target_port = _port_name(target)
    elif target.present:
        target_port = target.port()
    return ServicePort(
        port=port,
        target_port=target_port,
        protocol=port_protocol(node.field("appProtocol").string(), name),
        name=name,
        transport=transport,
    )


def _pod(root: _Node, meta: Meta, version: str) -> Pod:
    spec, status = root.field("spec"), root.field("status")
    account_field = spec.field("serviceAccountName")
    if not account_field.present:
        account_field = spec.field("serviceAccount")  # the deprecated alias
    account = _dns_subdomain(account_field, required=False) or "default"
    ready = False
    for condition in status.field("conditions").items():
        if condition.field("type").string() == "Ready":
            ready = condition.field("status").string() == "True"
    ports: list[ContainerPort] = []
    for container in spec.field("containers").items():
        for port in container.field("ports").items():
            ports.append(ContainerPort(port.field("containerPort").port(), _port_name(port.field("name"))))
    return Pod(
        meta=meta,
        service_account=account,
        ip=_ip(status.field("podIP")),
        ready=ready,
        ports=tuple(ports),
        host_network=spec.field("hostNetwork").boolean(False),
    )


def _endpoint_slice(root: _Node, meta: Meta, version: str) -> EndpointSlice:
    service = meta.labels.get(SERVICE_NAME_LABEL, "")
    if not service:
        raise _FieldError(f"metadata.labels.{SERVICE_NAME_LABEL}: required (it names the slice's Service)")
    address_type = root.field("addressType").string()
    if address_type not in ("", "IPv4", "IPv6", "FQDN"):
        root.field("addressType").fail(f"must be IPv4, IPv6 or FQDN, got {_got(address_type)}")
    endpoints: list[SliceEndpoint] = []
    for endpoint in root.field("endpoints").items():
        addresses = endpoint.field("addresses").items()
        if not addresses:
            endpoint.field("addresses").fail("at least one address is required")
        for address in addresses:
            _slice_address(address, address_type)
        target = endpoint.field("targetRef")
        pod = target.field("name").string() if target.field("kind").string() in ("", "Pod") else ""
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(address.value for address in addresses),
                ready=endpoint.field("conditions").field("ready").boolean(True),
                pod=pod,
            )
        )
    ports = tuple(
        SlicePort(port=node.field("port").port(), name=_dns_label(node.field("name"), required=False))
        for node in root.field("ports").items()
    )
    return EndpointSlice(meta=meta, service=service, endpoints=tuple(endpoints), ports=ports)


def _slice_address(node: _Node, address_type: str) -> None:
    if address_type == "FQDN":
        _dns_subdomain(node)
        return
    value = _ip(node)
    if not value:
        node.fail("required")
    family = ipaddress.ip_address(value).version
    if address_type and f"IPv{family}" != address_type:
        node.fail(f"is an IPv{family} address in a slice of addressType {address_type}")


# --- SMI ------------------------------------------------------------------------------------


def _traffic_target(root: _Node, meta: Meta, version: str) -> TrafficTarget:
    spec = root.field("spec")
    destination_node = spec.field("destination")
    if not destination_node.present:
        destination_node.fail("required")
    if version.endswith("/v1alpha2") and destination_node.field("port").present:
        destination_node.field("port").fail(
            "a destination port (access.smi-spec.io/v1alpha2) cannot be kept: use "
            "access.smi-spec.io/v1alpha3 with a TCPRoute rule listing the port"
        )
    destination = _subject(destination_node, meta.namespace)
    if destination.namespace != meta.namespace:
        destination_node.field("namespace").fail(
            f"must be the TrafficTarget's own namespace {meta.namespace!r}: only the destination's "
            "owner may grant access to it"
        )
    sources = tuple(_subject(node, meta.namespace) for node in spec.field("sources").items())
    if not sources:
        spec.field("sources").fail("at least one source is required")
    route_kinds = ("HTTPRouteGroup", "TCPRoute") if version.endswith("/v1alpha2") else _RULE_KINDS
    rules = tuple(_rule(node, route_kinds) for node in spec.field("rules").items())
    if not rules:
        spec.field("rules").fail("at least one rule is required")
    return TrafficTarget(meta=meta, destination=destination, sources=sources, rules=rules)


_RULE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")


def _subject(node: _Node, default_namespace: str) -> IdentitySubject:
    node.mapping()
    kind = node.field("kind").string()
    if kind and kind != "ServiceAccount":
        node.field("kind").fail(f"only ServiceAccount identities are supported, got {_got(kind)}")
    name = _dns_subdomain(node.field("name"))
    namespace = _dns_label(node.field("namespace"), required=False) or default_namespace
    return IdentitySubject(name=name, namespace=namespace)


def _rule(node: _Node, kinds: tuple[str, ...]) -> TargetRule:
    kind = node.field("kind").string(required=True)
    if kind not in kinds:
        node.field("kind").fail(f"must be one of {', '.join(kinds)}, got {_got(kind)}")
    name = _dns_subdomain(node.field("name"))
    matches = tuple(match.string(required=True) for match in node.field("matches").items())
    if matches and kind != "HTTPRouteGroup":
        node.field("matches").fail(f"only HTTPRouteGroup rules name matches; a {kind} rule covers its ports")
    return TargetRule(kind=kind, name=name, matches=matches)


def _http_route_group(root: _Node, meta: Meta, version: str) -> HTTPRouteGroup:
    matches: list[HTTPMatch] = []
    names: set[str] = set()
    for node in root.field("spec").field("matches").items():
        match = _http_match(node)
        if match.name in names:
            node.field("name").fail(f"{match.name!r} names two matches")
        names.add(match.name)
        matches.append(match)
    return HTTPRouteGroup(meta=meta, matches=tuple(matches))


def _http_match(node: _Node) -> HTTPMatch:
    methods: list[str] = []
    for method in node.field("methods").items():
        value = method.string(required=True)
        if value not in HTTP_METHODS:
            method.fail(f"must be one of {', '.join(HTTP_METHODS)}, got {_got(value)}")
        if value not in methods:
            methods.append(value)
    return HTTPMatch(
        name=node.field("name").string(required=True),
        path_regex=_regex(node.field("pathRegex")),
        methods=tuple(methods),
        headers=_headers(node.field("headers")),
    )


def _headers(node: _Node) -> Mapping[str, str] | None:
    """Header name -> full-match regex, from `{name: regex}` (the SMI schema) or from
    `[{name: regex}, ...]` (what OSM's demos and many users write)."""
    pairs: list[tuple[str, _Node]] = []
    if isinstance(node.value, list):
        for item in node.items():
            entry = item.mapping()
            if len(entry) != 1:
                item.fail(f"each list entry must be a single 'name: regex' pair, got {len(entry)} keys")
            pairs.extend((key, item.field(key)) for key in entry)
    else:
        pairs.extend((key, node.field(key)) for key in node.mapping())
    headers: dict[str, str] = {}
    for name, value in pairs:
        lowered = name.lower()
        if not _HEADER_NAME.fullmatch(lowered):
            value.fail("is not a valid HTTP header name")
        if lowered in headers:
            value.fail(f"header {lowered!r} is given twice")
        headers[lowered] = _regex(value)
    return frozen_map(headers) if headers else None


def _tcp_route(root: _Node, meta: Meta, version: str) -> TCPRoute:
    return TCPRoute(meta=meta, ports=_route_ports(root, version))


def _udp_route(root: _Node, meta: Meta, version: str) -> UDPRoute:
    return UDPRoute(meta=meta, ports=_route_ports(root, version))


def _route_ports(root: _Node, version: str) -> tuple[int, ...]:
    matches = root.field("spec").field("matches")
    if version.endswith("/v1alpha3"):
        if matches.present:
            matches.fail(f"{version} routes have no matches: use specs.smi-spec.io/v1alpha4 to list ports")
        return ()
    ports: list[int] = []
    for node in matches.field("ports").items():
        port = node.port()
        if port in ports:
            node.fail(f"port {port} is listed twice")
        ports.append(port)
    return tuple(ports)


def _traffic_split(root: _Node, meta: Meta, version: str) -> TrafficSplit:
    spec = root.field("spec")
    service = _split_service(spec.field("service"), meta.namespace)
    backends: list[SplitBackend] = []
    for node in spec.field("backends").items():
        backend = SplitBackend(
            service=_split_service(node.field("service"), meta.namespace),
            weight=_weight(node.field("weight")),
        )
        if any(other.service == backend.service for other in backends):
            node.field("service").fail(f"{backend.service!r} is listed twice")
        backends.append(backend)
    if not backends:
        spec.field("backends").fail("at least one backend is required")
    matches_node = spec.field("matches")
    match_kinds = _SPLIT_MATCH_KINDS.get(version.rsplit("/", 1)[-1], ())
    if matches_node.present and not match_kinds:
        matches_node.fail(f"{version} has no matches: use split.smi-spec.io/v1alpha4")
    matches: list[SplitMatch] = []
    for node in matches_node.items():
        kind = node.field("kind").string(required=True)
        if kind not in match_kinds:
            node.field("kind").fail(f"must be one of {', '.join(match_kinds)}, got {_got(kind)}")
        matches.append(SplitMatch(kind=kind, name=_dns_subdomain(node.field("name"))))
    return TrafficSplit(meta=meta, service=service, backends=tuple(backends), matches=tuple(matches))


_SPLIT_MATCH_KINDS = {"v1alpha3": ("HTTPRouteGroup",), "v1alpha4": ("HTTPRouteGroup", "TCPRoute")}


def _split_service(node: _Node, namespace: str) -> str:
    """A Service of the split's namespace. OSM's demos write `<name>.<namespace>`; that form
    is accepted (and normalized) when it names the split's own namespace."""
    value = node.string(required=True)
    name, _, other = value.partition(".")
    if other:
        if other != namespace:
            node.fail(f"{value!r} is in another namespace; a TrafficSplit only splits Services of its own")
        value = name
    _dns_1035_label(_Node(value, node.path))
    return value


def _weight(node: _Node) -> float:
    value = node.value
    if value is None:
        node.fail("required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        node.fail(f"must be a number, got {_got(value)}")
    if value < 0:
        node.fail(f"must not be negative, got {value}")
    return value


# --- MeshConfig -----------------------------------------------------------------------------


def _mesh_config(root: _Node, meta: Meta, version: str) -> MeshConfig:
    spec = root.field("spec")
    values: dict[str, Any] = {}
    for key in spec.mapping():
        reader = _MESH_CONFIG_FIELDS.get(key)
        if reader is None:
            spec.field(key).fail(f"unknown field (known: {', '.join(_MESH_CONFIG_FIELDS)})")
        attribute, read = reader
        if spec.field(key).present:
            if attribute == "sidecar_resources":
                values.update(read(spec.field(key)))
            else:
                values[attribute] = read(spec.field(key))
    config = MeshConfig(meta=meta, **values)
    if config.debounce_max < config.debounce_window:
        spec.field("debounceMax").fail(
            f"{config.debounce_max:g}s must not be shorter than debounceWindow ({config.debounce_window:g}s)"
        )
    return config


def _cert_validity(node: _Node) -> int:
    seconds = _duration(node)
    if seconds < 1:
        node.fail("must be at least 1s")
    return int(seconds)


def _choice(choices: tuple[str, ...]) -> Callable[[_Node], str]:
    def read(node: _Node) -> str:
        value = node.string(required=True)
        if value not in choices:
            node.fail(f"must be one of {', '.join(choices)}, got {_got(value)}")
        return value

    return read


def _cidrs(node: _Node) -> tuple[str, ...]:
    cidrs: list[str] = []
    for item in node.items():
        value = item.string(required=True)
        try:
            cidrs.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            item.fail(f"must be a CIDR such as 10.0.0.0/8, got {_got(value)}")
    return tuple(cidrs)


def _ports(node: _Node) -> tuple[int, ...]:
    return tuple(item.port() for item in node.items())


def _trust_domain(node: _Node) -> str:
    return _dns_subdomain(node)


def _non_empty(node: _Node) -> str:
    return node.string(required=True)


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def _resources(node: _Node, part: str) -> tuple[tuple[str, str], ...]:
    """`sidecarResources.requests|limits`: resource name → Kubernetes quantity."""
    values = node.field(part)
    if not values.present:
        return ()
    out = []
    for name in sorted(values.mapping()):
        item = values.field(name)
        quantity = item.string(required=True)
        if not _QUANTITY.match(quantity):
            item.fail(f"must be a Kubernetes quantity such as 100m or 64Mi, got {_got(quantity)}")
        out.append((name, quantity))
    return tuple(out)


def _sidecar_resources(node: _Node) -> dict[str, Any]:
    for key in node.mapping():
        if key not in ("requests", "limits"):
            node.field(key).fail("unknown field (known: requests, limits)")
    return {"sidecar_requests": _resources(node, "requests"), "sidecar_limits": _resources(node, "limits")}


_MESH_CONFIG_FIELDS: dict[str, tuple[str, Callable[[_Node], Any]]] = {
    "meshName": ("mesh_name", _dns_label),
    "trustDomain": ("trust_domain", _trust_domain),
    "permissive": ("permissive", lambda node: node.boolean(False)),
    "egressPassthrough": ("egress_passthrough", lambda node: node.boolean(False)),
    "pruneUnreachableUpstreams": ("prune_unreachable_upstreams", lambda node: node.boolean(False)),
    "certValidity": ("cert_validity_seconds", _cert_validity),
    "certProvider": ("cert_provider", _choice(CERT_PROVIDERS)),
    "debounceWindow": ("debounce_window", _duration),
    "debounceMax": ("debounce_max", _duration),
    "outboundIPRangeExclusions": ("outbound_ip_exclusions", _cidrs),
    "outboundPortExclusions": ("outbound_port_exclusions", _ports),
    "inboundPortExclusions": ("inbound_port_exclusions", _ports),
    "sidecarImage": ("sidecar_image", _non_empty),
    "sidecarLogLevel": ("sidecar_log_level", _choice(SIDECAR_LOG_LEVELS)),
    "sidecarResources": ("sidecar_resources", _sidecar_resources),
}


# --- the kinds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    versions: tuple[str, ...]
    namespaced: bool
    name_rule: Callable[[_Node], str]
    build: Callable[[_Node, Meta, str], MeshObject]


_KINDS: dict[str, _Kind] = {
    "Namespace": _Kind(("v1",), False, _dns_label, _namespace),
    "ServiceAccount": _Kind(("v1",), True, _dns_subdomain, _service_account),
    "Service": _Kind(("v1",), True, _dns_1035_label, _service),
    "Pod": _Kind(("v1",), True, _dns_subdomain, _pod),
    "EndpointSlice": _Kind(("discovery.k8s.io/v1",), True, _dns_subdomain, _endpoint_slice),
    "TrafficTarget": _Kind(
        ("access.smi-spec.io/v1alpha3", "access.smi-spec.io/v1alpha2"), True, _dns_subdomain, _traffic_target
    ),
    "HTTPRouteGroup": _Kind(
        ("specs.smi-spec.io/v1alpha4", "specs.smi-spec.io/v1alpha3"), True, _dns_subdomain, _http_route_group
    ),
    "TCPRoute": _Kind(
        ("specs.smi-spec.io/v1alpha4", "specs.smi-spec.io/v1alpha3"), True, _dns_subdomain, _tcp_route
    ),
    "UDPRoute": _Kind(("specs.smi-spec.io/v1alpha4",), True, _dns_subdomain, _udp_route),
    "TrafficSplit": _Kind(
        ("split.smi-spec.io/v1alpha4", "split.smi-spec.io/v1alpha3", "split.smi-spec.io/v1alpha2"),
        True,
        _dns_subdomain,
        _traffic_split,
    ),
    # Cluster-scoped: there is one mesh per control plane, and its settings are not a tenant's.
    "MeshConfig": _Kind(("config.meshcp.dev/v1alpha1",), False, _dns_subdomain, _mesh_config),
}
