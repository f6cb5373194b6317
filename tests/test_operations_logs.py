"""Logs of a real `wacall serve`: one JSON object per line with the RPC, webhook and decision fields, and never a
token, secret, Authorization header or webhook signature."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import BUSINESS, US_BUSINESS, USER
from test_process import ServeProcess
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

AUTH_TOKEN = "tok-5f1d2c9e7a-never-logged"
VERIFY_TOKEN = "verify-8c3b1e55-never-logged"
WRONG_TOKEN = "guess-0a9b8c7d-never-logged"


def drive(process: ServeProcess, tmp_path: Path) -> list[str]:
    """RPCs (allowed, refused by the rules, refused by the token), webhooks (the simulator's signed ones, a forged
    one, the verification handshake); returns the secrets and signatures that went over the wire."""
    good = (("authorization", f"Bearer {AUTH_TOKEN}"),)
    with grpc.insecure_channel(process.grpc) as channel:
        calling = calling_pb2_grpc.CallingServiceStub(channel)
        sim = simulator_pb2_grpc.SimulatorServiceStub(channel)
        sim.SetUserBehavior(
            sim_pb.SetUserBehaviorRequest(user_number=USER, on_permission_request=sim_pb.ACCEPT_TEMPORARY),
            metadata=good,
        )
        calling.RequestPermission(
            pb.RequestPermissionRequest(business_number=BUSINESS, user_number=USER), metadata=good
        )
        with pytest.raises(grpc.RpcError):
            calling.RequestPermission(
                pb.RequestPermissionRequest(business_number=US_BUSINESS, user_number=USER), metadata=good
            )
        with pytest.raises(grpc.RpcError):
            calling.GetPermission(
                pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER),
                metadata=(("authorization", f"Bearer {WRONG_TOKEN}"),),
            )
        deadline = time.monotonic() + 10
        while True:  # the simulator's signed webhook carries the user's answer
            permission = calling.GetPermission(
                pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER), metadata=good
            )
            if permission.state == pb.PERMISSION_STATE_TEMPORARY or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert permission.state == pb.PERMISSION_STATE_TEMPORARY
    app_secret = json.loads((tmp_path / "sim.json").read_text())["app_secret"]
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    forged = sign(b"not-the-app-secret", body)
    url = f"http://{process.http}{WEBHOOK_PATH}"
    with httpx.Client() as http:
        assert http.post(url, content=body, headers={SIGNATURE_HEADER: forged}).status_code == 401
        handshake = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
        assert http.get(url, params=handshake).text == "42"
        assert http.get(f"http://{process.http}/metrics").status_code == 200
    return [AUTH_TOKEN, VERIFY_TOKEN, WRONG_TOKEN, app_secret, forged, forged.removeprefix("sha256="), sign(
        app_secret.encode(), body
    ).removeprefix("sha256=")]  # fmt: skip


def test_json_logs_parse_line_by_line_with_one_line_per_rpc_webhook_and_decision_and_no_secret(
    tmp_path: Path,
) -> None:
    process = ServeProcess(
        tmp_path,
        "--log-format",
        "json",
        "--auth-token",
        AUTH_TOKEN,
        "--webhook-verify-token",
        VERIFY_TOKEN,
        "--rtpengine",
        "off",
    )
    try:
        secrets = drive(process, tmp_path)
    finally:
        assert process.stop() == 0
    assert process.proc.stderr is not None and process.proc.stdout is not None
    errors, output = process.proc.stderr.read(), process.proc.stdout.read()
    for secret in secrets:
        assert secret not in errors and secret not in output, f"a secret reached the logs: {secret[:6]}..."
    assert "Bearer" not in errors
    lines: list[dict[str, Any]] = [json.loads(line) for line in errors.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    rpcs = [line for line in lines if line["logger"] == "wacall.rpc"]
    sent = next(r for r in rpcs if r["method"].endswith("/RequestPermission") and r["code"] == "OK")
    assert (sent["business"], sent["user"], sent["level"]) == (BUSINESS, USER, "INFO")
    assert any(r["method"].endswith("/GetPermission") and r["code"] == "UNAUTHENTICATED" for r in rpcs)
    assert all(isinstance(r["duration_ms"], float | int) for r in rpcs)
    decisions = [line for line in lines if line["logger"] == "wacall.decisions"]
    assert {(d["action"], d["outcome"]) for d in decisions} == {("request", "allowed"), ("request", "refused")}
    assert all(d["reason"] for d in decisions if d["outcome"] == "refused")
    webhooks = {line["result"]: line for line in lines if line["logger"] == "wacall.webhooks"}
    assert webhooks["ok"]["kinds"].get("permission_reply") == 1 and webhooks["ok"]["items"] >= 1
    assert "refused-signature" in webhooks
    # The libraries' chatter stays below INFO.
    assert not [line for line in lines if line["logger"].startswith(("aiortc", "aioice", "aiohttp.access"))]
