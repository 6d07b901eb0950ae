"""The configuration a replay runs with: the shop's TOML file (or the demo's rules), with
`--set` overrides applied, written out as the one file every process of the replay reads.

An override is `NAME=VALUE` for a top-level setting (`cap_marketing_per_day=3`) or
`rules.RULE.FIELD=VALUE` for one rule's field (`rules.cart_abandoned.delay_s=3600`);
VALUE is read as JSON when it parses (numbers, booleans, lists), else as a string. A rule
override on a file without `[[rules]]` applies to the default rules, written out in full.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from worker.coupons import CouponPool, CouponSpec
from worker.rules import DEFAULT_RULES, Rule

# Settings that name a real gateway's credentials: a replay refuses them unless told.
REAL_GATEWAY_SETTINGS = (
    "fcm_credentials",
    "apns_key_file",
    "vapid_private_key",
    "webhook_secret",
    "fcm_url",
    "apns_url",
)

DEMO_RULES: tuple[Rule, ...] = (
    Rule(
        name="cross_sell_now",
        kind="post_purchase",
        delay_s=0,
        cooldown_s=3 * 86_400,
        holdout_pct=10,
        title="Goes well with your {{ trigger.title | lower }}",
        body="{{ items[0].title | lower }}{% if items | length > 1 %} and "
        "{{ items[1].title | lower }}{% endif %}.",
    ),
    Rule(
        name="cross_sell_next_day",
        kind="post_purchase",
        delay_s=86_400,
        cooldown_s=86_400,
        holdout_pct=10,
        title="Picked for you after your order",
        body="{{ items[0].title | lower }}{% if coupon %}: code {{ coupon }} takes "
        "{{ coupon.percent_off }}% off{% endif %}.",
        coupon=CouponSpec(pool="demo", percent_off=10, ttl_days=7),
    ),
    Rule(
        name="replenish",
        kind="replenish",
        holdout_pct=10,
        title="Time to restock {{ trigger.title | lower }}?",
        body="You usually buy it about every {{ interval_days }} days.",
    ),
)


# The pool the default rules' coupons come from when the file declares none: a replay's
# shoppers come back often, so the per-shopper limit is high.
DEMO_POOL = CouponPool(name="demo", budget_count=1_000_000, per_shopper=1000)


class ConfigError(Exception):
    """A bad override or an unreadable config file; the message says which."""


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _rule_dict(rule: Rule) -> dict[str, Any]:
    return rule.model_dump(mode="json", exclude_none=True)


def load_config(
    path: Path | None, default_rules: tuple[Rule, ...] = DEFAULT_RULES
) -> dict[str, Any]:
    """The TOML file as a dict (`{}` for none), with its rules spelt out (`default_rules`
    when it has none, with `DEMO_POOL` under each pool name their coupons use)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not data.get("rules"):
        data["rules"] = [_rule_dict(rule) for rule in default_rules]
        pools = sorted({r.coupon.pool for r in default_rules if r.coupon is not None})
        if pools and not data.get("coupon_pools"):
            data["coupon_pools"] = [
                DEMO_POOL.model_copy(update={"name": name}).model_dump(
                    mode="json", exclude_none=True
                )
                for name in pools
            ]
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `config` with each `NAME=VALUE` override applied (module doc)."""
    out = {**config, "rules": [dict(rule) for rule in config.get("rules", [])]}
    for override in overrides:
        name, sep, text = override.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {override!r}: use NAME=VALUE")
        parts = name.split(".")
        if parts[0] == "rules":
            if len(parts) != 3:
                raise ConfigError(f"--set {override!r}: use rules.RULE.FIELD=VALUE")
            rule = next((r for r in out["rules"] if r.get("name") == parts[1]), None)
            if rule is None:
                known = ", ".join(r.get("name", "?") for r in out["rules"])
                raise ConfigError(f"--set {override!r}: no rule {parts[1]!r} (rules: {known})")
            rule[parts[2]] = _value(text)
        elif len(parts) == 1:
            out[name] = _value(text)
        else:
            raise ConfigError(f"--set {override!r}: use NAME=VALUE or rules.RULE.FIELD=VALUE")
    for rule in out["rules"]:  # a bad value is named here, not by a worker that will not start
        try:
            Rule.model_validate(rule)
        except ValueError as exc:
            raise ConfigError(f"rule {rule.get('name')!r}: {exc}") from None
    return out


def rules_of(path: Path) -> tuple[Rule, ...]:
    """The enabled and disabled rules a written config file holds (`write_config`)."""
    return tuple(Rule.model_validate(rule) for rule in load_config(path)["rules"])


def real_gateways(config: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """The settings (file or environment) that point at a real push gateway."""
    found = [name for name in REAL_GATEWAY_SETTINGS if config.get(name)]
    found += [
        f"PUSHREC_{name.upper()}"
        for name in REAL_GATEWAY_SETTINGS
        if environ.get(f"PUSHREC_{name.upper()}")
    ]
    return found


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write `config` (top-level settings, then one `[[rules]]` table per rule) as TOML."""
    lines = [f"{key} = {_toml(value)}" for key, value in config.items() if key != "rules"]
    for rule in config.get("rules", []):
        lines.append("\n[[rules]]")
        lines += [f"{key} = {_toml(value)}" for key, value in rule.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
