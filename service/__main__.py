"""`python -m service`: run the HTTP API with uvicorn."""

import uvicorn

from service.config import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
