"""The `webhook` option of POST /latents and POST /mix."""

from pydantic import AnyHttpUrl

from service.api.problems import problem
from service.config import Settings


def checked_webhook(url: AnyHttpUrl | None, settings: Settings) -> str | None:
    """A webhook needs the server's signing secret: refuse it up front rather than
    accept a job whose notification can never be signed."""
    if url is None:
        return None
    if settings.webhook_secret is None:
        raise problem(422, "webhook: this server has no LATENTMIX_WEBHOOK_SECRET, so it sends none")
    return str(url)
