"""`latentmix api` (or `python -m latentmix.service.api`): run the HTTP API with uvicorn."""

import uvicorn

from latentmix.service.core.config import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "latentmix.service.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
    )


if __name__ == "__main__":
    main()
