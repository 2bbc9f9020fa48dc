"""The S3 object store (`CAST_STORAGE_URL=s3://bucket[/prefix]`): where outputs,
uploads and code bundles live when one is set, and the presigned URLs that let
workers and the CLI move their bytes straight to and from it.

Owns the store's keys (`runs/<id>/<path>`, `blobs/<owner id>/<sha256>` for
uploads (`uploads/<name>/...` before that, converted by
services/upload_layout.py), `code/<digest>.tar`, under the URL's prefix: a presigned URL is only
ever made for a key the server derived from a run it checked the lease of, or
an upload or bundle it checked the owner of),
presigning (single PUTs, multipart parts, GETs), the checks made before
anything the store holds becomes visible (each object's size, and the sha256
that the uploader signed into its metadata), copies, removal by prefix, the listing
with times and the stale multipart uploads the blob collector reads, a folder
read back as a tar stream, and an object read from an offset (a page of an
archived log, under `logs/<run id>/`: services/log_archive.py). Endpoint,
region and credentials come the usual AWS way (boto3's environment and config
files); none of them is ever shown.
Without a URL the local filesystem store (services/storage.py) is used and
`object_store()` answers None.
"""

from __future__ import annotations

import functools
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cast.protocol.objects import SHA256_META
from cast.server.errors import BadRequest, StoreUnavailable
from cast.server.settings import Settings

if TYPE_CHECKING:
    from botocore.client import BaseClient

CHUNK = 1 << 20
DELETE_BATCH = 1000  # S3's cap on keys per DeleteObjects


