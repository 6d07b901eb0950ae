"""pushrec's settings translated into the push library's gateway configuration."""

from __future__ import annotations

from push.config import GatewayConfig
from worker.settings import Settings


def gateway_config(settings: Settings) -> GatewayConfig:
    """The push library's view of pushrec's settings (secrets passed as plain values)."""
    return GatewayConfig(
        fcm_url=settings.fcm_url,
        fcm_credentials=settings.fcm_credentials,
        fcm_project_id=settings.fcm_project_id,
        apns_url=settings.apns_url,
        apns_key_file=settings.apns_key_file,
        apns_key_id=settings.apns_key_id,
        apns_team_id=settings.apns_team_id,
        apns_topic=settings.apns_topic,
        vapid_private_key=settings.vapid_private_key,
        vapid_subject=settings.vapid_subject,
        webhook_secrets=tuple(settings.webhook_secrets),
        webhook_allowed_hosts=tuple(settings.webhook_allowed_hosts),
        ca_bundle=settings.ca_bundle,
    )
