"""scripts/crd_schema.py: a CRD's schema made strict, as the vendored KEDA schemas are."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("crd_schema", ROOT / "scripts/crd_schema.py")
crd_schema = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crd_schema)

CRD = {
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer"},
                                    "parts": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {"name": {"type": "string"}},
                                        },
                                    },
                                    "labels": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "free": {
                                        "type": "object",
                                        "properties": {"known": {"type": "string"}},
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    }
}


def test_closed_objects_reject_unknown_fields_and_open_ones_keep_them():
    [(name, schema)] = crd_schema.version_schemas(CRD, "a test").items()
    assert name == "widget_v1.json" and "a test" in schema["$comment"]
    good = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 1, "parts": [{"name": "a"}], "labels": {"x": "y"}, "free": {"z": 1}},
    }
    jsonschema.validate(good, schema)
    for path, bad in (
        (("spec",), {"sise": 1}),
        (("spec", "parts", 0), {"nmae": "a"}),
        ((), {"extra": 1}),
    ):
        wrong = json.loads(json.dumps(good))
        target = wrong
        for step in path:
            target = target[step]
        target.update(bad)
        with pytest.raises(jsonschema.ValidationError, match=next(iter(bad))):
            jsonschema.validate(wrong, schema)
    with pytest.raises(jsonschema.ValidationError, match=r"example\.com/v1"):
        jsonschema.validate(good | {"apiVersion": "example.com/v2"}, schema)
