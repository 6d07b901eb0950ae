"""pushrec's configuration: the only module that reads the environment.

`Settings.load()` reads `PUSHREC_*` environment variables and, when `PUSHREC_CONFIG`
names one, a TOML file (environment wins over the file). It validates everything once
at start-up; a bad value stops the process with a message naming the variable.
The object is then passed down; nothing else in pushrec looks at `os.environ`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from push.errors import UnsafeDestinationError
from push.gateways.apns import APNS_URL
from push.gateways.fcm import FCM_URL
from push.ssrf import canonical_host
from worker.campaigns import Campaign
from worker.clock import SimulatedClock, followed
from worker.coupon_config import CouponPool, check_pools
from worker.redis_urls import cluster_nodes, is_cluster_url
from worker.rules import DEFAULT_RULES, Rule
from worker.segments import Segment, check_segments

ENV_PREFIX = "PUSHREC_"
CONFIG_ENV = "PUSHREC_CONFIG"

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class SettingsError(Exception):
    """The configuration is invalid; the message says which setting and why."""


# Global key families' shards on a cluster: enough for the load to spread over a few
# masters (each shard is one hash slot), few enough that reading every shard (the
# scheduler's claim, the trending read) stays one short pipeline.
CLUSTER_SHARDS = 16
_CLUSTER_BROKER = (
    "a Redis Cluster cannot be Celery's broker (kombu's Redis transport speaks to one "
    "node): set broker_url (PUSHREC_BROKER_URL) to a separate Redis or to RabbitMQ"
)


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pushrec"


def redact_url(url: str | None) -> str | None:
    """`url` with any password replaced by `***` (for logs and reprs)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_TABLE_RE = re.compile(r"^\s*\[\[\s*(rules|segments|campaigns)\s*\]\]")
_TABLE_REF_RE = re.compile(r"\b(rules|segments|campaigns)\.(\d+)")


def _table_lines(config_file: str | None) -> dict[str, list[int]]:
    """Line numbers of each `[[rules]]`, `[[segments]]`, `[[campaigns]]` header of the
    config file, in order (so an error about `campaigns.2` can name its line)."""
    found: dict[str, list[int]] = {}
    try:
        text = Path(config_file).read_text() if config_file else ""
    except OSError:
        return found
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _TABLE_RE.match(line):
            found.setdefault(match[1], []).append(number)
    return found


