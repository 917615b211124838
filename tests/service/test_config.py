"""Settings: the Configuration page documents every environment variable the service reads,
and nothing it does not."""

import re
from pathlib import Path

from latentmix.service.core.config import Settings

CONFIGURATION = Path(__file__).parents[2] / "docs" / "configuration.md"
# Read by the libraries (huggingface_hub), not by Settings; documented next to them.
LIBRARY_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE"}


def environment_names() -> list[str]:
    prefix = Settings.model_config["env_prefix"]
    return [
        field.validation_alias or f"{prefix}{name}".upper()
        for name, field in Settings.model_fields.items()
    ]


def documented_names() -> list[str]:
    """The variables in the first column of the Configuration table (a cell may name two)."""
    rows = [line for line in CONFIGURATION.read_text().splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])]


def test_the_configuration_table_lists_every_setting_and_nothing_else():
    documented = documented_names()
    assert len(documented) == len(set(documented)), "a variable has two rows"
    missing = set(environment_names()) - set(documented)
    assert not missing, f"add to docs/configuration.md: {sorted(missing)}"
    unknown = set(documented) - set(environment_names()) - LIBRARY_VARIABLES
    assert not unknown, f"not read by Settings (service/core/config.py): {sorted(unknown)}"


def test_settings_read_the_documented_names(monkeypatch):
    monkeypatch.setenv("LATENTMIX_MAX_WAIT_S", "7.5")
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    settings = Settings()
    assert settings.max_wait_s == 7.5
    assert settings.effective_redis_url == "redis://example:6380/2"
