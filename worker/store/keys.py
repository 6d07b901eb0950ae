"""Every Redis key pushrec uses, in one place.

All of one shopper's keys carry the hash tag `{u:<user_id>}`, all of one item's keys
`{i:<item_id>}` and all of one message's `{m:<message_id>}`, so a Lua script, a
transaction or a multi-key command that touches one of them touches one Redis Cluster
slot. Nothing spans slots: a device's move between shoppers is single-slot steps with
the owner key (`device:<id>`) as the truth (`Contacts._move`), and one route's breaker
keys share `{b:<route>}`.

Global key families that grow with the shop (delayed jobs, the outbox queue, the
interaction log, trending counters, metrics) are split into `shards` keys, each with the
hash tag `{<family>:<n>}` (n = `shard_of(id)`, CRC-32 of the job, message, shopper, item
or category id; metrics: of the writing process), so a cluster spreads them over its
masters and a reader walks `all_shards`; with `shards == 1` (a single node) each family
is one key. A delayed-jobs shard keeps its three keys in one slot, so one script claims
from it atomically.

The prefix (`Settings.key_prefix`) leads every key; tests give each test its own.

Growth and bounds. Every key that grows with input, and what holds it (TTL: the
shopper's keys expire `user_ttl_s` after their last write; `tests/worker/test_bounds.py`
and the tests named in it check the bounds):

| key | grows with | bound |
|---|---|---|
| `{u}:recent` | events | count `recent_items_max` |
| `{u}:history`, `history_sums` | items touched | count `history_items_max` (least recent go) |
| `{u}:cart`, `{u}:cart_added` | items carted, known or not | count `cart_max_items` (oldest go) |
| `{u}:seen` | event ids | age `dedup_window_s`, count `dedup_max_per_user` |
| `{u}:pending` | events in flight | cleared when confirmed; TTL |
| `{u}:interests` | items viewed or carted | age: the longest rule `interest_days`; TTL |
| `{u}:devices` | registrations | count `contacts.MAX_DEVICES_PER_USER` |
| `{u}:contacts` | messages sent | age 7 days (`contact_reserve.lua`) |
| `{u}:pushed_items` | items pushed | age `no_repeat_days` |
| `{u}:decisions` | firings | count `decisions_kept` |
| `{u}:messages` | messages created | age `outbox.MESSAGE_TTL_S`; TTL |
| `{u}:purchased`, `purchase_counts`, `purchase_first` | distinct items bought | TTL only |
| `{u}:attribution` | distinct items messaged | TTL only (messages are capped per day) |
| `{u}:affinity`, `{u}:prefs`, `{u}:rule_last` | categories; channels; rules | their sets |
| `{i}:interested` | shoppers viewing or carting | age: longest `interest_days`, on write; TTL |
| `{i}:changes` | price and stock changes | count `item_changes_max` |
| `{m}:*` | messages | TTL `outbox.MESSAGE_TTL_S` (`attempts`: count 50) |
| `device:<id>` | devices | TTL; deleted on unregister, eviction, erasure |
| `{log:n}:interactions` | valid events | MAXLEN ~ `interaction_log_maxlen / shards` each; |
| | | age `interaction_log_max_age_days` (housekeeping) |
| `log:rejected` | rejected input | MAXLEN ~ `rejected_log_maxlen`; entries of at most |
| | | `redaction.PAYLOAD_MAX_CHARS` (a failed batch: one per event); age |
| | | `rejected_log_max_age_days` (housekeeping) |
| `log:dead` | calls parked after many deliveries | MAXLEN ~ `dead_letters_maxlen`; as above; age |
| | | `dead_letters_max_age_days` (housekeeping) |
| `deliveries:<task id>` | redelivered messages | TTL `dead_letters.COUNT_TTL_S` |
| `push:breakers` | routes whose breaker tripped | age `BREAKER_ROUTES_KEPT_S` past the trip |
| `{metrics:n}:*` | counter names | fixed names, per task, code, rule, channel, outcome of the |
| | | config; unknown task names all count as `unknown_task` |
| `{delayed:n}:*` | pending jobs | acked when moved; cart and browse rules debounced per shopper |
| `{outbox:n}:queued` | messages awaiting delivery | removed when settled, parked, or record gone |
| `{trend:n}:*:<bucket>` | items, categories per bucket | EXPIREAT after `trending_buckets_kept` |
| `catalog`, `{i}:item` | items upserted | the shop's catalog (never expired) |
| `{live}:items` | items whose category, brand or sold-out state changed | trimmed to the |
| | | changes since the published build read the catalog, at each publish |
| `{live}:sold_out` | sold-out items | the catalog; rewritten at each publish |
| `{seg:<n>}:*` index | shoppers of shard n (one entry each per family) | removed when the |
| | | shopper is erased, and by the sweep once `seen` is `user_ttl_s` old (their state |
| | | has expired) |
| `{seg:<n>}:cats` | categories with an affinity family in shard n | the catalog's categories |
| `{seg:<n>}:run:<run>:*` | a campaign run's audience in shard n | TTL `runs.RUN_KEPT_S` |
| `campaign:<name>:*` | runs of a campaign | one current run; history count 50; a campaign |
| | | no longer configured: expire `retired_kept_days` (housekeeping) |
| `stats:<rule>` | rules and campaigns configured | fixed fields; a rule or campaign no |
| | | longer configured: expire `retired_kept_days` (housekeeping) |
| `index:serving` | index versions served | age `index_serving_grace_s` (housekeeping) |
| `{c:<pool>}:issued`, `by_message`, `per_shopper`, | codes issued | the pool's `budget_count` |
| `redeemed`, `expiring` | | (`expiring`: until swept at expiry) |
| `{c:<pool>}:available` | imported codes not yet issued | the shop's files |
| `{c:<pool>}:totals` | counters, per source (rule, campaign) | the config's rules and campaigns |
| `{k:<code>}` | codes imported or issued | imported: until issued; issued: TTL |
| | | `coupons.ledger.CODE_KEPT_S` past the code's expiry |
| `{u}:coupons` | codes issued to the shopper | pools' `per_shopper`; TTL |

Coupons. A pool's keys share the tag `{c:<pool>}`, so issuing (budget checks, pick or
mint a code, record it) and redeeming are each one Lua script in one slot. A checkout
knows only the code, so the code -> pool lookup is its own key, `{k:<code>}` (a hash:
`pool`), in its own slot anywhere on the cluster. It is written in a separate idempotent
step: by `pushrec coupons import` before a code can be issued (HSETNX: the step that
refuses a code another pool holds), and after the issuing script for a generated code (a
crash in between is healed by the retried issue, which returns the same code and writes
it again). Encoding the pool in the code instead would not work for the shop's own codes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class UserKeys:
    """The keys of one shopper; `all()` lists every one of them (used to erase a shopper)."""

    base: str

    @property
    def profile(self) -> str:
        """hash: first_seen, last_seen, events, orders, monetary, last_purchase, …"""
        return f"{self.base}:profile"

    @property
    def recent(self) -> str:
        """list, newest first: JSON {ts, type, item_id | query}; capped."""
        return f"{self.base}:recent"

    @property
    def cart(self) -> str:
        """hash: item_id -> quantity in cart."""
        return f"{self.base}:cart"

    @property
    def cart_added(self) -> str:
        """zset: item_id -> ts it was last added to the cart."""
        return f"{self.base}:cart_added"

    @property
    def purchased(self) -> str:
        """zset: item_id -> ts of its last purchase."""
        return f"{self.base}:purchased"

    @property
    def purchase_counts(self) -> str:
        """hash: item_id -> number of purchase events."""
        return f"{self.base}:purchase_counts"

    @property
    def affinity(self) -> str:
        """zset: category -> time-decayed interest (see state.decayed_weight)."""
        return f"{self.base}:affinity"

    @property
    def history(self) -> str:
        """zset: item_id -> latest ts the shopper touched it; the `history_items_max` most
        recent (ties: the larger id), the order and bound of `history_sums`."""
        return f"{self.base}:history"

    @property
    def history_sums(self) -> str:
        """hash: item_id -> "<type> <count> <decayed sum>" per event type, space-separated
        (`indexing.history`: the whole history's weights at bounded size); the items of
        `history`."""
        return f"{self.base}:history_sums"

    @property
    def seen_events(self) -> str:
        """zset: event_id -> time applied (the dedup window)."""
        return f"{self.base}:seen"

    @property
    def pending_events(self) -> str:
        """hash: event_id -> delivery that applied it, while its global side effects are
        unconfirmed."""
        return f"{self.base}:pending"

    @property
    def devices(self) -> str:
        """hash: device_id -> JSON device record."""
        return f"{self.base}:devices"

    @property
    def preferences(self) -> str:
        """hash: consent, timezone, locale, quiet hours, each with an `@ts` field."""
        return f"{self.base}:prefs"

    @property
    def contacts(self) -> str:
        """zset: "<purpose>:<rule>:<message_id>" -> time sent (caps; last 7 days)."""
        return f"{self.base}:contacts"

    @property
    def rule_last_sent(self) -> str:
        """hash: rule -> time a message of it was last sent (cooldown)."""
        return f"{self.base}:rule_last"

    @property
    def pushed_items(self) -> str:
        """zset: item_id -> time it was last pushed (no repeats)."""
        return f"{self.base}:pushed_items"

    @property
    def purchase_first(self) -> str:
        """hash: item_id -> ts of its first purchase (replenish intervals)."""
        return f"{self.base}:purchase_first"

    @property
    def decisions(self) -> str:
        """list, newest first: JSON decision records (audit); capped."""
        return f"{self.base}:decisions"

    @property
    def attribution(self) -> str:
        """hash: item_id -> JSON {message_id, rule, cell, at} of the last message (or holdout
        decision) about it, for purchases that carry no push_id."""
        return f"{self.base}:attribution"

    @property
    def interests(self) -> str:
        """zset: item_id -> last time viewed or carted, within the interest window: the
        item interest sets (`Keys.interested`) that list this shopper, for erasure."""
        return f"{self.base}:interests"

    @property
    def messages(self) -> str:
        """zset: message_id -> time created, for as long as messages are kept: the
        messages (`Keys.message`) of this shopper, for erasure."""
        return f"{self.base}:messages"

    @property
    def coupons(self) -> str:
        """hash: code -> pool, the codes issued to this shopper (audit, erasure)."""
        return f"{self.base}:coupons"

    def all(self) -> list[str]:
        """Every key of the shopper (what erasure deletes)."""
        return [
            *self.event_state(),
            self.messages,
            self.coupons,
            self.devices,
            self.preferences,
            self.contacts,
            self.rule_last_sent,
            self.pushed_items,
            self.decisions,
            self.attribution,
        ]

    def event_state(self) -> list[str]:
        """The KEYS of the apply-event script, in its order."""
        return [
            self.profile,
            self.recent,
            self.cart,
            self.cart_added,
            self.purchased,
            self.purchase_counts,
            self.affinity,
            self.seen_events,
            self.pending_events,
            self.purchase_first,
            self.interests,
            self.history,
            self.history_sums,
        ]


@dataclass(frozen=True)
class ItemKeys:
    base: str

    @property
    def item(self) -> str:
        """hash: title, category, brand, price, stock, url, image, updated_at."""
        return f"{self.base}:item"

    @property
    def changes(self) -> str:
        """list, newest first: JSON {ts, field, old, new} for price and stock changes."""
        return f"{self.base}:changes"


@dataclass(frozen=True)
class MessageKeys:
    base: str

    @property
    def record(self) -> str:
        """string: the MessageRecord JSON; created once (SET NX), the send ledger."""
        return f"{self.base}:record"

    @property
    def state(self) -> str:
        """hash: state, updated_at, dev:<device_id> -> sending|sent|invalid|failed|retry."""
        return f"{self.base}:state"

    @property
    def attempts(self) -> str:
        """list: JSON delivery attempts, oldest first; capped."""
        return f"{self.base}:attempts"

    @property
    def outcome(self) -> str:
        """hash: opened, clicked, converted -> time (attribution, each counted once)."""
        return f"{self.base}:outcome"


@dataclass(frozen=True)
class BreakerKeys:
    base: str

    @property
    def open(self) -> str:
        """string: epoch seconds the route's breaker is open until; expires a minute after."""
        return f"{self.base}:open"

    @property
    def failures(self) -> str:
        """string: failures counted in the current window; expires with it."""
        return f"{self.base}:failures"

    @property
    def probe(self) -> str:
        """string: the half-open probe's claim; expires."""
        return f"{self.base}:probe"


@dataclass(frozen=True)
class DelayedKeys:
    """One shard of the delayed jobs (the KEYS of `delayed_claim.lua` and
    `delayed_ack.lua`, in `all()`'s order)."""

    base: str

    @property
    def due(self) -> str:
        """zset: job_id -> due time."""
        return f"{self.base}:due"

    @property
    def inflight(self) -> str:
        """zset: job_id -> lease expiry of a claimed job not yet acknowledged."""
        return f"{self.base}:inflight"

    @property
    def jobs(self) -> str:
        """hash: job_id -> JSON {task, kwargs}."""
        return f"{self.base}:jobs"

    def all(self) -> list[str]:
        return [self.due, self.inflight, self.jobs]


BREAKER_ROUTES_KEPT_S = 86_400


@dataclass(frozen=True)
class SegmentKeys:
    """One shard of the segment indexes (`{seg:<n>}`): sorted sets of shopper ids, all in
    one slot, so a segment query combines them (ZINTERSTORE, ZDIFFSTORE, …) in Redis and
    a campaign run keeps its audience beside them."""

    base: str

    @property
    def seen(self) -> str:
        """zset: user_id -> when the index last wrote the shopper (their state expires
        `user_ttl_s` after its last write: the sweep's clock); every indexed shopper."""
        return f"{self.base}:seen"

    @property
    def last_seen(self) -> str:
        """zset: user_id -> time of their latest event (dormant N days)."""
        return f"{self.base}:last_seen"

    @property
    def last_purchase(self) -> str:
        """zset: user_id -> time of their latest purchase (RFM recency); buyers only."""
        return f"{self.base}:last_purchase"

    @property
    def orders(self) -> str:
        """zset: user_id -> purchase events (RFM frequency); buyers only."""
        return f"{self.base}:orders"

    @property
    def monetary(self) -> str:
        """zset: user_id -> money spent (RFM monetary value); buyers only."""
        return f"{self.base}:monetary"

    @property
    def cart(self) -> str:
        """zset: user_id -> when they last added to a cart that still holds items."""
        return f"{self.base}:cart"

    @property
    def categories(self) -> str:
        """set: the categories this shard has an affinity family for (erasure, sweep)."""
        return f"{self.base}:cats"

    def affinity(self, category: str) -> str:
        """zset: user_id -> the category's share of the shopper's affinity (0-1)."""
        return f"{self.base}:aff:{category}"

    def channel(self, channel: str) -> str:
        """zset: user_id -> when they registered their latest active device on `channel`."""
        return f"{self.base}:chan:{channel}"

    def scratch(self, name: str) -> str:
        """zset: an intermediate result of a segment query; expires within a minute."""
        return f"{self.base}:tmp:{name}"

    def run_audience(self, run: str) -> str:
        """zset: user_id -> 0: the shard's audience of a campaign run, frozen at its start."""
        return f"{self.base}:run:{run}:audience"

    def run_due(self, run: str) -> str:
        """zset: user_id -> when the run reaches them; members leave as they are sent out."""
        return f"{self.base}:run:{run}:due"

    def run_done(self, run: str) -> str:
        """hash: user_id -> the outcome firing recorded (`action.step`), set once."""
        return f"{self.base}:run:{run}:done"

    def run_counts(self, run: str) -> str:
        """hash: `action.step` -> shoppers of the shard, counted once each (with run_done)."""
        return f"{self.base}:run:{run}:counts"

    def run_keys(self, run: str) -> list[str]:
        return [self.run_audience(run), self.run_due(run), self.run_done(run), self.run_counts(run)]


@dataclass(frozen=True)
class CampaignKeys:
    base: str

    @property
    def run(self) -> str:
        """hash: the current run (id, state, anchor, counts, plan cursor, pacing)."""
        return f"{self.base}:run"

    @property
    def history(self) -> str:
        """list, newest first: JSON of finished, ended and skipped runs; capped."""
        return f"{self.base}:history"

    @property
    def last_occurrence(self) -> str:
        """string: epoch s of the latest cron occurrence the scheduler dealt with."""
        return f"{self.base}:last_occurrence"


@dataclass(frozen=True)
class CouponPoolKeys:
    """One pool's keys, in one slot (`{c:<pool>}`): the issuing and redeeming scripts'."""

    base: str

    @property
    def totals(self) -> str:
        """hash: issued, value (face value issued, hundredths), redeemed, redeemed_value,
        expired, refused:<reason>, and each of the first five as `<field>:<source>`."""
        return f"{self.base}:totals"

    @property
    def issued(self) -> str:
        """hash: code -> JSON issue record (user_id, message_id, source, offer, face,
        issued_at, expires_at, display)."""
        return f"{self.base}:issued"

    @property
    def by_message(self) -> str:
        """hash: message_id -> code (a retried issue returns the same code)."""
        return f"{self.base}:by_message"

    @property
    def per_shopper(self) -> str:
        """hash: user_id -> codes issued to them from this pool."""
        return f"{self.base}:per_shopper"

    @property
    def available(self) -> str:
        """set: imported codes not yet issued."""
        return f"{self.base}:available"

    @property
    def redeemed(self) -> str:
        """hash: code -> JSON {at, ref, basket} of its one redemption."""
        return f"{self.base}:redeemed"

    @property
    def expiring(self) -> str:
        """zset: code -> expiry, for issued codes not yet redeemed nor swept as expired."""
        return f"{self.base}:expiring"

    def script_keys(self) -> list[str]:
        """The KEYS of the coupon scripts, in their order."""
        return [
            self.totals, self.issued, self.by_message, self.per_shopper,
            self.available, self.redeemed, self.expiring,
        ]  # fmt: skip


def shard_of(ident: str, shards: int) -> int:
    """The shard (0 … shards-1) that `ident` (a shopper, item or message id) falls in.

    CRC-32, not Python's `hash`, so every process and host agrees on it."""
    return zlib.crc32(ident.encode()) % shards


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix.

    A global key (one that is not one shopper's, item's or message's) that grows with the
    shop is split into `shards` keys, each with its own hash tag `{<family>:<n>}`, so on
    Redis Cluster the load spreads over the masters; with `shards == 1` (a single node)
    there is one key per family."""

    prefix: str
    shards: int = 1

    def shard(self, ident: str) -> int:
        """The shard of a shopper, item or message id under this key space."""
        return shard_of(ident, self.shards)

    def sharded(self, family: str, shard: int) -> str:
        """The hash-tagged base of shard `shard` of a sharded global key family."""
        return f"{self.prefix}:{{{family}:{shard}}}"

    def user(self, user_id: str) -> UserKeys:
        return UserKeys(f"{self.prefix}:{{u:{user_id}}}")

    def item(self, item_id: str) -> ItemKeys:
        return ItemKeys(f"{self.prefix}:{{i:{item_id}}}")

    def message(self, message_id: str) -> MessageKeys:
        return MessageKeys(f"{self.prefix}:{{m:{message_id}}}")

    def segment(self, shard: int) -> SegmentKeys:
        """Shard `shard` of the segment indexes (family `seg`)."""
        return SegmentKeys(self.sharded("seg", shard))

    def segment_of(self, user_id: str) -> SegmentKeys:
        return self.segment(self.shard(user_id))

    @property
    def rfm_cuts(self) -> str:
        """string: JSON of the RFM cut points over the current base (segmenting/rfm.py)."""
        return f"{self.prefix}:segments:rfm"

    def campaign(self, name: str) -> CampaignKeys:
        return CampaignKeys(f"{self.prefix}:campaign:{name}")

    def coupon_pool(self, pool: str) -> CouponPoolKeys:
        return CouponPoolKeys(f"{self.prefix}:{{c:{pool}}}")

    def coupon_code(self, code: str) -> str:
        """hash: pool (the pool holding this canonical code; see the module doc)."""
        return f"{self.prefix}:{{k:{code}}}"

    def rule_stats(self, rule: str) -> str:
        """hash: decided, sent, delivered, held_out, opened, clicked, converted, … of a rule."""
        return f"{self.prefix}:stats:{rule}"

    def interested(self, item_id: str) -> str:
        """zset: user_id -> last time they viewed or carted the item (catalog rule fan-out)."""
        return f"{self.prefix}:{{i:{item_id}}}:interested"

    @property
    def all_shards(self) -> range:
        """Every shard number: what a reader of a whole sharded family walks."""
        return range(self.shards)

    def outbox_queued(self, shard: int) -> str:
        """zset: message_id -> time queued, until its delivery settles or is parked
        (the scheduler re-sends deliveries whose task was lost); sharded by message id."""
        return f"{self.sharded('outbox', shard)}:queued"

    @property
    def scheduler_lock(self) -> str:
        """string: owner of the scheduler lead (expires unless renewed)."""
        return f"{self.prefix}:scheduler:leader"

    @property
    def index_version(self) -> str:
        """string: the index artifact version workers should serve."""
        return f"{self.prefix}:index:current"

    @property
    def index_serving(self) -> str:
        """zset: index version -> when a worker process last said it serves it (pruning
        spares these); entries older than `index_serving_grace_s` go at housekeeping."""
        return f"{self.prefix}:index:serving"

    @property
    def rebuild_lock(self) -> str:
        """string: owner of the running index rebuild (a lease, renewed while it runs)."""
        return f"{self.prefix}:index:rebuild"

    @property
    def housekeeping_last(self) -> str:
        """string: JSON of the last housekeeping run (when, by whom, what it removed)."""
        return f"{self.prefix}:housekeeping:last"

    def device_owner(self, device_id: str) -> str:
        """string: user_id that last registered this device (a token moves between users)."""
        return f"{self.prefix}:device:{device_id}"

    @property
    def catalog(self) -> str:
        """set: every known item_id."""
        return f"{self.prefix}:catalog"

    # An as-fast-as-possible replay's task ledger (worker/service/task_ledger.py).
    @property
    def replay_published(self) -> str:
        """string: tasks published since the replay's processes started."""
        return f"{self.prefix}:replay:published"

    @property
    def replay_finished(self) -> str:
        """string: tasks run (or refused) since the replay's processes started."""
        return f"{self.prefix}:replay:finished"

    # What each process's catalog cache follows (worker/shoppers/catalog.py), one slot.
    @property
    def catalog_seq(self) -> str:
        """string: the sequence number of the last mark in `catalog_changed`."""
        return f"{self.prefix}:{{catalog}}:seq"

    @property
    def catalog_changed(self) -> str:
        """zset: item_id -> sequence number of its last upsert; one entry per item."""
        return f"{self.prefix}:{{catalog}}:changed"

    # What the served index follows between builds (worker/firing/live_items.py): three keys
    # in one slot ({live}), so a publish rewrites them in one MULTI.
    @property
    def live_seq(self) -> str:
        """string: the sequence number of the last mark in `live_items`."""
        return f"{self.prefix}:{{live}}:seq"

    @property
    def live_items(self) -> str:
        """zset: item_id -> sequence number of its last change of category, brand or
        sold-out state; the marks up to `live_snapshot` are dropped when a build publishes."""
        return f"{self.prefix}:{{live}}:items"

    @property
    def live_sold_out(self) -> str:
        """set: the items sold out (stock 0) when the published build read the catalog."""
        return f"{self.prefix}:{{live}}:sold_out"

    @property
    def live_snapshot(self) -> str:
        """string: the `live_seq` the published build read before it read the catalog."""
        return f"{self.prefix}:{{live}}:snapshot"

    def interaction_log(self, shard: int) -> str:
        """stream: every valid event (read by the index build job, every shard); sharded by
        shopper; each shard capped."""
        return f"{self.sharded('log', shard)}:interactions"

    @property
    def rejected_log(self) -> str:
        """stream: rejected input with its reason, for inspection; capped."""
        return f"{self.prefix}:log:rejected"

    @property
    def dead_letters(self) -> str:
        """stream: task calls parked after too many deliveries (redacted kwargs, reason);
        capped (`Settings.dead_letters_maxlen`)."""
        return f"{self.prefix}:log:dead"

    def deliveries(self, task_id: str) -> str:
        """string: how many times the broker redelivered task message `task_id`; expires
        (`dead_letters.COUNT_TTL_S`)."""
        return f"{self.prefix}:deliveries:{task_id}"

    def delayed(self, shard: int) -> DelayedKeys:
        """One shard of the delayed jobs: three keys in one slot (`{delayed:<n>}`), so
        one Lua script claims atomically; jobs are sharded by job id."""
        return DelayedKeys(self.sharded("delayed", shard))

    def metrics(self, shard: int) -> str:
        """hash: counter name -> value; each process adds to one shard (its own), a
        reader sums them all."""
        return f"{self.sharded('metrics', shard)}:counters"

    def gateway_latency(self, shard: int) -> str:
        """hash: "<channel>:<bucket upper bound s>" -> sends (not cumulative), "<channel>:count",
        "<channel>:sum_us" (microseconds): the gateway latency histograms; sharded as
        `metrics`."""
        return f"{self.sharded('metrics', shard)}:gateway_latency"

    def push_token(self, key: str) -> str:
        """string: a gateway access token (FCM OAuth, APNs provider JWT), shared by
        every process; expires with the token."""
        return f"{self.prefix}:push:token:{key}"

    def rate_bucket(self, key: str) -> str:
        """hash: a gateway route's token bucket (tokens, ts); expires when full again."""
        return f"{self.prefix}:push:bucket:{key}"

    @property
    def breaker_routes(self) -> str:
        """zset: route key (fingerprint) -> when its breaker last tripped; entries a day past
        their trip are pruned at the next trip (`BREAKER_ROUTES_KEPT_S`)."""
        return f"{self.prefix}:push:breakers"

    def breaker(self, route: str) -> BreakerKeys:
        """One route's breaker keys, in one slot (`{b:<route>}`): they share a MULTI."""
        return BreakerKeys(f"{self.prefix}:push:{{b:{route}}}")

    def trending_items(self, bucket: int, shard: int) -> str:
        """zset: item_id -> weighted activity in time bucket `bucket`; sharded by item."""
        return f"{self.sharded('trend', shard)}:item:{bucket}"

    def trending_categories(self, bucket: int, shard: int) -> str:
        """zset: category -> weighted activity in time bucket `bucket`; sharded by category."""
        return f"{self.sharded('trend', shard)}:cat:{bucket}"
