from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.settings import Settings


def test_visibility_timeout_must_outlive_hard_limit() -> None:
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        Settings(job_time_limit_s=600, visibility_timeout_s=600)
    settings = Settings(job_time_limit_s=600, visibility_timeout_s=601)
    assert settings.soft_time_limit_s < settings.job_time_limit_s


def test_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDQ_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    monkeypatch.setenv("SDQ_S3_SECRET_ACCESS_KEY", "hunter2")
    settings = Settings()
    assert settings.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "hunter2" not in repr(settings)


def test_presigned_urls_cannot_outlive_seven_days() -> None:
    with pytest.raises(ValidationError):
        Settings(presign_ttl_s=7 * 24 * 3600 + 1)
