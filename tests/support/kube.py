"""A real Kubernetes API server for tests: etcd and kube-apiserver on loopback, built from the
Go module proxy by scripts/build-kube (docs/kubernetes.md), with kubectl from the same build.

    with ApiServer() as api:                       # tests/kube/conftest.py: once per session
        api.kubectl("create", "namespace", "shop")
        kubeconfig = api.admin_kubeconfig          # a file, for `meshcp ... --kubeconfig`

What a cluster's control plane has and a unit test cannot fake: authentication (a static token
file: an admin in `system:masters`, and ServiceAccount tokens signed by the API server's own
key through the TokenRequest API), RBAC authorization, admission, server-side validation
(built-in schemas, CRD schemas), watches with resource versions. Nothing else runs: no
kube-controller-manager (namespaces never finish deleting, no `default` ServiceAccount is made,
no garbage collection, Deployments get no pods), no scheduler, no kubelet (pods get no status
unless a test writes it).

The API server resolves Services (webhooks, APIServices) to the addresses in their
EndpointSlices (`--enable-aggregator-routing`), never to a ClusterIP: ClusterIPs are numbers
from a private range here, and nothing may dial them.

Without the binaries the calling test skips, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support import free_port, required_binary

ROOT = Path(__file__).parents[2]
#: The Go module whose go.mod pins the Kubernetes (and etcd) version scripts/build-kube builds.
GO_MOD = ROOT / "tools" / "kube" / "go.mod"
#: How long etcd and the API server get to become ready (a loaded CI machine is slow).
STARTUP_TIMEOUT = 90.0
#: The ServiceAccount token issuer (any URL; the API server serves its discovery document).
ISSUER = "https://kubernetes.default.svc.cluster.local"
#: The admin of the token file: superuser through RBAC's `system:masters` group.
ADMIN_USER = "meshcp-test-admin"


def kubernetes_version() -> str:
    """The k8s.io/kubernetes version tools/kube/go.mod requires, e.g. `v1.37.2`."""
    for line in GO_MOD.read_text().splitlines():
        words = line.split()
        if words[:1] == ["require"]:
            words = words[1:]
        if len(words) >= 2 and words[0] == "k8s.io/kubernetes" and words[1].startswith("v"):
            return words[1]
    raise AssertionError(f"{GO_MOD} requires no k8s.io/kubernetes version")


def binary_directory() -> Path:
    """Where scripts/build-kube puts the binaries: `$MESHCP_KUBE_BIN`, else the cache
    `${MESHCP_KUBE_CACHE:-~/.cache/meshcp-kube}/<version>/bin`."""
    explicit = os.environ.get("MESHCP_KUBE_BIN")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("MESHCP_KUBE_CACHE") or str(Path.home() / ".cache" / "meshcp-kube")
    return Path(cache) / kubernetes_version() / "bin"


def kube_binary(name: str) -> str:
    """`kube-apiserver`, `kubectl` or `etcd` as scripts/build-kube built them; skip without
    it, fail in CI."""
    return required_binary(name, install="scripts/build-kube", path=binary_directory())


# Certificates -------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def write_serving_certificate(directory: Path, name: str, hosts: list[str]) -> tuple[Path, Path, Path]:
    """A fresh CA and a serving certificate it signs for `hosts` (IP addresses or DNS names),
    written as `<name>-ca.crt`, `<name>.crt`, `<name>.key`: (ca, cert, key) paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(f"{name} test CA", ca_key, None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = _certificate(hosts[0], key, (ca, ca_key), sans=sans)
    paths = directory / f"{name}-ca.crt", directory / f"{name}.crt", directory / f"{name}.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    """A kubeconfig for `server` (trusting `ca_file`) that authenticates with `token`."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
                "current-context": user,
            }
        )
    )
    path.chmod(0o600)
    return path


# Processes ----------------------------------------------------------------------------------


class ApiServerError(AssertionError):
    """etcd or the API server did not start, or a kubectl command failed."""


