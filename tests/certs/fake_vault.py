"""A protocol-faithful stand-in for Vault's PKI secrets engine, over real HTTP on loopback.

It speaks the JSON of `POST /v1/<mount>/issue/<role>` (X-Vault-Token, comma-separated
`alt_names`/`ip_sans`/`uri_sans`, `ttl`, `exclude_cn_from_sans`; answer under `data`
with `certificate`, `issuing_ca`, `ca_chain`, `private_key`, `private_key_type`,
`serial_number`, `expiration`; errors as `{"errors": [...]}`) and the unauthenticated
`GET /v1/<mount>/ca/pem` and `/ca_chain`. It signs with its own cryptography CA,
written independently of meshcp's, optionally through an intermediate.
"""

from __future__ import annotations

import fnmatch
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .support import LoopbackServer

_DURATION = re.compile(r"(\d+)(h|m|s)")
_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_ttl(value: object) -> timedelta:
    if isinstance(value, int):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.isdigit():
        return timedelta(seconds=int(value))
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(value)))
    raise ValueError(f"invalid ttl {value!r}")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode().strip()


def _ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
        .sign(signing_key, hashes.SHA256())
    )


@dataclass
class Role:
    key_type: str = "ec"
    key_bits: int = 256
    max_ttl: timedelta = timedelta(days=30)
    allowed_uri_sans: str = "spiffe://*"


@dataclass
class FakeVault:
    token: str = "s.meshcp-test"
    mount: str = "pki"
    roles: dict[str, Role] = field(default_factory=lambda: {"mesh": Role()})
    intermediate: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    scripted: list[tuple[int, bytes]] = field(default_factory=list)
    """Answers to give the next issue requests instead of issuing: (status, raw body)."""

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca("fake vault root", self.root_key, None)
        if self.intermediate:
            self.issuing_key = ec.generate_private_key(ec.SECP256R1())
            self.issuing = _ca("fake vault intermediate", self.issuing_key, (self.root, self.root_key))
        else:
            self.issuing_key, self.issuing = self.root_key, self.root
        app = web.Application()
        app.router.add_post(f"/v1/{self.mount}/issue/{{role}}", self._issue)
        app.router.add_get(f"/v1/{self.mount}/ca/pem", self._ca_pem)
        app.router.add_get(f"/v1/{self.mount}/ca_chain", self._ca_chain)
        self._server = LoopbackServer(app)

    @property
    def url(self) -> str:
        return self._server.url

    async def start(self, port: int = 0) -> str:
        """Serve (again, after `stop`, on `port`: the same CA comes back)."""
        return await self._server.start(port)

    async def stop(self) -> None:
        await self._server.stop()

    def chain(self) -> list[x509.Certificate]:
        return [self.issuing, self.root] if self.intermediate else [self.root]

    @staticmethod
    def _errors(status: int, *messages: str) -> web.Response:
        return web.json_response({"errors": list(messages)}, status=status)

    async def _ca_pem(self, request: web.Request) -> web.Response:
        return web.Response(text=_pem(self.issuing) + "\n", content_type="application/pem-certificate-chain")

    async def _ca_chain(self, request: web.Request) -> web.Response:
        text = "\n".join(_pem(cert) for cert in self.chain()) + "\n"
        return web.Response(text=text, content_type="application/pem-certificate-chain")

    async def _issue(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Vault-Token") != self.token:
            return self._errors(403, "permission denied")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._errors(400, "failed to parse JSON input")
        self.requests.append(body)
        if self.scripted:
            status, raw = self.scripted.pop(0)
            return web.Response(status=status, body=raw, content_type="application/json")
        role = self.roles.get(request.match_info["role"])
        if role is None:
            return self._errors(400, f"unknown role: {request.match_info['role']}")
        common_name = body.get("common_name", "")
        if not common_name:
            return self._errors(400, "the common_name field is required, or must be provided in a CSR")
        uris = [u for u in str(body.get("uri_sans", "")).split(",") if u]
        for uri in uris:
            if not fnmatch.fnmatchcase(uri, role.allowed_uri_sans):
                return self._errors(
                    400, f"URI Subject Alternative Names are not allowed in this role, but was provided {uri}"
                )
        try:
            ttl = parse_ttl(body.get("ttl", "720h"))
            ips = [ip_address(ip) for ip in str(body.get("ip_sans", "")).split(",") if ip]
        except ValueError as exc:
            return self._errors(400, str(exc))
        warnings = []
        if ttl > role.max_ttl:
            warnings.append(
                f"TTL of {ttl} exceeded the effective max_ttl of {role.max_ttl}; "
                "TTL value is capped accordingly"
            )
            ttl = role.max_ttl
        dns = [n for n in str(body.get("alt_names", "")).split(",") if n]
        if not body.get("exclude_cn_from_sans", False):
            dns.insert(0, common_name)

        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        key = (
            ec.generate_private_key(ec.SECP256R1())
            if role.key_type == "ec"
            else rsa.generate_private_key(65537, role.key_bits)
        )
        now = datetime.now(UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ip) for ip in ips] + [x509.UniformResourceIdentifier(u) for u in uris]
        # Like Vault (Go's x509): CN only when it fits, SAN critical when the subject is empty.
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if len(common_name) <= 64 else []
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuing.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=30))
            .not_valid_after(now + ttl)
            .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuing_key.public_key()),
                critical=False,
            )
            .sign(self.issuing_key, hashes.SHA256())
        )
        serial = f"{cert.serial_number:040x}"
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        data = {
            "certificate": _pem(cert),
            "issuing_ca": _pem(self.issuing),
            "ca_chain": [_pem(c) for c in self.chain()],
            "private_key": key_pem.strip(),
            "private_key_type": role.key_type,
            "serial_number": ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)),
            "expiration": int(cert.not_valid_after_utc.timestamp()),
        }
        return web.json_response(
            {
                "request_id": str(uuid.uuid4()),
                "lease_id": "",
                "renewable": False,
                "lease_duration": 0,
                "data": data,
                "wrap_info": None,
                "warnings": warnings or None,
                "auth": None,
            }
        )
