"""TLS and mTLS between the gateway and the model services, with grpc's own credentials.

The certificates are made here: a self-signed CA, a server certificate for 127.0.0.1 and
localhost, client certificates from that CA and from another one.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2

from autoglm.v1 import decoder_pb2_grpc
from services.common import auth
from services.common.config import ServiceConfig
from tests.common.internal_server import generated, health_status, running

Key = ec.EllipticCurvePrivateKey
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclasses.dataclass(frozen=True)
class Authority:
    key: Key
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(subject: str, key: Key, issuer: Authority | None, is_ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def authority(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    return Authority(key, _sign(name, key, None, is_ca=True))


def write_pem(directory: Path, name: str, signer: Authority) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``signer``, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(
        _sign(name, key, signer, is_ca=False).public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def write_ca(directory: Path, ca: Authority) -> Path:
    path = directory / "ca.crt"
    path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, stranger = authority("autoglm test CA"), authority("another CA")
    server_cert, server_key = write_pem(tmp_path, "server", ca)
    client_cert, client_key = write_pem(tmp_path, "gateway", ca)
    foreign_cert, foreign_key = write_pem(tmp_path, "intruder", stranger)
    (tmp_path / "stranger").mkdir()
    return {
        "stranger_ca": write_ca(tmp_path / "stranger", stranger),
        "ca": write_ca(tmp_path, ca),
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "foreign_cert": foreign_cert,
        "foreign_key": foreign_key,
    }


def server_config(pki: dict[str, Path], mutual: bool) -> ServiceConfig:
    return ServiceConfig(
        host="127.0.0.1",
        port=0,
        internal_tls_cert=pki["server_cert"],
        internal_tls_key=pki["server_key"],
        internal_tls_ca=pki["ca"] if mutual else None,
    )


async def answers(target: str, client: ServiceConfig) -> bool:
    async with auth.internal_channel(target, client, []) as channel:
        try:
            return await generated(decoder_pb2_grpc.DecoderStub(channel)) == [1, 2, 3]
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False


async def test_tls_serves_clients_that_trust_the_ca(pki: dict[str, Path]) -> None:
    async with running(server_config(pki, mutual=False)) as target:
        assert await answers(target, ServiceConfig(internal_tls_ca=pki["ca"]))
        # Neither plaintext nor a client that trusts only the system's CAs gets through.
        assert not await answers(target, ServiceConfig())
        assert not await answers(target, ServiceConfig(internal_tls_ca=pki["stranger_ca"]))


async def test_mtls_requires_a_client_certificate_from_the_ca(pki: dict[str, Path]) -> None:
    trusted = ServiceConfig(
        internal_tls_ca=pki["ca"],
        internal_tls_cert=pki["client_cert"],
        internal_tls_key=pki["client_key"],
    )
    foreign = dataclasses.replace(
        trusted, internal_tls_cert=pki["foreign_cert"], internal_tls_key=pki["foreign_key"]
    )
    async with running(server_config(pki, mutual=True)) as target:
        assert await answers(target, trusted)
        assert not await answers(target, ServiceConfig(internal_tls_ca=pki["ca"]))
        assert not await answers(target, foreign)


async def test_tls_and_the_token_together(pki: dict[str, Path], tmp_path: Path) -> None:
    token = tmp_path / "token"
    auth.write_token_file(token)
    server = dataclasses.replace(server_config(pki, mutual=False), internal_token_file=token)
    client = ServiceConfig(internal_tls_ca=pki["ca"], internal_token_file=token)
    async with running(server) as target:
        assert await answers(target, client)
        without_token = dataclasses.replace(client, internal_token_file=None)
        async with auth.internal_channel(target, without_token, []) as channel:
            assert await health_status(channel) == SERVING  # probes need no token
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await generated(decoder_pb2_grpc.DecoderStub(channel))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="go together"):
        ServiceConfig(internal_tls_cert=Path("server.crt"))
