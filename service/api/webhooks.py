"""The `webhook` option of POST /latents and POST /mix."""

import ipaddress

from pydantic import AnyHttpUrl

from latentmix.service.api.problems import problem
from latentmix.service.core.config import Settings
from latentmix.service.core.webhooks import blocked_address


def checked_webhook(url: AnyHttpUrl | None, settings: Settings) -> str | None:
    """A webhook needs the server's signing secret: refuse it up front rather than
    accept a job whose notification can never be signed. An IP address in a blocked network
    is refused here too (host names are resolved and checked at each delivery)."""
    if url is None:
        return None
    if settings.webhook_secret is None:
        raise problem(422, "webhook: this server has no LATENTMIX_WEBHOOK_SECRET, so it sends none")
    host = (url.host or "").strip("[]")
    if _is_ip(host) and (address := blocked_address(host, settings.webhook_blocked_networks)):
        raise problem(
            422,
            f"webhook: {address} is in a network webhooks may not reach "
            "(LATENTMIX_WEBHOOK_BLOCKED_NETWORKS)",
        )
    return str(url)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
