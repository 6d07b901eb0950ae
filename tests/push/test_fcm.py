"""FCM HTTP v1: builder without a network, error mapping, and sends to the local server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from push.errors import InvalidMessageError
from push.gateways.fcm import FcmGateway, build_fcm_request, map_fcm_response
from push.gateways.google_oauth import ServiceAccountTokens
from push.h1 import H1Timeouts
from push.http import make_h1_client
from push.messages import Channel, Priority
from push.result import DeliveryResult, Outcome
from push.testing import FcmServer, Scripted, make_certificates, serve_app
from tests.push.helpers import fcm_token, message


def test_builder_produces_v1_request_with_string_data_and_collapse_ids() -> None:
    msg = message(
        Channel.FCM, fcm_token(), data={"sku": "42"}, coupon="7KQ2-M9XD", priority=Priority.HIGH
    )
    request = build_fcm_request(
        msg, project_id="p1", access_token="tok", now=1_700_000_000, base_url="https://f.example"
    )
    assert request.url == "https://f.example/v1/projects/p1/messages:send"
    assert request.headers["authorization"] == "Bearer tok"
    body = json.loads(request.body)["message"]
    assert body["token"] == msg.device.token
    assert all(isinstance(v, str) for v in body["data"].values())
    assert body["data"]["pr_mid"] == msg.id
    assert body["data"]["pr_link"].endswith(f"pr_mid={msg.id}")
    assert body["android"] == {
        "priority": "HIGH",
        "ttl": "86400s",
        "notification": {"tag": msg.id},
    }
    assert body["apns"]["headers"]["apns-collapse-id"] == msg.id
    assert body["apns"]["headers"]["apns-expiration"] == str(1_700_000_000 + 86_400)
    assert body["webpush"]["headers"]["Topic"] == msg.id


def test_builder_refuses_reserved_data_keys() -> None:
    msg = message(Channel.FCM, fcm_token(), data={"google.sent_time": "1"})
    with pytest.raises(InvalidMessageError):
        build_fcm_request(msg, project_id="p", access_token="t", now=0)


def test_builder_shortens_body_to_fit_4096_bytes() -> None:
    msg = message(Channel.FCM, fcm_token(), body="€" * 3000)
    request = build_fcm_request(msg, project_id="p", access_token="t", now=0)
    assert len(request.body) <= 4096
    body = json.loads(request.body)["message"]["notification"]["body"]
    assert body.endswith("…") and set(body[:-1]) == {"€"}


def _error(status: int, code: str | None, message: str = "x", field: str | None = None) -> bytes:
    details = []
    if code:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    error = {"code": status, "message": message, "status": "X", "details": details}
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "body", "headers", "outcome", "retry_after"),
    [
        (404, _error(404, "UNREGISTERED"), {}, Outcome.DEVICE_INVALID, None),
        (403, _error(403, "SENDER_ID_MISMATCH"), {}, Outcome.DEVICE_INVALID, None),
        (
            400,
            _error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM token"),
            {},
            Outcome.DEVICE_INVALID,
            None,
        ),
        (
            400,
            _error(400, None, "Invalid value at 'message.data[0].value'", "message.data[0].value"),
            {},
            Outcome.FAILED,
            None,
        ),
        (429, _error(429, "QUOTA_EXCEEDED"), {"retry-after": "17"}, Outcome.RETRY, 17.0),
        (503, _error(503, "UNAVAILABLE"), {}, Outcome.RETRY, None),
        (500, _error(500, "INTERNAL"), {}, Outcome.RETRY, None),
        (401, _error(401, "THIRD_PARTY_AUTH_ERROR"), {}, Outcome.CREDENTIALS, None),
        (401, _error(401, None), {}, Outcome.RETRY, 1.0),
        (502, b"<html>bad gateway</html>", {}, Outcome.RETRY, None),
    ],
)
def test_error_mapping_matrix(
    status: int, body: bytes, headers: dict[str, str], outcome: Outcome, retry_after: float | None
) -> None:
    result = map_fcm_response(message(Channel.FCM, fcm_token()), status, headers, body)
    assert result.outcome is outcome
    assert result.retry_after == retry_after
    assert result.status == status


async def _send_all(server: FcmServer, messages: list, tokens: ServiceAccountTokens | None = None):  # type: ignore[no-untyped-def, type-arg]
    tokens = tokens or ServiceAccountTokens(server.service_account())
    async with make_h1_client() as client:
        gateway = FcmGateway(client, tokens, base_url=server.base_url)
        return [await gateway.send(m) for m in messages]


def test_send_delivers_and_server_records_the_message(fcm: FcmServer) -> None:
    msg = message(Channel.FCM, fcm_token())
    [result] = asyncio.run(_send_all(fcm, [msg]))
    assert result.outcome is Outcome.DELIVERED, result
    assert result.gateway_id and result.gateway_id.startswith("projects/pushrec-test/messages/")
    [record] = [r for r in fcm.received if r["kind"] == "message"]
    assert record["message"]["notification"]["title"] == msg.title
    assert record["http_version"] == "1.1"


def test_https_base_speaks_http11_and_trusts_the_ca_bundle(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server = FcmServer("pushrec-test")
    with serve_app(server, certfile=str(certs.cert_file), keyfile=str(certs.key_file)) as base:
        assert base.startswith("https://")
        tokens = ServiceAccountTokens(server.service_account(), ca_bundle=certs.ca_file)

        async def go(ca: Path | None) -> Outcome:
            async with make_h1_client(ca_bundle=ca) as client:
                gateway = FcmGateway(client, tokens, base_url=base)
                return (await gateway.send(message(Channel.FCM, fcm_token()))).outcome

        assert asyncio.run(go(certs.ca_file)) is Outcome.DELIVERED
        assert asyncio.run(go(None)) is Outcome.RETRY  # unknown CA: TLS fails, transient
    [record] = [r for r in server.received if r["kind"] == "message"]
    assert record["http_version"] == "1.1"  # push.h1 offers no ALPN: HTTP/1.1


def test_oauth_token_is_minted_once_and_reused(fcm: FcmServer) -> None:
    before = fcm.tokens_issued
    messages = [message(Channel.FCM, fcm_token()) for _ in range(30)]
    results = asyncio.run(_send_all(fcm, messages))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert fcm.tokens_issued - before == 1


def test_503_then_200_is_retry_then_delivered(fcm: FcmServer) -> None:
    token = fcm_token()
    fcm.script.push(Scripted(503), key=token)
    first, second = asyncio.run(_send_all(fcm, [message(Channel.FCM, token)] * 2))
    assert first.outcome is Outcome.RETRY and first.reason == "fcm:UNAVAILABLE"
    assert second.outcome is Outcome.DELIVERED


def test_429_carries_retry_after(fcm: FcmServer) -> None:
    fcm.script.push(Scripted(429, retry_after="30"))
    [result] = asyncio.run(_send_all(fcm, [message(Channel.FCM, fcm_token())]))
    assert result.outcome is Outcome.RETRY
    assert result.retry_after == 30.0


def test_unregistered_token_is_device_invalid(fcm: FcmServer) -> None:
    token = fcm_token()
    fcm.script.unregister(token)
    [result] = asyncio.run(_send_all(fcm, [message(Channel.FCM, token)]))
    assert result.outcome is Outcome.DEVICE_INVALID
    assert result.reason == "fcm:UNREGISTERED"


def test_malformed_token_is_device_invalid_but_payload_bug_is_failure(fcm: FcmServer) -> None:
    bad_token = asyncio.run(_send_all(fcm, [message(Channel.FCM, "not a token!")]))[0]
    assert bad_token.outcome is Outcome.DEVICE_INVALID
    fcm.script.push(Scripted(400, reason="INVALID_ARGUMENT"))
    # A scripted 400 without a token hint stands for a payload FCM refused.
    payload_bug = asyncio.run(_send_all(fcm, [message(Channel.FCM, fcm_token())]))[0]
    assert payload_bug.outcome is Outcome.FAILED


def test_wrong_project_is_credentials_failure(fcm: FcmServer) -> None:
    async def go():  # type: ignore[no-untyped-def]
        tokens = ServiceAccountTokens(fcm.service_account())
        async with make_h1_client() as client:
            gateway = FcmGateway(client, tokens, project_id="other", base_url=fcm.base_url)
            return await gateway.send(message(Channel.FCM, fcm_token()))

    assert asyncio.run(go()).outcome is Outcome.CREDENTIALS


def test_untrusted_service_account_is_credentials_failure(fcm: FcmServer) -> None:
    other = FcmServer("pushrec-test")
    other.base_url = fcm.base_url  # same token_uri, key this server never saw
    tokens = ServiceAccountTokens(other.service_account())
    [result] = asyncio.run(_send_all(fcm, [message(Channel.FCM, fcm_token())], tokens))
    assert result.outcome is Outcome.CREDENTIALS


def test_unreachable_gateway_is_retry() -> None:
    server = FcmServer("p")
    server.base_url = "http://127.0.0.1:9"

    async def go():  # type: ignore[no-untyped-def]
        tokens = ServiceAccountTokens(server.service_account())
        async with make_h1_client() as client:
            return await FcmGateway(client, tokens, base_url=server.base_url).send(
                message(Channel.FCM, fcm_token())
            )

    result = asyncio.run(go())
    assert result.outcome is Outcome.RETRY
    assert result.reason == "fcm:token_endpoint"


def test_refused_connection_is_retry(fcm: FcmServer) -> None:
    async def go() -> DeliveryResult:
        tokens = ServiceAccountTokens(fcm.service_account())  # minted by the live server
        async with make_h1_client() as client:
            gateway = FcmGateway(client, tokens, base_url="http://127.0.0.1:9")
            return await gateway.send(message(Channel.FCM, fcm_token()))

    result = asyncio.run(go())
    assert (result.outcome, result.reason) == (Outcome.RETRY, "fcm:network:connect")


def test_answer_slower_than_the_timeout_is_retry(fcm: FcmServer) -> None:
    fcm.script.push(Scripted(503, delay_s=1.0))  # a 503 had it come in time

    async def go() -> DeliveryResult:
        tokens = ServiceAccountTokens(fcm.service_account())
        await tokens.token()  # the token endpoint is not what times out here
        async with make_h1_client(timeouts=H1Timeouts(read=0.3)) as client:
            gateway = FcmGateway(client, tokens, base_url=fcm.base_url)
            return await gateway.send(message(Channel.FCM, fcm_token()))

    result = asyncio.run(go())
    assert (result.outcome, result.reason) == (Outcome.RETRY, "fcm:timeout")


def test_refused_access_token_is_reminted_on_the_next_attempt(fcm: FcmServer) -> None:
    async def go() -> list[Outcome]:
        tokens = ServiceAccountTokens(fcm.service_account())
        async with make_h1_client() as client:
            gateway = FcmGateway(client, tokens, base_url=fcm.base_url)
            first = await gateway.send(message(Channel.FCM, fcm_token()))
            fcm.revoke_access_tokens()
            second = await gateway.send(message(Channel.FCM, fcm_token()))
            third = await gateway.send(message(Channel.FCM, fcm_token()))
            return [first.outcome, second.outcome, third.outcome]

    before = fcm.tokens_issued
    assert asyncio.run(go()) == [Outcome.DELIVERED, Outcome.RETRY, Outcome.DELIVERED]
    assert fcm.tokens_issued - before == 2
