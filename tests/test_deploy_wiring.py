"""The install manifests in deploy/ wired together and to the code: the arguments of each
Deployment parse (with `meshcp`'s real parser) into the settings its Services, probes,
certificates and webhook point to, and the injector reaches the controller and shares
its CA."""

from __future__ import annotations

from pathlib import Path

from meshcp.cli.options import ca_settings, controller_settings
from meshcp.injector.app import MUTATE_PATH
from meshcp.injector.decision import SYSTEM_NAMESPACES
from meshcp.injector.settings import DEFAULT_DEADLINE, InjectorSettings
from meshcp.kpi import traffic_metrics
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.runtime.settings import Address
from tests.support.deploy import (
    NAMESPACE,
    _args,
    _container,
    _container_port,
    _find,
    _service_target,
)

# --- controller -------------------------------------------------------------------------------


def test_controller_arguments_parse_into_a_cluster_controller() -> None:
    deployment = _find("Deployment", "meshcp-controller", file="controller.yaml")
    args = _args(deployment)
    assert args.command == "serve"
    settings = controller_settings(args)  # the checks `meshcp serve` makes before it starts
    assert settings.kubernetes and settings.source is None
    assert not settings.insecure_xds
    assert settings.ca.provider == "internal"
    assert settings.ca.secret == f"{NAMESPACE}/meshcp-ca"
    # Listening on every address: probes and the Service reach the pod IP, not loopback.
    assert settings.xds_address.host == settings.http_address.host == "0.0.0.0"
    assert "meshcp-controller.meshcp-system.svc" in settings.xds_names


def test_controller_service_probes_and_scrape_annotations_match_its_listeners() -> None:
    deployment = _find("Deployment", "meshcp-controller")
    settings = controller_settings(_args(deployment))
    service = _find("Service", "meshcp-controller", file="controller.yaml")
    assert _service_target(service, deployment, "grpc") == (15128, settings.xds_address.port)
    assert _service_target(service, deployment, "http-metrics") == (9091, settings.http_address.port)
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.http_address.port
    assert annotations["prometheus.io/path"] == "/metrics"
    container = _container(deployment)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert _container_port(deployment, get["port"]) == settings.http_address.port
        assert get.get("scheme", "HTTP") == "HTTP"