class _Process:
    """A child process in its own session, its output in a log file; stopped with SIGTERM,
    then SIGKILL."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:  # a restarted process adds to its log
            self.popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, size: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ApiServerError(f"{self.name} exited with {code}:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class ApiServer:
    """etcd and one kube-apiserver on 127.0.0.1 (free ports, a temporary directory of their
    own), started on entry, stopped on exit. `admin_kubeconfig` is a superuser's."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.directory = Path()
        self.port = 0
        self.url = ""
        self.ca_file = Path()
        self.admin_token = secrets.token_hex(16)
        self.admin_kubeconfig = Path()
        #: etcd's client URL (plain HTTP on loopback).
        self.etcd_url = ""
        #: The API server's own ServiceAccount signing key (its public half verifies tokens).
        self.service_account_key = Path()
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._apiserver_args: list[str] = []
        #: Seconds from starting etcd to the API server's /readyz answering 200.
        self.startup_seconds = 0.0
        self._kubectl = ""

    # Lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> ApiServer:
        apiserver, etcd, self._kubectl = (kube_binary(n) for n in ("kube-apiserver", "etcd", "kubectl"))
        self._tmp = tempfile.TemporaryDirectory(prefix="meshcp-kube-")
        self.directory = Path(self._tmp.name)
        try:
            self._start(apiserver, etcd)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the API server, then etcd, and remove their files."""
        for process in (self._apiserver, self._etcd):
            if process is not None:
                process.stop()
        self._apiserver = self._etcd = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _start(self, apiserver: str, etcd: str) -> None:
        started = time.monotonic()
        directory = self.directory
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd_url = self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = _Process(
            "etcd",
            [
                etcd,
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--log-level=warn",
            ],
            directory / "etcd.log",
        )
        self._wait(f"{etcd_url}/health", self._etcd, context=None, headers={})

        self.ca_file, cert, key = write_serving_certificate(
            directory, "apiserver", ["127.0.0.1", "localhost"]
        )
        (directory / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
        )
        signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.service_account_key = directory / "service-account.key"
        self.service_account_key.write_bytes(_pem_key(signing_key))
        self.url = f"https://127.0.0.1:{self.port}"
        self._apiserver_args = [
            apiserver,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={directory / 'certs'}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--token-auth-file={directory / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.service_account_key}",
            f"--service-account-signing-key-file={self.service_account_key}",
            # A range ClusterIPs are allocated from; nothing routes to them here.
            "--service-cluster-ip-range=10.96.0.0/16",
            # Webhooks and APIServices behind a Service are called at their EndpointSlices'
            # addresses, never at a ClusterIP (see the module docstring).
            "--enable-aggregator-routing=true",
            # One API server, no load balancer: it does not write itself into the
            # `kubernetes` Service's endpoints (a loopback address is not a valid one).
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            # On SIGTERM, end open watches within 2 s (the default waits for them to end by
            # themselves): a restart closes every client's watch, as a rollout does.
            "--shutdown-watch-termination-grace-period=2s",
            # ServiceAccounts only: no watch cache, so their watches are etcd's own and a
            # watch resumed from a compacted revision gets 410 Gone (`compact_etcd`), which
            # the watch cache of every other kind would hide behind its own window.
            "--watch-cache-sizes=serviceaccounts#0",
        ]
        self._start_apiserver()
        self.admin_kubeconfig = write_kubeconfig(
            directory / "admin.kubeconfig", self.url, self.ca_file, self.admin_token, ADMIN_USER
        )
        self.startup_seconds = time.monotonic() - started

    def _start_apiserver(self) -> None:
        """Start the API server (again) with the same arguments; wait for its /readyz."""
        self._apiserver = _Process(
            "kube-apiserver", self._apiserver_args, self.directory / "kube-apiserver.log"
        )
        self._wait(
            f"{self.url}/readyz",
            self._apiserver,
            context=ssl.create_default_context(cafile=str(self.ca_file)),
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )

    def restart_apiserver(self, while_stopped: Callable[[], object] | None = None) -> None:
        """Stop the API server (SIGTERM: it closes every watch) and start it again on the
        same port, with the same etcd; returns once it is ready. `while_stopped` runs in
        between (e.g. `compact_etcd`: no watch cache holds the history it removes)."""
        assert self._apiserver is not None
        self._apiserver.stop()
        if while_stopped is not None:
            while_stopped()
        self._start_apiserver()

    def _etcd_call(self, method: str, body: dict[str, object]) -> Any:
        """One call of etcd's v3 JSON gateway (its gRPC API over HTTP, on the client URL)."""
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def compact_etcd(self) -> int:
        """Write a key outside the API server's prefix (so the revision moves past every
        resourceVersion a client holds), then compact etcd's history up to it: a watch or a
        paginated list resumed from any earlier resourceVersion then gets 410 Gone, as after
        the API server's own periodic compaction. Returns the compacted revision."""
        revision = self.advance_etcd()
        self._etcd_call("kv/compaction", {"revision": revision, "physical": True})
        return revision

    def advance_etcd(self, writes: int = 3) -> int:
        """Move etcd's revision on by `writes` (a key outside the API server's prefix);
        the new revision."""
        key = base64.b64encode(b"/meshcp-test/revision").decode()
        revision = 0
        for n in range(writes):
            value = base64.b64encode(str(n).encode()).decode()
            revision = int(self._etcd_call("kv/put", {"key": key, "value": value})["header"]["revision"])
        return revision

    @staticmethod
    def _wait(url: str, process: _Process, context: ssl.SSLContext | None, headers: dict[str, str]) -> None:
        """Poll `url` until it answers 200, failing with the process's log if it exits or
        the deadline passes."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = ""
        while True:
            process.check_running()
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=2, context=context) as reply:
                    if reply.status == 200:
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as error:
                with error:
                    last = f"HTTP {error.code}: {error.read()[:500]!r}"
            except OSError as error:
                last = repr(error)
            if time.monotonic() >= deadline:
                message = f"{process.name} not ready at {url} after {STARTUP_TIMEOUT:g} s ({last})"
                raise ApiServerError(f"{message}:\n{process.tail()}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        """The end of the API server's log, for failure messages."""
        return self._apiserver.tail() if self._apiserver is not None else ""

    # Using it ------------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (as the admin, or with `kubeconfig`); with `check`, a non-zero exit
        fails with its output."""
        command = [self._kubectl, f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ApiServerError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def apply(self, manifests: str | list[dict[str, Any]], *args: str) -> str:
        """`kubectl apply -f -` of YAML text or of objects; kubectl's output."""
        text = manifests if isinstance(manifests, str) else yaml.safe_dump_all(manifests)
        return self.kubectl("apply", "-f", "-", *args, input=text).stdout

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def token(self, namespace: str, service_account: str, duration: str = "1h") -> str:
        """A token of ServiceAccount `namespace/service_account` (TokenRequest API), signed
        by the API server as a kubelet's projected token would be."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    def kubeconfig_for(self, namespace: str, service_account: str) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/service_account`."""
        user = f"system:serviceaccount:{namespace}:{service_account}"
        path = self.directory / f"{namespace}.{service_account}.kubeconfig"
        return write_kubeconfig(path, self.url, self.ca_file, self.token(namespace, service_account), user)