def _reaching(method):
    """An outage of the store, or its 5xx, as StoreUnavailable (503): the
    worker or the CLI retries rather than failing the run."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(*args, **kwargs)
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500:
                raise StoreUnavailable(f"it answered {status}") from None
            raise
        except BotoCoreError as error:
            raise StoreUnavailable(type(error).__name__) from None
    return call


class ObjectMissing(Exception):
    """The store holds no object under the key read."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` → (bucket, prefix ending in '/' or empty)."""
    if not url.startswith("s3://"):
        raise ValueError(f"CAST_STORAGE_URL must look like s3://bucket[/prefix], not {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError("CAST_STORAGE_URL names no bucket")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


class ObjectStore:
    def __init__(self, url: str, *, presign_seconds: int):
        import boto3
        from botocore.config import Config

        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.presign_seconds = presign_seconds
        # Path-style addressing works with every S3-compatible server; a few
        # attempts, so a short outage of the store is a retry rather than an error.
        self.client: BaseClient = boto3.client("s3", config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"},
            retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60))

    def describe(self) -> str:
        """What `cast status` shows: the bucket and prefix, never a credential."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    # --- keys ---------------------------------------------------------------------

    def run_prefix(self, run_id: int) -> str:
        return f"{self.runs_prefix}{int(run_id)}/"

    @property
    def runs_prefix(self) -> str:
        return f"{self.prefix}runs/"

    def blob_key(self, owner_id: int, sha256: str) -> str:
        """An upload's file, by content within its owner's uploads: a user's
        upload never names (nor learns of) another user's objects."""
        return f"{self.blob_prefix}{int(owner_id)}/{sha256}"

    @property
    def blob_prefix(self) -> str:
        return f"{self.prefix}blobs/"

    @property
    def earlier_upload_prefix(self) -> str:
        """Where uploads were stored before they were content addressed:
        `uploads/<name>/<generation>/<path>` (services/upload_layout.py converts them)."""
        return f"{self.prefix}uploads/"

    def code_key(self, digest: str) -> str:
        return f"{self.prefix}code/{digest}.tar"

    def log_prefix(self, run_id: int) -> str:
        """A run's archived log (services/log_archive.py): apart from its outputs, which may be freed alone."""
        return f"{self.prefix}logs/{int(run_id)}/"

    # --- presigning ---------------------------------------------------------------

    def presign_put(self, key: str, sha256: str) -> str:
        return self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key, "Metadata": {SHA256_META: sha256}},
            ExpiresIn=self.presign_seconds)

    def presign_get(self, key: str, *, filename: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_seconds)

    @_reaching
    def multipart(self, key: str, sha256: str) -> tuple[str, dict[int, int]]:
        """The multipart upload of `key` in progress (one left by an earlier
        attempt is resumed), and the parts it already holds (number → size)."""
        found = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
        for upload in found:
            if upload["Key"] == key:
                upload_id = upload["UploadId"]
                parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id).get("Parts", [])
                return upload_id, {p["PartNumber"]: p["Size"] for p in parts}
        created = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata={SHA256_META: sha256})
        return created["UploadId"], {}

    def presign_part(self, key: str, upload_id: str, number: int) -> str:
        return self.client.generate_presigned_url(
            "upload_part", Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
            ExpiresIn=self.presign_seconds)

    @_reaching
    def complete_multipart(self, key: str, upload_id: str) -> None:
        """Join the parts the store holds (their ETags are the store's, not the uploader's)."""
        parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id).get("Parts", [])
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]})

    @_reaching
    def pending_multipart(self, key: str) -> str | None:
        for upload in self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", []):
            if upload["Key"] == key:
                return upload["UploadId"]
        return None

    # --- objects ------------------------------------------------------------------

    @_reaching
    def head(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(answer["ContentLength"], answer.get("Metadata", {}).get(SHA256_META, ""))

    @_reaching
    def put_file(self, key: str, path, sha256: str) -> None:
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha256}})

    @_reaching
    def copy(self, source: str, key: str, sha256: str) -> None:
        """The object `source` copied to `key` inside the store (in parts above
        boto3's threshold; no byte passes through the server), `sha256` signed
        into the copy's metadata."""
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, key,
                         ExtraArgs={"Metadata": {SHA256_META: sha256}, "MetadataDirective": "REPLACE"})

    @_reaching
    def open(self, key: str, start: int = 0):
        """The object's bytes from `start` on (a ranged GET), as a stream to
        read and close; ObjectMissing if the store holds none under `key`."""
        from botocore.exceptions import ClientError

        ranged = {"Range": f"bytes={start}-"} if start else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, **ranged)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(key) from None
            raise

    def read(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def keys(self, prefix: str) -> list[str]:
        return [key for key, _ in self.listing(prefix)]

    @_reaching
    def listing(self, prefix: str) -> list[tuple[str, float]]:
        """(key, when it was last written, a Unix time) of every object under `prefix`."""
        return [(item["Key"], item["LastModified"].timestamp())
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
                for item in page.get("Contents", [])]

    def abort_multipart_before(self, prefix: str, cutoff: float) -> list[str]:
        """Abort the multipart uploads under `prefix` begun before `cutoff` (a
        Unix time): their parts are no object, and nothing completes them now."""
        return self.abort_multipart_where(prefix, lambda _key, initiated: initiated < cutoff)

    @_reaching
    def abort_multipart_where(self, prefix: str, abandoned: Callable[[str, float], bool]) -> list[str]:
        """Abort the multipart uploads under `prefix` for whose key and start
        (a Unix time) `abandoned` says True; their keys."""
        aborted = []
        for upload in self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", []):
            if abandoned(upload["Key"], upload["Initiated"].timestamp()):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
        return aborted

    @_reaching
    def delete_keys(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start:start + DELETE_BATCH]
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})

    @_reaching
    def delete_prefix(self, prefix: str) -> None:
        """Every object under `prefix` and every multipart upload left there."""
        self.delete_keys(self.keys(prefix))
        for upload in self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    def tar(self, entries: list[tuple[str, str | None, int]]) -> Iterator[bytes]:
        """A tar stream of (name, key, size) entries read from the store, chunk
        by chunk (a folder's download: the server is in its path); an entry
        without a key is an empty folder."""
        folders: set[str] = set()
        for name, key, size in entries:
            parent = posixpath.dirname(name) if key is not None else name
            missing = []
            while parent and parent not in folders:
                missing.append(parent)
                folders.add(parent)
                parent = posixpath.dirname(parent)
            for folder in reversed(missing):
                header = tarfile.TarInfo(folder)
                header.type, header.mode = tarfile.DIRTYPE, 0o755
                yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if key is None:
                continue
            header = tarfile.TarInfo(name)
            header.size, header.mode = size, 0o644
            yield header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            sent = 0
            for chunk in self.read(key):
                chunk = chunk[:size - sent]
                sent += len(chunk)
                yield chunk
            if sent < size:  # the object shrank under us: keep the archive well formed
                yield b"\0" * (size - sent)
            if size % tarfile.BLOCKSIZE:
                yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)


@functools.lru_cache(maxsize=8)
def _store(url: str, presign_seconds: int) -> ObjectStore:
    return ObjectStore(url, presign_seconds=presign_seconds)


def object_store(settings: Settings) -> ObjectStore | None:
    """The object store `settings` names, or None for the local filesystem store."""
    if not settings.storage_url:
        return None
    try:
        return _store(settings.storage_url, int(settings.presign_seconds))
    except ValueError as error:
        raise BadRequest(str(error)) from None
