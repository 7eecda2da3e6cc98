"""/openapi.json documents every field, and the error shape clients really get."""

from __future__ import annotations

from api.main import create_app
from common.settings import Settings


def _spec() -> dict:
    return create_app(Settings(env="dev", auth_enabled=False)).openapi()


def test_every_field_has_a_description() -> None:
    undocumented = [
        f"{name}.{field}"
        for name, schema in _spec()["components"]["schemas"].items()
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not undocumented


def test_validation_errors_are_documented_in_sdq_shape() -> None:
    spec = _spec()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    responses = [
        op["responses"]["422"]
        for ops in spec["paths"].values()
        for op in ops.values()
        if "422" in op.get("responses", {})
    ]
    assert responses
    for response in responses:
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
