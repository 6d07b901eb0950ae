"""The few object operations an artifact store needs, on any S3-compatible service (AWS S3,
MinIO, SeaweedFS, Ceph, GCS interoperability), through boto3.

boto3 is the optional extra `pushrec[s3]`: it is imported when an `S3Objects` is made, and
its absence raises `MissingDependencyError` naming the pip command. Credentials and region
come from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
~/.aws, an instance role); the endpoint of a service other than AWS is passed in.

Every botocore error is translated at this edge: a missing key or bucket (404) raises
`ArtifactNotFoundError` (on an eventually consistent store, "not yet"), anything else the
service or the network says raises `StoreUnavailableError` (retry later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from indexing.errors import ArtifactNotFoundError, MissingDependencyError, StoreUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["INSTALL_HINT", "S3Location", "S3Objects", "StoredObject", "is_s3_url"]

INSTALL_HINT = "pip install 'pushrec[s3]'"
_SCHEME = "s3://"


def is_s3_url(value: str) -> bool:
    return value.startswith(_SCHEME)


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`: the bucket and the key prefix (no leading or trailing slash)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Raises ValueError naming what is wrong with `url`."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r}: expected s3://bucket[/prefix]")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(f"{url!r}: no credentials, query or fragment in an s3:// URL")
        prefix = parts.path.strip("/")
        if any(p in {"", ".", ".."} for p in prefix.split("/")) and prefix:
            raise ValueError(f"{url!r}: empty, '.' or '..' path segment")
        return cls(parts.netloc, prefix)

    def key(self, *names: str) -> str:
        return "/".join([self.prefix, *names] if self.prefix else names)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it."""

    key: str
    etag: str
    size: int


class S3Objects:
    """A boto3 S3 client bound to one bucket. Thread-safe (boto3 clients are)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        self._client = client if client is not None else _new_client(endpoint_url, region)

    def get_bytes(self, key: str) -> bytes:
        with _translated(key):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body

    def put_bytes(self, key: str, data: bytes) -> None:
        with _translated(key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def download(self, key: str, path: Path) -> None:
        """Write the object to `path` (multipart, several connections for large objects)."""
        with _translated(key):
            self._client.download_file(self.bucket, key, str(path))

    def upload(self, path: Path, key: str) -> None:
        with _translated(key):
            self._client.upload_file(str(path), self.bucket, key)

    def listing(self, prefix: str) -> list[StoredObject]:
        """Every object whose key starts with `prefix`, in key order."""
        out: list[StoredObject] = []
        with _translated(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(
                        StoredObject(obj["Key"], obj.get("ETag", ""), int(obj.get("Size", 0)))
                    )
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        with _translated(keys[0] if keys else ""):
            for start in range(0, len(keys), 1000):  # the API's limit per call
                chunk = keys[start : start + 1000]
                self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, local set-ups)."""
        with _translated(""):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except self._client.exceptions.ClientError:
                self._client.create_bucket(Bucket=self.bucket)


def _new_client(endpoint_url: str | None, region: str | None) -> S3Client:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise MissingDependencyError(f"an s3:// index store needs boto3: {INSTALL_HINT}") from exc
    # Retries in "standard" mode back off on throttling and 5xx; path-style addressing is
    # what MinIO, SeaweedFS and Ceph expect (AWS accepts it too).
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


@contextmanager
def _translated(key: str) -> Iterator[None]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code", ""))
        if status == 404 or code in {"404", "NoSuchKey", "NoSuchBucket"}:
            raise ArtifactNotFoundError(f"{key}: not in the object store ({code})") from exc
        raise StoreUnavailableError(f"{key}: object store answered {code}: {exc}") from exc
    except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: a failed managed transfer
        raise StoreUnavailableError(f"{key}: object store failed: {exc}") from exc
