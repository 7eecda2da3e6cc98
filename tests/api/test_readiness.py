"""/readyz follows Redis: 503 while it is down, 200 once it is back."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from cli.services import start_redis
from common.settings import Settings
from common.storage import Storage


def test_readyz_follows_redis(
    settings: Settings, storage: Storage, tmp_path: Path, auth_headers: dict[str, str]
) -> None:
    own = start_redis(tmp_path / "redis")
    app = create_app(settings.model_copy(update={"redis_url": own.extra["url"]}))
    try:
        with TestClient(app, headers=auth_headers) as http:
            assert http.get("/readyz").status_code == 200
            own.stop()
            down = http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["checks"]["redis"]["ok"] is False
            assert int(down.headers["retry-after"]) > 0
            submit = http.post("/v1/jobs", json={"prompt": "x"})
            assert submit.status_code == 503
            assert submit.json()["error"]["code"] == "unavailable"
            own = start_redis(tmp_path / "redis", port=own.port)
            assert http.get("/readyz").status_code == 200
            assert http.get("/healthz").json() == {"status": "ok"}
    finally:
        own.stop()
