"""Message model, payload fitting, templates and coupons: pure, no network."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from push.coupons import format_coupon, new_coupon, normalize_coupon, validate_coupon
from push.errors import (
    CouponError,
    InvalidMessageError,
    PayloadTooLargeError,
    TemplateError,
    TemplateSecurityError,
)
from push.messages import (
    Channel,
    Device,
    Message,
    WebPushSubscription,
    tracked_link,
    web_push_topic,
)
from push.payload import ELLIPSIS, compact_json, fit_payload, shorten
from push.templates import TemplateSet, locale_chain


def test_tracked_link_adds_and_replaces_the_message_id() -> None:
    assert tracked_link("https://s.example/p?x=1", "m1") == "https://s.example/p?x=1&pr_mid=m1"
    assert tracked_link("https://s.example/p?pr_mid=old", "m2") == "https://s.example/p?pr_mid=m2"


def test_message_rejects_bad_ids_and_ttls() -> None:
    device = Device(Channel.FCM, "t" * 30)
    with pytest.raises(InvalidMessageError):
        Message(id="has.dot", device=device, title="t", body="b")
    with pytest.raises(InvalidMessageError):
        Message(id="ok", device=device, title="t", body="b", ttl=-1)
    with pytest.raises(InvalidMessageError):
        Message(id="ok", device=device, title="t", body="b", data={"n": 1})  # type: ignore[dict-item]


def test_web_push_topic_is_at_most_32_base64url_chars() -> None:
    assert web_push_topic("short") == "short"
    topic = web_push_topic("x" * 64)
    assert len(topic) == 32 and set(topic) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


def test_subscription_validation() -> None:
    with pytest.raises(InvalidMessageError):
        WebPushSubscription.from_json({"endpoint": "https://p.example/x", "keys": {"auth": "AA"}})


def test_shorten_never_leaves_a_dangling_combining_mark() -> None:
    text = "e\u0301" * 10  # e + combining acute
    for n in range(1, 20):
        out = shorten(text, n)
        assert len(out) <= n
        body = out.removesuffix(ELLIPSIS)
        assert not body or body[-1] == "\u0301"


@settings(max_examples=200, deadline=None)
@given(title=st.text(max_size=300), body=st.text(min_size=0, max_size=3000))
def test_fit_payload_stays_within_the_limit_and_is_valid_utf8(title: str, body: str) -> None:
    def build(t: str, b: str) -> bytes:
        return compact_json({"aps": {"alert": {"title": t, "body": b}}})

    out = fit_payload(build, title, body, limit=512, channel="apns")
    assert len(out) <= 512
    out.decode("utf-8")  # never cut mid-sequence


def test_fit_payload_refuses_when_fixed_fields_are_too_big() -> None:
    with pytest.raises(PayloadTooLargeError):
        fit_payload(
            lambda t, b: compact_json({"d": "x" * 600, "t": t, "b": b}),
            "t",
            "b",
            limit=512,
            channel="fcm",
        )


def test_multibyte_boundary_exact_fit() -> None:
    def build(t: str, b: str) -> bytes:
        return (t + b).encode()

    out = fit_payload(build, "", "€€€€", limit=9, channel="x")  # 3 bytes each
    assert out.decode() == "€€" + ELLIPSIS


TEMPLATES = {
    "cart": {
        "en": {
            "title": "{{ name }}, still want {{ item }}?",
            "body": "Now {{ price|money('EUR') }}",
        },
        "de": {"title": "{{ name }}, noch {{ item }}?", "body": "Jetzt {{ price|money('EUR') }}"},
    }
}


def test_locale_fallback_chain() -> None:
    assert locale_chain("pt-BR") == ["pt_BR", "pt", "en"]
    rendered = TemplateSet(TEMPLATES).render(
        "cart", "de_AT", {"name": "Ana", "item": "Schuh", "price": 1234.5}
    )
    assert rendered["title"] == "Ana, noch Schuh?"
    assert rendered["body"] == "Jetzt €\xa01.234,50"
    english = TemplateSet(TEMPLATES).render("cart", "ja", {"name": "A", "item": "x", "price": 1})
    assert english["body"] == "Now €1.00"


def test_dates_follow_the_requested_locale() -> None:
    ts = TemplateSet({"d": {"en": {"body": "until {{ day|date('long') }}"}}})
    assert ts.render("d", "fr", {"day": dt.date(2026, 12, 1)})["body"] == "until 1 décembre 2026"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% set x = [].append(1) %}",
    ],
)
def test_sandbox_escape_attempt_fails_clearly(source: str) -> None:
    ts = TemplateSet({"evil": {"en": {"body": source}}})
    with pytest.raises(TemplateSecurityError):
        ts.render("evil", "en", {})


def test_templates_keep_the_sandboxs_globals() -> None:
    """The templates' globals are copied at compile time (templates.py `_Sandbox`): they
    call the sandbox's own `range`, which refuses a huge one."""
    small = TemplateSet({"t": {"en": {"body": "{{ range(3) | join(',') }}"}}})
    assert small.render("t", "en", {}) == {"body": "0,1,2"}
    huge = TemplateSet({"t": {"en": {"body": "{{ range(10**7) | length }}"}}})
    with pytest.raises(TemplateError, match="Range too big"):
        huge.render("t", "en", {})


