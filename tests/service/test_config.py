"""Settings: every environment variable the service reads is documented in the README."""

from pathlib import Path

from latentmix.service.core.config import Settings

README = Path(__file__).parents[2] / "README.md"


def environment_names() -> list[str]:
    prefix = Settings.model_config["env_prefix"]
    return [
        field.validation_alias or f"{prefix}{name}".upper()
        for name, field in Settings.model_fields.items()
    ]


def test_every_setting_is_documented_in_the_readme():
    readme = README.read_text()
    undocumented = [name for name in environment_names() if f"`{name}`" not in readme]
    assert not undocumented, f"add to README.md, section Configuration: {undocumented}"


def test_settings_read_the_documented_names(monkeypatch):
    monkeypatch.setenv("LATENTMIX_MAX_WAIT_S", "7.5")
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    settings = Settings()
    assert settings.max_wait_s == 7.5
    assert settings.effective_redis_url == "redis://example:6380/2"
