"""Production refuses to start open or with secrets anyone can look up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cli.services import DEV_S3_SECRET
from common.settings import KNOWN_DEFAULT_SECRETS, Settings


def test_production_is_the_default_and_requires_auth() -> None:
    assert Settings().env == "production"
    assert Settings().auth_enabled
    with pytest.raises(ValidationError, match="SDQ_AUTH_ENABLED is false"):
        Settings(auth_enabled=False)
    assert not Settings(env="dev", auth_enabled=False).auth_enabled


def test_production_refuses_well_known_secrets_without_printing_them() -> None:
    assert DEV_S3_SECRET in KNOWN_DEFAULT_SECRETS
    with pytest.raises(ValidationError, match="SDQ_S3_SECRET_ACCESS_KEY") as refused:
        Settings(s3_secret_access_key=DEV_S3_SECRET)
    assert DEV_S3_SECRET not in str(refused.value)
    Settings(s3_secret_access_key="a-real-secret-from-the-vault")
    Settings(env="dev", s3_secret_access_key=DEV_S3_SECRET)


def test_refused_configuration_does_not_echo_its_inputs() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(auth_enabled=False, s3_secret_access_key="a-real-secret-from-the-vault")
    assert "a-real-secret-from-the-vault" not in str(refused.value)


def test_content_policy_terms_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDQ_CONTENT_POLICY_TERMS", "gore, bad phrase ,,")
    assert Settings().content_policy_terms == ("gore", "bad phrase")


def test_limits_cannot_exceed_the_schema_maxima() -> None:
    with pytest.raises(ValidationError):
        Settings(max_prompts_per_job=17)
    with pytest.raises(ValidationError):
        Settings(max_prompt_chars=2001)
