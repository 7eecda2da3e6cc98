"""/score, /v1/batches and /v1/images/generations refuse bad input with a message that says
what is wrong, and enqueue nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.score import ScoreRequest, job_bodies
from common import keys
from common.settings import Settings

QUEUE = "sdq.interfaces-validation"  # no worker consumes it, nor its batch queue
BATCH_QUEUE = f"{QUEUE}.batch"


@pytest.fixture(scope="module")
def http(settings: Settings, storage, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"queue": QUEUE}))
    with TestClient(app, headers=auth_headers) as client:
        yield client


def _queued(redis_client: redis.Redis) -> tuple[int, ...]:
    return tuple(
        n
        for queue in (QUEUE, BATCH_QUEUE)
        for n in (redis_client.llen(queue), redis_client.zcard(keys.pending(queue)))
    )


def _score(data: object = None, **input_data: object) -> dict:
    body = {"columns": ["prompt"], "data": data if data is not None else ["a cat"], "index": [0]}
    return {"input_data": {**body, **input_data}}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, "input_data"),
        ({"inputs": ["a cat"]}, 422, "input_data"),
        ({"input_data": {"columns": ["prompt"]}}, 422, "input_data.data"),
        (_score(data="a cat"), 422, "input_data.data"),
        (_score(columns=["text"]), 422, "'prompt' column"),
        (_score(columns=["prompt", "colour"], data=[["a", "red"]]), 422, "colour"),
        (_score(columns=["prompt", "width"], data=[["a", 64, 3]]), 422, "input_data.data[0]"),
        (_score(columns=["prompt", "width"], data=["a cat"]), 422, "one value per column"),
        (_score(data=["a cat", ""]), 422, "input_data.data[1].prompt"),
        (_score(data=["   "]), 422, "must not be empty"),
        (_score(data=[]), 422, "no rows"),
        (_score(data=[["a cat"], [5]]), 422, "input_data.data[1].prompt"),
        (_score(columns=["prompt", "width"], data=[["a", 100]]), 422, "data[0].width"),
        ({**_score(), "parameters": {"num_inference_steps": 0}}, 422, "num_inference_steps"),
        ({**_score(), "parameters": {"strength": 0.5}}, 422, "strength"),
        (_score(data=[f"p{n}" for n in range(keys.SCORE_MAX_ROWS + 1)]), 413, "at most"),
    ],
)
def test_bad_score_input_is_4xx_and_enqueues_nothing(
    http: TestClient, redis_client: redis.Redis, body: dict, status: int, says: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/score", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert _queued(redis_client) == before


def test_score_groups_rows_into_jobs(settings: Settings) -> None:
    def bodies(**input_data: object) -> list:
        request = ScoreRequest.model_validate({"input_data": {"columns": ["prompt"], **input_data}})
        return job_bodies(request, settings)

    (one,) = bodies(data=["a", "b"], parameters={"seed": 10, "width": 64, "height": 64})
    assert one.prompts == ["a", "b"]
    assert (one.seed, one.width) == (10, 64)
    split = bodies(
        columns=["prompt", "num_inference_steps"], data=[["a", 2], ["b", 2], ["c", 3], ["d", 2]]
    )
    assert [b.prompts for b in split] == [["a", "b"], ["c"], ["d"]]
    assert [b.num_inference_steps for b in split] == [2, 3, 2]
    seeded = bodies(columns=["prompt", "seed"], data=[["a", 7], ["b", 7]])
    assert [(b.prompts, b.seed) for b in seeded] == [(["a"], 7), (["b"], 7)]
    capped = bodies(data=[f"p{n}" for n in range(20)], parameters={"seed": 100})
    assert [len(b.prompts) for b in capped] == [16, 4]
    assert [b.seed for b in capped] == [100, 116]  # row n keeps seed + n


def _csv(*rows: str, header: str = "prompt") -> bytes:
    return "\n".join([header, *rows]).encode()


@pytest.mark.parametrize(
    ("upload", "status", "says"),
    [
        (("p.csv", _csv("a cat,64", ",64", header="prompt,width")), 422, "row 2 (line 3)"),
        (
            ("p.csv", _csv("a cat", "   ")),
            422,
            "row 2 (line 3): prompt: Value error, must not be empty",
        ),
        (("p.csv", _csv("a cat,64", "a dog,100", header="prompt,width")), 422, "row 2"),
        (("p.csv", _csv("a cat", header="text")), 422, "'prompt' column"),
        (("p.csv", _csv("a cat,red", header="prompt,colour")), 422, "colour"),
        (("p.csv", _csv("a cat,64,9", header="prompt,width")), 422, "more cells"),
        (("p.csv", _csv()), 422, "no rows"),
        (("p.jsonl", b'{"prompt": "a"}\n\n{"prompt": "b", "seed": -1}\n'), 422, "row 2 (line 3)"),
        (("p.jsonl", b'{"prompt": "a"}\n{"prompt": \n'), 422, "row 2 (line 2)"),
        (("p.jsonl", b'{"prompt": "a", "n": 2}\n'), 422, "row 1"),
        (("p.csv", b"\xff\xfe\x00"), 422, "UTF-8"),
        (("p.csv", _csv(*(f"p{n}" for n in range(keys.BATCH_MAX_ROWS + 1)))), 413, "10000"),
    ],
)
def test_bad_batch_upload_names_the_row_and_enqueues_nothing(
    http: TestClient, redis_client: redis.Redis, upload: tuple, status: int, says: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/v1/batches/upload", files={"file": upload})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert _queued(redis_client) == before


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"prompts": []}, 422, "prompts"),
        ({"prompts": ["a", {"prompt": "b", "width": 65}]}, 422, "row 2: width"),
        ({"prompts": ["a", 5]}, 422, "row 2"),
        ({"prompts": ["a", {"text": "b"}]}, 422, "row 2"),
        ({"prompts": ["a"], "parameters": {"num_images_per_prompt": 2}}, 422, "parameters"),
        ({"prompts": ["a"] * (keys.BATCH_MAX_ROWS + 1)}, 413, "at most 10000 rows"),
    ],
)
def test_bad_json_batch_is_refused_and_enqueues_nothing(
    http: TestClient, redis_client: redis.Redis, body: dict, status: int, says: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/v1/batches", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert _queued(redis_client) == before


def test_upload_parameters_must_be_a_json_object(
    http: TestClient, redis_client: redis.Redis
) -> None:
    before = _queued(redis_client)
    for parameters, says in (("{", "parameters: not JSON"), ('{"width": 7}', "width")):
        response = http.post(
            "/v1/batches/upload",
            files={"file": ("p.csv", _csv("a cat"))},
            data={"parameters": parameters},
        )
        assert response.status_code == 422, response.text
        assert says in response.json()["error"]["message"]
    assert _queued(redis_client) == before


def test_content_policy_names_the_row(
    settings: Settings, storage, auth_headers: dict[str, str], redis_client: redis.Redis
) -> None:
    strict = settings.model_copy(update={"queue": QUEUE, "content_policy_terms": ("forbidden",)})
    before = _queued(redis_client)
    with TestClient(create_app(strict), headers=auth_headers) as client:
        response = client.post("/v1/batches", json={"prompts": ["a cat", "a forbidden cat"]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("row 2: the prompt was refused")
    assert _queued(redis_client) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": "a cat", "n": 9}, "n"),
        ({"prompt": "a cat", "n": 0}, "n"),
        ({"prompt": "a cat", "size": "100x100"}, "size"),
        ({"prompt": "a cat", "size": "big"}, "size"),
        ({"prompt": "a cat", "response_format": "gif"}, "response_format"),
        ({"prompt": "a cat", "style": "vivid"}, "style"),
        ({"prompt": ""}, "prompt"),
        ({"n": 1}, "prompt"),
    ],
)
def test_bad_images_request_is_422_and_enqueues_nothing(
    http: TestClient, redis_client: redis.Redis, body: dict, says: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/v1/images/generations", json=body)
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]["message"]
    assert _queued(redis_client) == before


def test_valid_requests_are_enqueued(http: TestClient, redis_client: redis.Redis) -> None:
    """The control for the tests above: good requests do reach their queues."""
    llen, pending, batch_llen, batch_pending = _queued(redis_client)
    created = http.post("/v1/batches", json={"prompts": ["a", {"prompt": "b", "seed": 3}]})
    assert created.status_code == 202, created.text
    batch = created.json()
    assert batch["status"] == "in_progress"
    assert batch["counts"]["queued"] == 2
    assert created.headers["location"] == f"/v1/batches/{batch['id']}"
    assert _queued(redis_client) == (llen, pending, batch_llen + 2, batch_pending + 2)

    uploaded = http.post(
        "/v1/batches/upload",
        files={"file": ("p.jsonl", json.dumps({"prompt": "c"}).encode())},
        data={"parameters": '{"width": 64, "seed": 5}', "metadata": '{"k": "v"}'},
    )
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["metadata"] == {"k": "v"}
    assert _queued(redis_client)[2:] == (batch_llen + 3, batch_pending + 3)
    assert http.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200  # tidy up
    canceled = http.post(f"/v1/batches/{uploaded.json()['id']}/cancel").json()
    assert (canceled["status"], canceled["counts"]["canceled"]) == ("canceled", 1)
    assert canceled["results"]["predictions_csv"]["key"].endswith("/predictions.csv")


def test_batch_ended_by_job_cancels_finishes_on_read(
    http: TestClient, redis_client: redis.Redis, storage
) -> None:
    """No worker sees these jobs end; reading the batch notices and writes the manifest."""
    batch = http.post("/v1/batches", json={"prompts": ["a", "b"]}).json()
    for job_id in redis_client.lrange(keys.batch_jobs(batch["id"]), 0, -1):
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["batch_id"] == batch["id"]
    assert not storage.exists(f"batches/{batch['id']}/results.jsonl")

    done = http.get(f"/v1/batches/{batch['id']}").json()

    assert (done["status"], done["fraction_done"]) == ("completed", 1.0)
    assert done["counts"]["canceled"] == 2
    lines = storage.get(done["results"]["results_jsonl"]["key"]).decode().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["canceled", "canceled"]


def test_batch_idempotency_key(http: TestClient, redis_client: redis.Redis) -> None:
    body = {"prompts": ["a cat", "a dog"], "parameters": {"seed": 1}}
    headers = {"Idempotency-Key": "catalogue-run-7"}
    first = http.post("/v1/batches", json=body, headers=headers)
    queued = _queued(redis_client)
    replay = http.post("/v1/batches", json=body, headers=headers)
    other = http.post("/v1/batches", json={**body, "prompts": ["a cow"]}, headers=headers)

    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert _queued(redis_client) == queued  # the replay made nothing new
    http.post(f"/v1/batches/{first.json()['id']}/cancel")
