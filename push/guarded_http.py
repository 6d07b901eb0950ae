"""The HTTP client whose every new connection passes the destination guard (`push.ssrf`),
for the URLs that come from input: Web Push endpoints and webhook URLs.

`guarded_client` is `push.http.make_h1_client` (HTTP/1.1) whose name lookups are the
guard's (`DestinationGuard.lookup`), so the check happens where the socket is opened and
the client connects to exactly the addresses it checked: a DNS answer that changes after
an earlier check (rebinding) is caught, and IP literals are judged the same way.
Refusals surface from the request as `UnsafeDestinationError` (permanent) and
`DestinationLookupError` (retry), raised as they are.

Each caller also checks the URL itself first (`DestinationGuard.check_url`): the lookup
sees host and port only, not the scheme.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from push.h1 import H1Client, H1Timeouts
from push.http import DEFAULT_H1_TIMEOUTS, make_h1_client
from push.ssrf import DestinationGuard

__all__ = ["WEBHOOK_TIMEOUTS", "guarded_client"]

WEBHOOK_TIMEOUTS = replace(DEFAULT_H1_TIMEOUTS, read=25.0)
"""Standard Webhooks suggests 15-30 s for the receiver to answer."""

_MAX_BODY = 64 * 1024
"""Neither a push service's nor a receiver's answer body is read beyond its status and
headers: a hostile receiver gets no more of our memory than this."""


def guarded_client(
    guard: DestinationGuard,
    *,
    ca_bundle: Path | str | None = None,
    max_connections: int = 100,
    timeouts: H1Timeouts = DEFAULT_H1_TIMEOUTS,
) -> H1Client:
    """`push.http.make_h1_client` whose connects pass `guard`: Web Push with the default
    `timeouts`, webhooks with `WEBHOOK_TIMEOUTS`.

    Connections are kept alive 4 s, below common 5 s server idle timeouts, so none is
    reused just as the server closes it. Send with `push.http.fetch` (no redirects).
    The caller closes it (``await client.aclose()``).
    """
    return make_h1_client(
        ca_bundle=ca_bundle,
        max_connections=max_connections,
        timeouts=timeouts,
        keepalive_s=4.0,
        resolver=guard.lookup,
        max_body=_MAX_BODY,
    )