def _line_of(tables: dict[str, list[int]], text: str) -> str:
    """' (line N of the config file)' for the first table entry `text` names, or ''."""
    match = _TABLE_REF_RE.search(text)
    if match is None:
        return ""
    lines = tables.get(match[1], [])
    position = int(match[2])
    return f" (line {lines[position]} of {CONFIG_ENV})" if position < len(lines) else ""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of pushrec. Field `foo` is set by `PUSHREC_FOO` or `foo = …` in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # --- connections -----------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="State store: redis://, rediss://, unix://, or a Redis Cluster as "
        "redis+cluster://host:port[,host:port...]. Unset: start an embedded redis-server "
        "under state_dir.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (Redis or amqp://, never a cluster); defaults to "
        "redis_url when that names a single node.",
    )
    state_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="How many hash-tagged keys each global key family (delayed jobs, "
        "outbox queue, interaction log, trending, metrics) is split into, so a Redis "
        "Cluster spreads them over its masters. Unset: 16 on a cluster, 1 on one node. "
        "Every process of a deployment must use the same value.",
    )
    key_prefix: str = Field(default="pushrec", description="Prefix of every state key.")
    broker_key_prefix: str = Field(
        default="",
        description="Prefix of Celery's keys in a Redis broker; keep '' so producers in "
        "other languages find the queues under their plain names.",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Embedded Redis data, index store and reports.",
    )

    # --- queues and task execution ---------------------------------------------------
    queue_activity: str = "activity"
    queue_push: str = "push"
    queue_maintenance: str = "maintenance"
    visibility_timeout_s: int = Field(
        default=300, ge=10, description="Unacked task redelivered after this (broker)."
    )
    task_time_limit_s: int = Field(default=120, ge=5, description="Hard limit per task.")
    task_max_retries: int = Field(default=5, ge=0, le=20)
    task_retry_backoff_max_s: int = Field(default=30, ge=1)
    deliver_inline: bool | None = Field(
        default=None,
        description="Send the messages a task queues in that same task instead of a "
        "deliver task on the push queue. Unset: `pushrec worker` says yes where it also "
        "consumes the push queue (the hop would isolate nothing there), else no; a "
        "runtime opened any other way uses deliver tasks.",
    )
    max_deliveries: int = Field(
        default=5,
        ge=2,
        le=100,
        description="A task message delivered this often without finishing (its worker "
        "died, or it ran over its time limit) goes to the dead-letter stream.",
    )

    # --- event contract limits -------------------------------------------------------
    batch_max_events: int = Field(default=500, ge=1, le=10_000)
    batch_max_items: int = Field(default=500, ge=1, le=10_000)
    props_max_keys: int = Field(default=32, ge=0)
    props_max_bytes: int = Field(default=2048, ge=0)
    future_skew_s: int = Field(default=86_400, ge=0, description="Accepted clock skew ahead.")

    # --- shopper state ---------------------------------------------------------------
    recent_items_max: int = Field(default=50, ge=1, le=10_000)
    history_items_max: int = Field(
        default=200,
        ge=1,
        le=1_000,
        description="Items of a shopper's accumulated history kept (the least recently "
        "touched go): at least the served model's `history_items`, which its evaluation "
        "used as this bound (a worker loading a version that wants more warns).",
    )
    dedup_window_s: int = Field(
        default=7 * 86_400, ge=60, description="Duplicate event_ids within this are ignored."
    )
    dedup_max_per_user: int = Field(default=10_000, ge=100)
    user_ttl_s: int = Field(
        default=400 * 86_400, ge=86_400, description="A shopper's keys expire after inactivity."
    )
    trending_bucket_s: int = Field(default=3600, ge=60)
    trending_buckets_kept: int = Field(default=48, ge=1)
    interaction_log_maxlen: int = Field(default=5_000_000, ge=1000)
    rejected_log_maxlen: int = Field(default=100_000, ge=100)
    dead_letters_maxlen: int = Field(default=100_000, ge=100)
    interaction_log_max_age_days: int | None = Field(
        default=365, ge=1, description="Housekeeping drops older log entries; unset: never."
    )
    rejected_log_max_age_days: int | None = Field(
        default=30, ge=1, description="Housekeeping drops older rejected input; unset: never."
    )
    dead_letters_max_age_days: int | None = Field(
        default=30, ge=1, description="Housekeeping drops older dead letters; unset: never."
    )
    retired_kept_days: int = Field(
        default=90,
        ge=1,
        description="Stats and run history of a rule or campaign no longer configured "
        "expire this long after housekeeping first finds it gone.",
    )
    item_changes_max: int = Field(default=100, ge=1)
    cart_max_items: int = Field(
        default=100, ge=1, description="Distinct items per cart; the oldest-added go first."
    )

    # --- rules and contact policy ----------------------------------------------------
    rules: tuple[Rule, ...] = Field(
        default=DEFAULT_RULES, description="[[rules]] tables in the TOML file (worker/rules.py)"
    )
    segments: tuple[Segment, ...] = Field(
        default=(), description="[[segments]] tables in the TOML file (worker/segments.py)"
    )
    campaigns: tuple[Campaign, ...] = Field(
        default=(), description="[[campaigns]] tables in the TOML file (worker/campaigns.py)"
    )
    rfm_refresh_s: int = Field(
        default=3600, ge=60, description="How often the scheduler recomputes RFM cut points."
    )
    coupon_pools: tuple[CouponPool, ...] = Field(
        default=(), description="[[coupon_pools]] tables in the TOML file (worker/coupons/)"
    )
    trigger_max_age_s: int = Field(
        default=3600, ge=0, description="Older events update state but fire no rule."
    )
    cap_marketing_per_day: int = Field(default=2, ge=0, description="Rolling 24 h.")
    cap_marketing_per_week: int = Field(default=5, ge=0, description="Rolling 7 days.")
    cap_total_per_day: int = Field(default=8, ge=0, description="All purposes, rolling 24 h.")
    no_repeat_days: int = Field(default=7, ge=0, description="Same item to same shopper.")
    consent_default_marketing: bool = Field(
        default=False, description="Consent assumed for marketing when none was recorded."
    )
    consent_default_transactional: bool = True
    attribution_window_s: int = Field(default=7 * 86_400, ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    decisions_kept: int = Field(default=20, ge=1, le=1000, description="Per shopper, for audit.")

    push_rate_per_s: float = Field(
        default=500.0, gt=0, description="Sustained sends per second per gateway credential."
    )
    push_rate_burst: float = Field(default=1000.0, ge=1)
    push_max_attempts: int = Field(default=8, ge=1, le=50, description="Per device, then failed.")

    scheduler_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="How often due delayed jobs are moved."
    )
    housekeeping_interval_s: int = Field(
        default=3600,
        ge=10,
        description="How often the leader scheduler prunes index versions, trims the "
        "streams and expires retired ledgers.",
    )
    scheduler_lease_s: float = Field(
        default=15.0,
        ge=3,
        le=300,
        description="The leader scheduler's lock outlives its last renewal (every second) "
        "by this: when the leader dies, another scheduler leads within it.",
    )

    # --- operations ------------------------------------------------------------------
    log_format: Literal["json", "text"] | None = Field(
        default=None,
        description="json or text; unset: json for worker and scheduler when stderr is not "
        "a terminal, text otherwise.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Worker and scheduler serve Prometheus metrics on this port "
        "(--metrics-port overrides); unset: not served.",
    )

    simulated_clock: SimulatedClock | None = Field(
        default=None,
        description="Replays only (set by `pushrec demo` and `pushrec replay` for the "
        "processes they start): decide by this accelerated clock, as JSON "
        '{"origin": <epoch s>, "real_origin": <epoch s>, "speed": <x>} (worker/clock.py).',
    )
    simulated_clock_file: Path | None = Field(
        default=None,
        description="Replays only (`pushrec replay --as-fast-as-possible`): decide by the "
        "simulated clock this file holds, moved by the replay as the workers catch up; "
        "takes precedence over simulated_clock.",
    )

    # --- index -----------------------------------------------------------------------
    index_store: str | None = Field(
        default=None,
        description="A folder (one host, or a shared volume), or s3://bucket/prefix on any "
        "S3-compatible object store (needs pushrec[s3]). Default: <state_dir>/index.",
    )
    index_cache: Path | None = Field(
        default=None,
        description="Where each host keeps the versions it pulled from an object store, "
        "shared by its processes. Default: <state_dir>/index-cache.",
    )
    index_cache_keep: int = Field(
        default=2, ge=1, description="Versions kept in the index cache, the newest included."
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="The object store's endpoint (MinIO, SeaweedFS, Ceph, ...); unset: AWS "
        "S3. Credentials and region also come from the standard AWS_* variables.",
    )
    s3_region: str | None = None
    index_rebuild_cron: str | None = Field(
        default="30 3 * * *",
        description="When the scheduler rebuilds the index (crontab, UTC); empty = never.",
    )
    model_params: Path | None = Field(
        default=None,
        description="The model parameters the scheduled rebuild trains with: a JSON file, "
        "the output of `pushrec eval --json` or the parameters alone. Default: the shipped "
        "defaults (tuned on Online Retail).",
    )
    rebuild_time_limit_s: int = Field(
        default=3600,
        ge=60,
        description="Hard limit of the index rebuild task (its own; other tasks have "
        "task_time_limit_s). It may exceed visibility_timeout_s: a rebuild holds a lease, "
        "and a copy the broker redelivers meanwhile finds it held and ends at once.",
    )
    index_versions_kept: int = Field(
        default=5,
        ge=1,
        description="Housekeeping keeps this many newest versions in the index store, "
        "besides the published one and any a worker served within index_serving_grace_s.",
    )
    index_serving_grace_s: int = Field(
        default=86_400,
        ge=60,
        description="A version a worker process reported serving this recently is never "
        "pruned (processes report at each version check, every 5 s while taking tasks).",
    )

    # --- push gateways: each named as its `push.config.GatewayConfig` field -------------
    fcm_url: str = FCM_URL
    fcm_credentials: Path | None = None
    fcm_project_id: str | None = None
    apns_url: str = APNS_URL
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    vapid_private_key: Path | None = None
    vapid_subject: str | None = None
    webhook_secret: SecretStr | None = Field(
        default=None, description="Comma-separated whsec_ secrets; the first signs."
    )
    destination_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts exempt from the destination guard (push/ssrf.py): webhook URLs "
        "and Web Push endpoints there may be http and private (trusted receivers, local "
        "test gateways). Comma-separated.",
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Former name of destination_allowed_hosts, added to it.",
    )
    ca_bundle: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("destination_allowed_hosts", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _hosts_from_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("destination_allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            try:
                canonical_host(host)
            except UnsafeDestinationError as exc:
                raise ValueError(f"{host[:64]!r}: {exc}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _former_allowlist_name(cls, data: Any) -> Any:
        # One fact, one field: hosts given under the former name join the guard's list.
        if isinstance(data, dict) and data.get("webhook_allowed_hosts"):
            former = _split_csv(data["webhook_allowed_hosts"])
            current = _split_csv(data.get("destination_allowed_hosts") or [])
            data = {**data, "destination_allowed_hosts": [*current, *former]}
        return data

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Braces would break the Redis Cluster hash tags that follow the prefix.
        if not _PREFIX_RE.match(value):
            raise ValueError("use 1-64 of A-Z a-z 0-9 _ . : - (no braces)")
        return value

    @field_validator("queue_activity", "queue_push", "queue_maintenance")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        if not _QUEUE_RE.match(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if is_cluster_url(value):
            cluster_nodes(value)  # raises ValueError naming the bad node
        elif urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value and is_cluster_url(value):
            raise ValueError(_CLUSTER_BROKER)
        return value or None

    @field_validator("model_params")
    @classmethod
    def _check_model_params(cls, value: Path | None) -> Path | None:
        if value is not None:  # at start-up, not at the first rebuild hours later
            from indexing.errors import InputError
            from indexing.model import read_model_params

            try:
                read_model_params(value)
            except InputError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("index_store", mode="before")
    @classmethod
    def _check_index_store(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str) and value.startswith("s3://"):
            from importlib.util import find_spec

            from indexing.s3 import INSTALL_HINT, S3Location

            S3Location.parse(value)  # raises ValueError naming the problem
            if find_spec("boto3") is None:
                raise ValueError(f"an s3:// store needs boto3: {INSTALL_HINT}")
        return value or None

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in {"http", "https"}:
            raise ValueError("must start with http:// or https://")
        return value or None

    @field_validator("index_rebuild_cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if not value:
            return None
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(value, timezone="UTC")  # raises ValueError with the reason
        return value

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, value: tuple[Rule, ...]) -> tuple[Rule, ...]:
        names = [rule.name for rule in value]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        for position, rule in enumerate(value):
            if rule.kind == "campaign":
                raise ValueError(
                    f"rules.{position} ({rule.name}): kind 'campaign' is declared under "
                    "[[campaigns]]"
                )
        return value

    @field_validator("segments")
    @classmethod
    def _segments(cls, value: tuple[Segment, ...]) -> tuple[Segment, ...]:
        check_segments(value)
        return value

    @model_validator(mode="after")
    def _campaigns(self) -> Settings:
        segments = {s.name for s in self.segments}
        rules = {r.name for r in self.rules}
        seen: set[str] = set()
        for position, campaign in enumerate(self.campaigns):
            where = f"campaigns.{position} ({campaign.name})"
            if campaign.segment not in segments:
                raise ValueError(
                    f"{where}: segment {campaign.segment!r} is not declared "
                    f"(segments: {sorted(segments)})"
                )
            if campaign.name in rules or campaign.name in seen:
                raise ValueError(f"{where}: name is already a rule's or a campaign's")
            seen.add(campaign.name)
        return self

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.broker_url is None and self.redis_url and is_cluster_url(self.redis_url):
            raise ValueError(f"broker_url: {_CLUSTER_BROKER}")
        # The rebuild alone may run longer: its lease turns a redelivered copy away.
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                "task_time_limit_s must be below visibility_timeout_s, or a running task "
                "would be handed to a second worker"
            )
        check_pools(
            self.coupon_pools,
            {
                **{f"rules.{r.name}": r.coupon for r in self.rules if r.coupon is not None},
                **{f"campaigns.{c.name}": c.coupon for c in self.campaigns if c.coupon},
            },
        )
        queues = {self.queue_activity, self.queue_push, self.queue_maintenance}
        if len(queues) != 3:
            raise ValueError("queue_activity, queue_push and queue_maintenance must differ")
        return self

    # --- derived values --------------------------------------------------------------
    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """The rules, then the rules the campaigns fire as: what firing, delivery and
        stats look names up in."""
        return self.rules + tuple(c.as_rule() for c in self.campaigns)

    @property
    def index_store_location(self) -> str:
        """The index store as a folder path or s3:// URL (`worker/firing/index_store.py`
        opens it)."""
        return str(self.index_store) if self.index_store else str(self.state_dir / "index")

    @property
    def index_cache_dir(self) -> Path:
        return self.index_cache or self.state_dir / "index-cache"

    @property
    def webhook_secrets(self) -> list[str]:
        if self.webhook_secret is None:
            return []
        return _split_csv(self.webhook_secret.get_secret_value())  # type: ignore[no-any-return]

    def now(self) -> float:
        """The time decisions are made at: the simulated clock's in a replay, else the
        wall clock's."""
        if self.simulated_clock_file is not None:
            return followed(self.simulated_clock_file).now()
        if self.simulated_clock is not None:
            return self.simulated_clock.now()
        return time.time()

    def with_redis(self, url: str) -> Settings:
        """A copy pointing at `url` (used once an embedded server is up)."""
        return self.model_copy(update={"redis_url": url})

    @property
    def effective_broker_url(self) -> str:
        url = self.broker_url or self.redis_url
        if url is None:
            raise SettingsError("no Redis URL yet: start the embedded server first")
        return url

    @property
    def result_backend_url(self) -> str:
        """Where Celery keeps task results: the state Redis when it is one node, else the
        broker when that is a Redis (Celery's Redis backend speaks to one node), else
        none ('')."""
        url = self.redis_url or ""
        if not is_cluster_url(url):
            return url
        broker = self.effective_broker_url
        return broker if urlsplit(broker).scheme in {"redis", "rediss", "unix"} else ""

    @property
    def shards(self) -> int:
        """`state_shards`, or its default for the kind of Redis `redis_url` names."""
        if self.state_shards is not None:
            return self.state_shards
        return CLUSTER_SHARDS if self.redis_url and is_cluster_url(self.redis_url) else 1

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in {"redis_url", "broker_url"} and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read and validate; raise `SettingsError` with one line per problem."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            lines = []
            tables = _table_lines(os.environ.get(CONFIG_ENV))
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                where = f"{field} ({ENV_PREFIX}{field.upper()})" if field else "settings"
                message = err["msg"].removeprefix("Value error, ")
                lines.append(f"{where}: {message}{_line_of(tables, field + ' ' + message)}")
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
        except (OSError, ValueError) as exc:  # unreadable or malformed TOML file
            raise SettingsError(f"cannot read {CONFIG_ENV} file: {exc}") from exc
