"""`python -m latentmix.service.api.openapi`: write the app's OpenAPI schema to the
repository's openapi/openapi.json (run from a source checkout)."""

import json
from pathlib import Path

from latentmix.service.api.app import create_app
from latentmix.service.core.config import Settings

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def render() -> str:
    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")
