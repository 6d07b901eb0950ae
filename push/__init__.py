"""push: message composition and the HTTP gateways (FCM, APNs, Web Push, webhook) with
their delivery policy. A library: imports nothing of `worker` or `indexing`."""

__all__: list[str] = []