def test_metrics_apiservice_calls_the_controllers_https_listener() -> None:
    """The aggregator reaches the TrafficMetrics API: APIService → Service port → the
    controller's --api-address, serving the certificate cert-manager issues for that
    Service, whose root cainjector puts into the APIService's caBundle."""
    apiservice = _find("APIService", "v1alpha1.metrics.smi-spec.io", file="metrics-apiservice.yaml")
    spec = apiservice["spec"]
    assert (spec["group"], spec["version"]) == (traffic_metrics.GROUP, traffic_metrics.VERSION)
    assert apiservice["metadata"]["name"] == f"{traffic_metrics.VERSION}.{traffic_metrics.GROUP}"
    deployment = _find("Deployment", "meshcp-controller")
    args = _args(deployment)
    settings = controller_settings(args)
    assert settings.api_address.host == "0.0.0.0"
    service = _find("Service", spec["service"]["name"])
    assert spec["service"]["namespace"] == NAMESPACE == service["metadata"]["namespace"]
    (name,) = [p["name"] for p in service["spec"]["ports"] if p["port"] == spec["service"]["port"]]
    assert _service_target(service, deployment, name) == (443, settings.api_address.port)
    # The serving certificate: a whole Secret volume holding tls.crt and tls.key.
    assert settings.api_tls_cert is not None and settings.api_tls_key is not None
    assert settings.api_tls_cert.parent == settings.api_tls_key.parent
    assert (settings.api_tls_cert.name, settings.api_tls_key.name) == ("tls.crt", "tls.key")
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(settings.api_tls_cert.parent)]]
    certificate = _find("Certificate", "meshcp-metrics-api-tls", file="metrics-apiservice.yaml")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    annotations = apiservice["metadata"]["annotations"]
    ca_namespace, ca_name = annotations["cert-manager.io/inject-ca-from"].split("/")
    root = _find("Certificate", ca_name)
    assert ca_namespace == NAMESPACE and root["spec"]["isCA"] is True
    issuer = _find("Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == root["spec"]["secretName"]


# --- injector ---------------------------------------------------------------------------------


def test_injector_arguments_reach_the_controller_and_share_its_ca() -> None:
    injector = _args(_find("Deployment", "meshcp-injector", file="injector.yaml"))
    controller = controller_settings(_args(_find("Deployment", "meshcp-controller")))
    assert injector.command == "inject"
    ca = ca_settings(injector)  # the checks `meshcp inject` makes before it starts
    assert ca.provider == controller.ca.provider == "internal"
    assert ca.secret == controller.ca.secret, "injector and controller must share one CA root"
    assert ca.trust_domain == controller.ca.trust_domain
    xds = Address.parse(injector.xds_address)
    # Sidecars dial this host and check the controller's certificate for it (SNI).
    assert (injector.xds_server_name or xds.host) in controller.xds_names
    assert xds.host == "meshcp-controller.meshcp-system.svc"
    service = _find("Service", "meshcp-controller")
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert xds.port == port


def test_injector_listens_where_its_service_and_probes_point() -> None:
    deployment = _find("Deployment", "meshcp-injector")
    args = _args(deployment)
    listen = Address.parse(args.address)
    assert listen.host == "0.0.0.0"
    # The default listener of the injector, as the design fixes it.
    assert listen.port == InjectorSettings(Path("c"), Path("k")).port == 9090
    service = _find("Service", "meshcp-injector", file="injector.yaml")
    (service_port,) = service["spec"]["ports"]
    assert _service_target(service, deployment, service_port["name"]) == (443, listen.port)
    for probe in ("readinessProbe", "livenessProbe"):
        get = _container(deployment)[probe]["httpGet"]
        assert (get["scheme"], get["path"]) == ("HTTPS", "/healthz")
        assert _container_port(deployment, get["port"]) == listen.port


def test_injector_serves_the_certificate_cert_manager_issues() -> None:
    deployment = _find("Deployment", "meshcp-injector")
    args = _args(deployment)
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args.tls_cert.parent == args.tls_key.parent
    volume = volumes[mounts[str(args.tls_cert.parent)]]
    assert (args.tls_cert.name, args.tls_key.name) == ("tls.crt", "tls.key")  # a kubernetes.io/tls Secret
    certificate = _find("Certificate", "meshcp-injector-tls", file="injector.yaml")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    service = _find("Service", "meshcp-injector")
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    # cainjector puts the root that signs the serving certificate into the caBundle.
    annotations = _find("MutatingWebhookConfiguration", "meshcp-injector")["metadata"]["annotations"]
    ca_namespace, ca_name = annotations["cert-manager.io/inject-ca-from"].split("/")
    assert ca_namespace == NAMESPACE
    root = _find("Certificate", ca_name)
    assert root["spec"]["isCA"] is True
    issuer = _find("Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == root["spec"]["secretName"]


def test_webhook_calls_the_injector_for_pod_creation_in_meshed_namespaces() -> None:
    webhook_config = _find("MutatingWebhookConfiguration", "meshcp-injector", file="injector.yaml")
    (webhook,) = webhook_config["webhooks"]
    target = webhook["clientConfig"]["service"]
    service = _find("Service", target["name"])
    assert target["namespace"] == service["metadata"]["namespace"]
    assert target["path"] == MUTATE_PATH
    assert target["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["sideEffects"] == "NoneOnDryRun"  # the bootstrap Secret, skipped on dry runs
    assert webhook["failurePolicy"] in ("Fail", "Ignore")
    assert webhook["reinvocationPolicy"] in ("Never", "IfNeeded")
    assert {"v1", "v1beta1"} <= set(webhook["admissionReviewVersions"])
    # The API server must wait longer than the injector takes to answer, or it reports a
    # timeout for a pod the injector was about to admit.
    assert DEFAULT_DEADLINE < webhook["timeoutSeconds"] <= 30
    expressions = webhook["namespaceSelector"]["matchExpressions"]
    assert {"key": MESH_LABEL, "operator": "Exists"} in expressions
    (excluded,) = [e for e in expressions if e["key"] == "kubernetes.io/metadata.name"]
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", NAMESPACE} <= set(excluded["values"])
    assert "kube-system" in SYSTEM_NAMESPACES
