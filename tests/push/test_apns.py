"""APNs: builder without a network, reason mapping, provider-token reuse, and sends to
the local HTTP/2 server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest

from push.gateways.apns import ApnsGateway, apns_id, build_apns_request, map_apns_response
from push.gateways.apns_auth import MIN_REFRESH_S, ApnsKey, ProviderTokens
from push.http import make_client
from push.messages import Channel, Message, Priority
from push.result import DeliveryResult, Outcome
from push.stores import MemoryTokenCache
from push.testing import ApnsServer, Scripted, serve_app
from push.testing.tls import make_certificates
from tests.push.helpers import apns_token, message

TOPIC = "com.example.shop"


def _key(server: ApnsServer) -> ApnsKey:
    pem, kid, team = server.signing_key()
    return ApnsKey.from_pem(pem, key_id=kid, team_id=team)


def test_builder_sets_every_header_from_the_message() -> None:
    msg = message(Channel.APNS, apns_token(), priority=Priority.HIGH, ttl=600, data={"sku": "9"})
    req = build_apns_request(
        msg, topic=TOPIC, provider_token="jwt", now=1_700_000_000, base_url="https://a.example"
    )
    assert req.url == f"https://a.example/3/device/{msg.device.token}"
    assert req.headers["authorization"] == "bearer jwt"
    assert req.headers["apns-topic"] == TOPIC
    assert req.headers["apns-push-type"] == "alert"
    assert req.headers["apns-priority"] == "10"
    assert req.headers["apns-expiration"] == "1700000600"
    assert req.headers["apns-collapse-id"] == msg.id
    assert str(uuid.UUID(req.headers["apns-id"])) == req.headers["apns-id"] == apns_id(msg.id)
    payload = json.loads(req.body)
    assert payload["aps"]["alert"] == {"title": msg.title, "body": msg.body}
    assert payload["sku"] == "9" and payload["pr_mid"] == msg.id


def test_ttl_zero_means_expiration_zero_and_normal_priority_is_5() -> None:
    msg = message(Channel.APNS, apns_token(), ttl=0)
    req = build_apns_request(msg, topic=TOPIC, provider_token="j", now=1)
    assert req.headers["apns-expiration"] == "0"
    assert req.headers["apns-priority"] == "5"


def test_long_multibyte_body_is_shortened_below_4096_bytes() -> None:
    msg = message(Channel.APNS, apns_token(), body="日本語のテキスト" * 400)
    req = build_apns_request(msg, topic=TOPIC, provider_token="j", now=1)
    assert len(req.body) <= 4096
    assert json.loads(req.body)["aps"]["alert"]["body"].endswith("…")


def _reason(reason: str, **extra: object) -> bytes:
    return json.dumps({"reason": reason, **extra}).encode()


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, _reason("BadDeviceToken"), Outcome.DEVICE_INVALID),
        (400, _reason("DeviceTokenNotForTopic"), Outcome.DEVICE_INVALID),
        (400, _reason("BadCollapseId"), Outcome.FAILED),
        (400, _reason("TopicDisallowed"), Outcome.CREDENTIALS),
        (403, _reason("InvalidProviderToken"), Outcome.CREDENTIALS),
        (403, _reason("ExpiredProviderToken"), Outcome.RETRY),
        (410, _reason("Unregistered", timestamp=1_700_000_000_000), Outcome.DEVICE_INVALID),
        (413, _reason("PayloadTooLarge"), Outcome.FAILED),
        (429, _reason("TooManyRequests"), Outcome.RETRY),
        (500, _reason("InternalServerError"), Outcome.RETRY),
        (503, _reason("ServiceUnavailable"), Outcome.RETRY),
    ],
)
def test_reason_mapping(status: int, body: bytes, outcome: Outcome) -> None:
    result = map_apns_response(message(Channel.APNS, apns_token()), status, {}, body)
    assert result.outcome is outcome
    if status == 410:
        assert result.invalid_since is not None
        assert result.invalid_since.timestamp() == 1_700_000_000


async def _send(server: ApnsServer, messages: list[Message], tokens: ProviderTokens) -> list:  # type: ignore[type-arg]
    async with make_client() as client:
        gateway = ApnsGateway(client, tokens, topic=TOPIC, base_url=server.base_url)
        return list(await asyncio.gather(*(gateway.send(m) for m in messages)))


def test_delivered_over_http2_with_apns_id_echoed(apns: ApnsServer) -> None:
    msg = message(Channel.APNS, apns_token())
    [result] = asyncio.run(_send(apns, [msg], ProviderTokens(_key(apns))))
    assert result.outcome is Outcome.DELIVERED, result
    assert result.gateway_id == apns_id(msg.id)
    [record] = apns.received
    assert record["headers"]["apns-collapse-id"] == msg.id


def test_provider_token_is_reused_across_many_sends(apns: ApnsServer) -> None:
    tokens = ProviderTokens(_key(apns))
    messages = [message(Channel.APNS, apns_token()) for _ in range(200)]
    results = asyncio.run(_send(apns, messages, tokens))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert tokens.minted == 1


def test_processes_sharing_a_cache_share_one_token(apns: ApnsServer) -> None:
    key, cache = _key(apns), MemoryTokenCache()
    first, second = ProviderTokens(key, cache), ProviderTokens(key, cache)
    asyncio.run(_send(apns, [message(Channel.APNS, apns_token())], first))
    [result] = asyncio.run(_send(apns, [message(Channel.APNS, apns_token())], second))
    assert result.outcome is Outcome.DELIVERED
    assert first.minted + second.minted == 1


def test_minting_per_process_without_sharing_is_refused_by_apns(apns: ApnsServer) -> None:
    key = _key(apns)
    asyncio.run(_send(apns, [message(Channel.APNS, apns_token())], ProviderTokens(key)))
    # A second process with its own cache mints another token (ECDSA signatures differ
    # even within one second).
    late = ProviderTokens(key)
    [result] = asyncio.run(_send(apns, [message(Channel.APNS, apns_token())], late))
    assert result.outcome is Outcome.RETRY
    assert result.reason == "apns:TooManyProviderTokenUpdates"


def test_expired_token_is_replaced_only_once_20_minutes_old() -> None:
    async def go() -> None:
        tokens = ProviderTokens(
            ApnsKey.from_pem(ApnsServer().signing_key()[0], key_id="K", team_id="T")
        )
        issued = 1_800_000_000.0
        old = await tokens.token(now=issued)
        # Called expired at 5 minutes: kept (a new one would be refused), with the wait
        assert await tokens.invalidate(old, now=issued + 300) == MIN_REFRESH_S - 300
        assert await tokens.token(now=issued + 301) == old and tokens.minted == 1
        # At 20 minutes it may go: the next token is a new one
        assert await tokens.invalidate(old, now=issued + MIN_REFRESH_S) == 0.0
        assert await tokens.token(now=issued + MIN_REFRESH_S + 1) != old
        assert tokens.minted == 2

    asyncio.run(go())


def test_expired_provider_token_answers_do_not_re_mint_within_20_minutes(
    apns: ApnsServer,
) -> None:
    token = apns_token()
    expired = Scripted(403, reason="ExpiredProviderToken")
    apns.script.push(expired, expired, key=token)
    tokens = ProviderTokens(_key(apns))

    async def go() -> list[DeliveryResult]:
        async with make_client() as client:
            gateway = ApnsGateway(client, tokens, topic=TOPIC, base_url=apns.base_url)
            return [await gateway.send(message(Channel.APNS, token)) for _ in range(3)]

    first, second, third = asyncio.run(go())
    for result in (first, second):
        assert (result.outcome, result.reason) == (Outcome.RETRY, "apns:ExpiredProviderToken")
        # no new token before 20 minutes: come back then, not in a second
        assert result.retry_after is not None and result.retry_after > MIN_REFRESH_S - 60
    assert third.outcome is Outcome.DELIVERED
    assert tokens.minted == 1 and len(apns.provider_tokens_seen) == 1


def test_unregistered_device_gets_gateway_timestamp(apns: ApnsServer) -> None:
    token = apns_token()
    apns.script.unregister(token)
    [result] = asyncio.run(_send(apns, [message(Channel.APNS, token)], ProviderTokens(_key(apns))))
    assert result.outcome is Outcome.DEVICE_INVALID
    assert result.invalid_since is not None


def test_bad_token_shape_is_device_invalid_without_a_request(apns: ApnsServer) -> None:
    [result] = asyncio.run(
        _send(apns, [message(Channel.APNS, "../../etc")], ProviderTokens(_key(apns)))
    )
    assert result.outcome is Outcome.DEVICE_INVALID
    assert list(apns.received) == []


def test_untrusted_key_is_credentials_broken(apns: ApnsServer) -> None:
    stranger = ApnsServer().signing_key()
    key = ApnsKey.from_pem(stranger[0], key_id=stranger[1], team_id=stranger[2])
    [result] = asyncio.run(_send(apns, [message(Channel.APNS, apns_token())], ProviderTokens(key)))
    assert result.outcome is Outcome.CREDENTIALS


def test_scripted_503_then_200(apns: ApnsServer) -> None:
    token = apns_token()
    apns.script.push(Scripted(503), key=token)
    tokens = ProviderTokens(_key(apns))

    async def go() -> list:  # type: ignore[type-arg]
        async with make_client() as client:
            gateway = ApnsGateway(client, tokens, topic=TOPIC, base_url=apns.base_url)
            return [await gateway.send(message(Channel.APNS, token)) for _ in range(2)]

    first, second = asyncio.run(go())
    assert first.outcome is Outcome.RETRY and second.outcome is Outcome.DELIVERED


def test_server_refuses_http11(apns: ApnsServer) -> None:
    response = httpx.post(f"{apns.base_url}/3/device/{apns_token()}", content=b"{}")
    assert response.status_code == 505


def test_https_base_negotiates_http2_by_alpn_and_trusts_the_ca_bundle(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server = ApnsServer(TOPIC)
    with serve_app(server, certfile=str(certs.cert_file), keyfile=str(certs.key_file)) as base:
        assert base.startswith("https://")
        tokens = ProviderTokens(_key(server))

        async def go(ca: Path | None) -> Outcome:
            async with make_client(ca_bundle=ca) as client:
                gateway = ApnsGateway(client, tokens, topic=TOPIC, base_url=base)
                return (await gateway.send(message(Channel.APNS, apns_token()))).outcome

        assert asyncio.run(go(certs.ca_file)) is Outcome.DELIVERED  # 505 if not HTTP/2
        assert asyncio.run(go(None)) is Outcome.RETRY  # unknown CA: TLS fails, transient
