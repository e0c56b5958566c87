"""From parsed arguments to the settings of a controller and of its CA; bad input is a
`UsageError` (printed as one line, exit status 2)."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from meshcp.certs.setup import CaSettings
from meshcp.runtime.settings import Address, Settings
from meshcp.sources.proxyless_renewal import RenewalSettings
from meshcp.xds.tls import server_context


class UsageError(Exception):
    """Bad command-line input: printed as `meshcp: error: ...`, exit status 2."""


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    files = (args.xds_cert, args.xds_key, args.xds_client_ca)
    if args.insecure_xds and any(files):
        raise UsageError("--insecure-xds cannot be combined with --xds-cert/--xds-key/--xds-client-ca")
    if not any(files):
        return None
    if not all(files):
        raise UsageError("--xds-cert, --xds-key and --xds-client-ca go together")
    for option, path in (
        ("--xds-cert", args.xds_cert),
        ("--xds-key", args.xds_key),
        ("--xds-client-ca", args.xds_client_ca),
    ):
        if not Path(path).is_file():
            raise UsageError(f"{option} {path}: no such file")
    try:
        return server_context(args.xds_cert, args.xds_key, args.xds_client_ca)
    except (OSError, ssl.SSLError) as error:
        named = ", ".join(str(f) for f in files)
        raise UsageError(f"cannot load the xDS TLS files ({named}): {error}") from None


def controller_settings(args: argparse.Namespace) -> Settings:
    try:
        xds, http = Address.parse(args.xds_address), Address.parse(args.http_address)
        debug = Address.parse(args.debug_address)
        api = Address.parse(args.api_address)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.admission < 1:
        raise UsageError("--admission must be at least 1")
    if args.send_budget_mib < 1:
        raise UsageError("--send-budget-mib must be at least 1")
    if not 0 <= args.max_connection_age < float("inf"):
        raise UsageError("--max-connection-age must be 0 (never) or a number of seconds")
    if bool(args.api_tls_cert) != bool(args.api_tls_key):
        raise UsageError("--api-tls-cert and --api-tls-key go together")
    lease_namespace, _, lease_name = args.leader_lease.partition("/")
    if args.leader_lease and (not lease_namespace or not lease_name or "/" in lease_name):
        raise UsageError(f"--leader-lease {args.leader_lease!r} is not NAMESPACE/NAME")
    if args.leader_lease and args.source != "kubernetes":
        raise UsageError("--leader-lease needs --source kubernetes")
    if args.lease_duration < 3:
        raise UsageError("--lease-duration must be at least 3 seconds")
    if not args.proxyless_renew_interval >= 1:
        raise UsageError("--proxyless-renew-interval must be at least 1 second")
    settings = Settings(
        xds_address=xds,
        http_address=http,
        debug_address=debug,
        insecure_xds=args.insecure_xds,
        xds_tls=_tls(args),
        xds_names=tuple(args.xds_names or ("localhost", "127.0.0.1")),
        admission=args.admission,
        send_budget=args.send_budget_mib * 1024 * 1024,
        xds_max_connection_age=args.max_connection_age,
        ca=ca_settings(args),
        source=None if args.source in (None, "kubernetes") else Path(args.source),
        kubernetes=args.source == "kubernetes",
        kubeconfig=args.kubeconfig,
        kube_context=args.context,
        mesh_name=args.mesh_name,
        prometheus_url=args.prometheus_url,
        api_address=api,
        api_tls_cert=args.api_tls_cert,
        api_tls_key=args.api_tls_key,
        leader_lease=args.leader_lease,
        lease_duration=args.lease_duration,
        proxyless_dwell=args.proxyless_dwell,
        proxyless_renewal=RenewalSettings(interval=args.proxyless_renew_interval),
    )
    if settings.source is None and not settings.kubernetes:
        # a controller with nothing to serve would answer every proxy with an empty mesh
        raise UsageError("serve needs --source DIR (manifests, watched) or --source kubernetes")
    return settings


def ca_settings(args: argparse.Namespace) -> CaSettings:
    settings = CaSettings(
        provider=args.ca_provider,
        state_dir=args.state_dir,
        key_spec=args.ca_key_type,
        trust_domain=args.trust_domain,
        validity=args.cert_validity,
        renew_share=args.renew_share,
        cfssl_url=args.cfssl_url,
        vault_address=args.vault_address,
        vault_token=args.vault_token,
        vault_role=args.vault_role,
        vault_mount=args.vault_mount,
        secret=args.ca_secret,
        cert_manager_issuer=args.cert_manager_issuer,
        cert_manager_issuer_kind=args.cert_manager_issuer_kind,
        cert_manager_namespace=args.cert_manager_namespace,
    )
    problems = settings.problems()
    if problems:
        raise UsageError(problems[0])
    return settings


def pod_of(args: argparse.Namespace, value: str | None = None, option: str = "POD") -> tuple[str, str]:
    """(namespace, name) of a pod given as `NAME -n NS` or `NS/NAME` (or the older `--pod NS/NAME`)."""
    if value is None:
        given = getattr(args, "pod_option", None)
        if given is not None:
            if args.pod is not None:
                raise UsageError(f"give the pod once: {args.pod!r} or --pod {'/'.join(given)}")
            namespace, name = given
            return namespace, name
        value = args.pod
    if not value:
        raise UsageError(f"{option} is required: NAME with -n NAMESPACE, or NAMESPACE/NAME")
    namespace, sep, name = value.partition("/")
    if not sep:
        return args.namespace or "default", value
    if not namespace or not name or "/" in name:
        raise UsageError(f"{option} {value!r} is not NAME or NAMESPACE/NAME")
    return namespace, name
