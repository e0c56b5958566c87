"""`meshcp analyze` (every problem of a mesh, `policy.analysis`) and `meshcp policy check`
(`policy.decide`), on manifests or on a cluster.

Findings point at the line of the field they are about: the source says where each
object's document starts, `model.locate` finds the field in the file's text.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial
from pathlib import Path

from meshcp.cli.offline import Loaded, OfflineError, load_cluster, load_located
from meshcp.cli.options import UsageError, pod_of
from meshcp.cli.output import emit
from meshcp.kube.client import KubeAccessError, checked_api_client
from meshcp.model.locate import field_line
from meshcp.policy.analysis import analyze as analyze_state
from meshcp.policy.analysis import with_locations
from meshcp.policy.build import build_policies
from meshcp.policy.decide import DENIED, CheckError, Request, check
from meshcp.policy.findings import ERROR, WARNING, Finding


async def load_source(args: argparse.Namespace) -> Loaded:
    """The mesh of `--source DIR`, or of the cluster (`--source kubernetes`, or any
    Kubernetes option given)."""
    source = args.source
    if source is None and (args.kubeconfig or args.context):
        source = "kubernetes"
    if source is None:
        raise UsageError("give --source DIR (manifests) or --source kubernetes (--kubeconfig, --context)")
    if source != "kubernetes":
        return await load_located(Path(source))

    try:  # credentials first: the source would retry a missing kubeconfig until --timeout
        await (await checked_api_client(args.context, args.kubeconfig)).close()
    except KubeAccessError as error:
        raise OfflineError(str(error)) from None
    return await load_cluster(partial(checked_api_client, args.context, args.kubeconfig), args.timeout)


def analysis_findings(loaded: Loaded, trust_domain: str | None = None) -> list[Finding]:
    """Every finding of a loaded mesh, located at its field's line where the file says."""
    findings = with_locations(analyze_state(loaded.state, trust_domain), loaded.locations)
    if loaded.root is None:
        return findings
    root = loaded.root
    texts: dict[str, str | None] = {}

    def text_of(relative: str) -> str | None:
        if relative not in texts:
            try:
                texts[relative] = (root / relative).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                texts[relative] = None
        return texts[relative]

    def at_field(finding: Finding) -> Finding:
        relative, _, line = finding.location.rpartition(":")
        if not (finding.field and relative and line.isdigit()):
            return finding
        text = text_of(relative)
        if text is None:
            return finding
        return replace(finding, location=f"{relative}:{field_line(text, int(line), finding.field)}")

    return [at_field(finding) for finding in findings]


async def analyze(args: argparse.Namespace) -> int:
    loaded = await load_source(args)
    findings = analysis_findings(loaded, args.trust_domain)
    if args.namespace:
        findings = [f for f in findings if args.namespace in (f.ref.namespace, _namespace_of(f))]
    rows = [finding.as_dict() for finding in findings]

    def table() -> list[list[str]] | str:
        if not findings:
            return "no problems found\n"
        header = ["SEVERITY", "CODE", "OBJECT", "FIELD", "LOCATION", "MESSAGE"]
        return [header] + [
            [f.severity, f.code, str(f.ref), f.field or "-", f.location or "-", f.message] for f in findings
        ]

    emit(rows, args.output, table)
    failing = {ERROR, WARNING} if args.strict else {ERROR}
    return 1 if any(f.severity in failing for f in findings) else 0


def _namespace_of(finding: Finding) -> str:
    """A Namespace object's own name is the namespace it is about."""
    return finding.ref.name if finding.ref.kind == "Namespace" else ""


async def policy(args: argparse.Namespace) -> int:
    """`policy check SRC DST`: exit 0 when allowed (for some requests, when none was given),
    1 when denied."""
    src, dst = pod_of(args, args.src, "SRC"), pod_of(args, args.dst, "DST")
    headers = {}
    for given in args.header or ():
        name, sep, value = given.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {given!r} is not NAME:VALUE")
        headers[name.strip().lower()] = value.strip()
    request = Request(args.port, args.path, args.method, headers)
    loaded = await load_located(args.source)
    try:
        verdicts = check(loaded.state, build_policies(loaded.state), src, dst, request)
    except CheckError as error:
        raise OfflineError(str(error)) from None
    rows = [{"source": "/".join(src), "destination": "/".join(dst), **v.as_dict()} for v in verdicts]

    def table() -> list[list[str]]:
        header = ["DESTINATION", "PORT", "PROTOCOL", "DECISION", "DECIDED BY", "REASON"]
        return [header] + [
            [v.service, str(v.port), v.protocol, v.decision.upper(), "; ".join(v.by) or "-", v.reason]
            for v in verdicts
        ]

    emit(rows, args.output, table)
    return 0 if any(v.decision != DENIED for v in verdicts) else 1
