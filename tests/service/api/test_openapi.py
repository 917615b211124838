"""`python -m latentmix.service.api.openapi` regenerates the committed schema."""

from pathlib import Path

from latentmix.service.api import openapi

COMMITTED = Path(__file__).resolve().parents[3] / "openapi" / "openapi.json"


def test_the_schema_command_writes_the_committed_file():
    assert openapi.SCHEMA_FILE.resolve() == COMMITTED
    assert COMMITTED.read_text(encoding="utf-8") == openapi.render()
