"""A property-based fuzz of the whole API from the committed OpenAPI schema (schemathesis)
with every check schemathesis has (`--checks all`): whatever it generates, valid or not, the
API never answers 5xx, every answer matches the schema (status, content type, headers,
body), schema-valid requests are accepted and invalid ones refused, required headers and
declared authentication are enforced, methods not in the schema are refused.

The API runs under a real uvicorn server on loopback, on a real Redis and a local store.
A worker's model card is published but no worker works, so /readyz is 200 (a 503 there would be its
documented answer, not a fault) and jobs stay queued. Examples are derandomized: the same
cases on every run.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from helpers import TINY_CARD, live_server
from hypothesis import HealthCheck, settings
from redis import Redis
from schemathesis.checks import CHECKS, is_check_class, load_all_checks
from schemathesis.config import SchemathesisConfig

from latentmix.service.core.config import Settings
from latentmix.service.core.model_cards import publish_card

OPENAPI_FILE = Path(__file__).parents[3] / "openapi" / "openapi.json"
load_all_checks()
# Every registered check (schemathesis's `--checks all`); classes are run-wide checks
# that only the schemathesis runner drives.
ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]
FUZZ_DB = 3

# Uploaded files must be images, or safetensors latents with the model's channels, and
# prompts one per image, on a model a worker serves: no schema can say what bytes are a
# PNG, so a schema-valid upload may still be refused for its contents (415, 422).
FILE_CONTENTS_REFUSED = {
    "include-operation-id": "create_latents",
    "checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "415", "422", "429"]
        }
    },
}
# POST /evaluations likewise takes uploaded reference images, and needs one generated set
# (`job` or `images`) and some references, which its all-optional form fields cannot say.
EVALUATION_CONTENTS_REFUSED = FILE_CONTENTS_REFUSED | {"include-operation-id": "create_evaluation"}
schema = schemathesis.openapi.from_path(
    OPENAPI_FILE,
    config=SchemathesisConfig.from_dict(
        {"operations": [FILE_CONTENTS_REFUSED, EVALUATION_CONTENTS_REFUSED]}
    ),
)


@pytest.fixture(scope="module")
def base_url(redis_server: str, tmp_path_factory) -> Iterator[str]:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{FUZZ_DB}"
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    publish_card(redis, TINY_CARD, "fuzz-worker", ttl_s=3600)  # serves, never works
    fuzz_settings = Settings(
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("fuzz"),
        model="tiny",
        max_wait_s=0.2,  # ?wait= may be fuzzed up to the cap: keep each example short
    )
    with live_server(fuzz_settings) as url:
        yield url


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_never_fails_and_always_matches_its_schema(case, base_url):
    case.call_and_validate(base_url=base_url, checks=ALL_CHECKS)
