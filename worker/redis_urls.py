"""Redis URLs as pushrec reads them: one node (`redis://`, `rediss://`, `unix://`) or a
Redis Cluster (`redis+cluster://[user:password@]host:port[,host:port...]`,
`rediss+cluster://` with TLS). Parsing only: the clients are built in
`worker/store/client.py`."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes a cluster URL names; ValueError naming the bad one."""
    parts = _split(url)
    hosts = parts.netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster node {entry!r}: expected host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (scheme {parts.scheme!r})")
    return parts


def cluster_options(url: str) -> dict[str, Any]:
    """TLS, user name and password as a cluster URL gives them."""
    parts = _split(url)
    user, _, password = parts.netloc.rpartition("@")[0].partition(":")
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[parts.scheme]}
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)
    return options