def test_template_takes_plain_data_only() -> None:
    with pytest.raises(TemplateError):
        TemplateSet(TEMPLATES).render("cart", "en", {"name": object(), "item": "x", "price": 1})
    with pytest.raises(TemplateError):
        TemplateSet(TEMPLATES).render("cart", "en", {"item": "x", "price": 1})  # undefined name


class _Record(Mapping[str, Any]):
    """A Mapping that is not a dict."""

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


class _Name(str):
    pass


@pytest.mark.parametrize(
    ("context", "where"),
    [
        ({"items": [{"title": "a", "price": 1.5, "when": dt.date(2026, 1, 2)}]}, None),
        ({"n": Decimal("1.10"), "t": (1, "x", None), "ok": True, "s": _Name("x")}, None),
        ({"rec": _Record(a=1, b=[_Record(c="d")])}, None),
        ({"items": [{"title": "a"}, {"title": object()}]}, "context.items[1].title"),
        ({"rec": _Record(a=[1, {2}])}, "context.rec.a[1]"),
        ({"d": {1: "x"}}, "context.d has a non-string key"),
        ({"b": b"bytes"}, "context.b"),
        ({"deep": [[[[frozenset()]]]]}, "context.deep[0][0][0][0]"),
    ],
)
def test_plain_data_is_checked_to_any_depth_and_the_error_says_where(
    context: dict[str, Any], where: str | None
) -> None:
    ts = TemplateSet({"t": {"en": {"body": "x"}}})
    if where is None:
        assert ts.render("t", "en", context) == {"body": "x"}
        return
    with pytest.raises(TemplateError, match=re.escape(where)):
        ts.render("t", "en", context)


_LEAVES = st.one_of(
    st.text(max_size=3), st.integers(), st.floats(), st.booleans(), st.none(),
    st.decimals(allow_nan=False), st.dates(), st.datetimes(), st.builds(_Name, st.text()),
    st.binary(max_size=2), st.frozensets(st.integers(), max_size=1), st.builds(object),
)  # fmt: skip
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers()), inner, max_size=3),
        st.dictionaries(st.text(max_size=2), inner, max_size=3).map(lambda d: _Record(**d)),
    ),
    max_leaves=8,
)


def _plain(value: Any) -> bool:
    """Plain data, as the templates define it, written as plainly as possible."""
    if isinstance(value, str | int | float | bool | Decimal | dt.date | None):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


@given(_VALUES)
@settings(max_examples=300, deadline=None)
def test_templates_accept_exactly_plain_data(value: Any) -> None:
    ts = TemplateSet({"t": {"en": {"body": "x"}}})
    if _plain(value):
        assert ts.render("t", "en", {"v": value}) == {"body": "x"}
    else:
        with pytest.raises(TemplateError, match=r"^context\.v"):
            ts.render("t", "en", {"v": value})


def test_coupon_round_trip_and_typos_are_caught() -> None:
    code = new_coupon()
    assert validate_coupon(code.lower().replace("-", " ")) == code
    raw = normalize_coupon(code)
    for i in range(len(raw)):
        for replacement in "0123456789ABCDEFGHJKMNPQRSTVWXYZ":
            if replacement == raw[i]:
                continue
            typo = raw[:i] + replacement + raw[i + 1 :]
            with pytest.raises(CouponError):
                normalize_coupon(typo)


def test_coupon_forgives_confusable_letters() -> None:
    code = normalize_coupon(new_coupon())
    confused = code.replace("0", "O").replace("1", "I")
    assert format_coupon(normalize_coupon(confused)) == format_coupon(code)


def test_coupons_are_unique() -> None:
    assert len({new_coupon() for _ in range(2000)}) == 2000


def test_message_round_trips_through_json_for_every_channel() -> None:
    import json

    from push.testing import WebPushService

    service = WebPushService()
    service.base_url = "https://push.example"
    devices = [
        Device(Channel.FCM, "t" * 30),
        Device(Channel.APNS, "ab" * 32),
        Device(Channel.WEBHOOK, "https://hooks.example/x"),
        Device(Channel.WEBPUSH, subscription=WebPushSubscription.from_json(service.subscribe())),
    ]
    for device in devices:
        msg = Message(id="m1", device=device, title="t", body="b", data={"k": "v"}, coupon="AB")
        assert Message.from_dict(json.loads(json.dumps(msg.to_dict()))) == msg
    with pytest.raises(InvalidMessageError):
        Message.from_dict({"id": "m1", "device": {"channel": "pigeon"}, "title": "", "body": ""})


def test_apns_provider_token_header_is_alg_and_kid_only() -> None:
    import jwt

    from push.gateways.apns_auth import ApnsKey
    from push.testing import ApnsServer

    pem, kid, team = ApnsServer().signing_key()
    token = ApnsKey.from_pem(pem, key_id=kid, team_id=team).mint(1_700_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": kid}
    assert jwt.decode(token, options={"verify_signature": False}) == {
        "iss": team,
        "iat": 1_700_000_000,
    }


def test_compose_renders_a_message_in_the_shoppers_locale() -> None:
    from push.templates import compose

    msg = compose(
        TemplateSet(TEMPLATES),
        "cart",
        id="m42",
        device=Device(Channel.FCM, "t" * 30),
        locale="de-DE",
        context={"name": "Ana", "item": "Schuh", "price": 80},
        coupon="7KQ2-M9XD",
    )
    assert (msg.title, msg.body, msg.locale, msg.coupon) == (
        "Ana, noch Schuh?",
        "Jetzt 80,00\xa0€",
        "de-DE",
        "7KQ2-M9XD",
    )
