"""infra/ is checked statically (no container engine runs in CI)."""

from __future__ import annotations

from pathlib import Path

import yaml

from common.settings import Settings

INFRA = Path(__file__).resolve().parent.parent / "infra"
README = Path(__file__).resolve().parent.parent / "README.md"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_env_names_are_settings() -> None:
    known = {f"SDQ_{name.upper()}" for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        sdq_vars = {k for k in env if k.startswith("SDQ_")}
        assert sdq_vars <= known, (name, sdq_vars - known)


def test_redis_keeps_jobs() -> None:
    command = _compose()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_worker_reserves_a_gpu() -> None:
    worker = _compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_every_setting_is_documented() -> None:
    readme = README.read_text()
    missing = [
        f"SDQ_{name.upper()}"
        for name in Settings.model_fields
        if f"SDQ_{name.upper()}" not in readme
    ]
    assert not missing


def test_api_image_has_no_torch() -> None:
    dockerfile = (INFRA / "Dockerfile.api").read_text()
    assert "torch" not in dockerfile.replace("no torch", "")
    assert "COPY worker" not in dockerfile
