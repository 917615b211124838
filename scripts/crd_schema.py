"""Turn a CustomResourceDefinition's OpenAPI v3 schema into a strict JSON schema file, for
checking manifests of that resource offline (tests/deploy/test_kubernetes.py).

    python scripts/crd_schema.py CRD.yaml OUT_DIR SOURCE   # writes OUT_DIR/<kind>_<version>.json

SOURCE (where the CRD came from: repository, path, commit, licence) is kept in the schema's
`$comment`.

Strict as kubeconform's `-strict` is: an object whose schema lists its properties and keeps
no unknown fields (`x-kubernetes-preserve-unknown-fields`) rejects others, where the API
server would silently prune them (a misspelt field is then an error here, not a no-op
there). apiVersion and kind are pinned to the resource's own.
"""

import json
import sys
from pathlib import Path

import yaml

SCHEMA_MAPS = ("properties", "patternProperties")  # name -> schema
SCHEMAS = ("items", "additionalProperties", "not")  # a schema (or a boolean)
SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def strict(schema: dict) -> dict:
    """`schema` with `additionalProperties: false` on every closed object, recursively."""
    out = dict(schema)
    for key in SCHEMA_MAPS:
        if key in out:
            out[key] = {name: strict(sub) for name, sub in out[key].items()}
    for key in SCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in SCHEMA_LISTS:
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    closed = "properties" in out and "additionalProperties" not in out
    if closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def version_schemas(crd: dict, source: str) -> dict[str, dict]:
    """One JSON schema per served version of the CRD, by file name."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schemas = {}
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"enum": [f"{group}/{version['name']}"]}
        schema["properties"]["kind"] = {"enum": [kind]}
        schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["$comment"] = (
            f"{kind} {version['name']}: made by scripts/crd_schema.py from {source}"
        )
        schemas[f"{kind.lower()}_{version['name']}.json"] = schema
    return schemas


def main(crd_file: str, out_dir: str, source: str) -> None:
    crd = yaml.safe_load(Path(crd_file).read_text(encoding="utf-8"))
    for name, schema in version_schemas(crd, source).items():
        path = Path(out_dir) / name
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
