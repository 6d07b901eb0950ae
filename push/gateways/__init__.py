"""The HTTP gateways: each module has pure builders (message -> `HttpRequest`), a pure
response mapper (status, headers, body -> `DeliveryResult`) and a sender class."""

from push.gateways.apns import ApnsGateway, build_apns_request, map_apns_response
from push.gateways.apns_auth import ApnsKey, ProviderTokens
from push.gateways.fcm import FcmGateway, build_fcm_request, map_fcm_response
from push.gateways.google_oauth import ServiceAccountTokens
from push.gateways.vapid import VapidKey
from push.gateways.webhook import (
    WebhookGateway,
    build_webhook_request,
    map_webhook_response,
    sign_webhook,
    verify_webhook,
)
from push.gateways.webpush import WebPushGateway, build_webpush_request, map_webpush_response

__all__ = [
    "ApnsGateway",
    "ApnsKey",
    "FcmGateway",
    "ProviderTokens",
    "ServiceAccountTokens",
    "VapidKey",
    "WebPushGateway",
    "WebhookGateway",
    "build_apns_request",
    "build_fcm_request",
    "build_webhook_request",
    "build_webpush_request",
    "map_apns_response",
    "map_fcm_response",
    "map_webhook_response",
    "map_webpush_response",
    "sign_webhook",
    "verify_webhook",
]
