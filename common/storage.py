"""S3-compatible object storage (AWS S3, MinIO, R2, rclone) on boto3."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from common.settings import Settings

log = logging.getLogger(__name__)


def image_key(job_id: str, index: int, extension: str) -> str:
    """Deterministic: a redelivered job overwrites the same objects instead of adding more."""
    return f"jobs/{job_id}/{index}.{extension}"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


class Storage:
    """Puts objects and presigns GET URLs for the host that clients reach."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.presign_ttl_s = settings.presign_ttl_s
        self._client = self._make_client(settings, settings.s3_endpoint_url)
        # Presigning is local computation; a URL signed for the public host verifies there.
        public = settings.s3_public_endpoint_url
        self._signer = self._make_client(settings, public) if public else self._client

    @staticmethod
    def _make_client(settings: Settings, endpoint_url: str | None) -> BaseClient:
        config = Config(
            region_name=settings.s3_region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
        )
        key_id = settings.s3_access_key_id
        secret = settings.s3_secret_access_key
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (dev and tests; production buckets pre-exist)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
                raise
            log.info("creating bucket %s", self.bucket)
            self._client.create_bucket(Bucket=self.bucket)

    def check(self) -> None:
        """Raise unless the bucket is reachable with these credentials."""
        self._client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def presign(self, key: str) -> tuple[str, datetime]:
        """A GET URL for ``key`` and the moment it stops working."""
        expires_at = datetime.now(UTC) + timedelta(seconds=self.presign_ttl_s)
        url = self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_ttl_s,
        )
        return url, expires_at.replace(microsecond=0)
