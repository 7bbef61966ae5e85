"""Where files live: a local folder or an S3-compatible bucket, behind one small seam.

Owns `ObjectStore` (the protocol the artifact store and the market data store write
through), its two backends `LocalObjectStore` and `S3ObjectStore`, `open_object_store`
(a settings root → backend), and the errors `ObjectNotFound` and
`ObjectStoreUnavailable`. Keys are "/"-separated names relative to the root
(`ab/abcd….ubj`, `BTCUSDT/1h.parquet`).

Semantics both backends keep:
- `put` replaces atomically: a reader sees the whole old object or the whole new one,
  never a part (local: temp file + fsync + rename; S3: a single PUT, which S3 publishes
  whole and reads back consistently after it returns).
- `stat` answers a version token that changes whenever the bytes may have (local: size,
  mtime, inode; S3: size and ETag), so a cache can be checked with one call.
- Errors never carry credentials: S3 failures name the setting (CLM_DATA_DIR /
  CLM_ARTIFACT_ROOT) and CLM_S3_ENDPOINT_URL, and the endpoint without any userinfo.

Why boto3 rather than s3fs: the stores need only get/put/head/list/delete on whole,
small objects; boto3 is the reference client, and its retries and timeouts are explicit.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.core.config import S3Location, StorageRoot
from app.core.errors import DomainError

__all__ = [
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStat",
    "ObjectStore",
    "ObjectStoreUnavailable",
    "S3ObjectStore",
    "check_key",
    "open_object_store",
]


class ObjectNotFound(FileNotFoundError):
    """No object under the key (a FileNotFoundError, so callers keep one except clause)."""


class ObjectStoreUnavailable(DomainError):
    """The object store cannot be used (unreachable, no such bucket, access refused).
    A 503 for the API: the request was fine, the storage is not."""

    status = 503
    title = "Service unavailable"


@dataclass(frozen=True)
class ObjectStat:
    """Size and a version token that differs whenever the bytes may differ."""

    size: int
    token: tuple[Any, ...]


class ObjectStore(Protocol):
    """Whole-object storage under one root; keys are "/"-separated relative names."""

    url: str  # the root, for messages (a folder or s3://bucket/prefix; never credentials)

    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes, *, durable: bool = True) -> ObjectStat: ...
    def exists(self, key: str) -> bool: ...
    def stat(self, key: str) -> ObjectStat | None: ...
    def children(self, prefix: str = "") -> tuple[list[str], list[str]]: ...
    def delete(self, key: str) -> None: ...
    def describe(self, key: str) -> str: ...
    def local_path(self, key: str) -> Path | None: ...
    def reachable(self) -> bool: ...


def check_key(key: str) -> str:
    """A relative key of plain names: no leading "/", no empty, "." or ".." part."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ValueError(f"bad object key {key!r}")
    return key


def open_object_store(root: StorageRoot | str) -> ObjectStore:
    """The backend for a settings root: an S3Location, or a local folder."""
    if isinstance(root, S3Location):
        return S3ObjectStore(root)
    if str(root)[:5].lower() == "s3://":  # a URL string skipped the settings' parsing
        raise ValueError(f"{root!r}: pass an S3Location (app.core.config.parse_s3_url)")
    return LocalObjectStore(Path(root))


# ------------------------------------------------------------------------------ local


class LocalObjectStore:
    """Objects as files under a folder (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def reachable(self) -> bool:
        return True  # a folder needs no server (it is created on first write)

    def describe(self, key: str) -> str:
        return str(self._path(key))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key} under {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def stat(self, key: str) -> ObjectStat | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectStat(st.st_size, (st.st_size, st.st_mtime_ns, st.st_ino))

    def children(self, prefix: str = "") -> tuple[list[str], list[str]]:
        folder = self._path(prefix) if prefix else self.root
        if not folder.is_dir():
            return [], []
        dirs, files = [], []
        for p in folder.iterdir():
            (dirs if p.is_dir() else files).append(p.name)
        return sorted(dirs), sorted(files)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def put(self, key: str, data: bytes, *, durable: bool = True) -> ObjectStat:
        """Temp file in the same folder, fsync, rename over the old one (atomic on
        POSIX), then fsync the folder so the rename survives a crash. `durable=False`
        skips both fsyncs (for derived data that is rebuilt when lost)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # readers see the old file or the new one, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        st = path.stat()
        return ObjectStat(st.st_size, (st.st_size, st.st_mtime_ns, st.st_ino))


# ------------------------------------------------------------------------------- S3

# One client per (process, endpoint): boto3 clients are thread-safe but must not cross
# a fork (Celery's prefork children build their own).
_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


def _client(endpoint_url: str | None) -> Any:
    key = (os.getpid(), endpoint_url)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ModuleNotFoundError as exc:  # the optional extra is not installed
                    raise ObjectStoreUnavailable(
                        "s3:// roots need boto3: pip install 'clm[s3]'") from exc
                # Short connect timeout and few retries: an unreachable endpoint is
                # reported in seconds, not after botocore's default minutes.
                config = Config(connect_timeout=5, read_timeout=60,
                                retries={"max_attempts": 3, "mode": "standard"},
                                s3={"addressing_style": "path"} if endpoint_url else None)
                session = boto3.session.Session()
                # A custom endpoint (MinIO, Ceph, moto) needs some region to sign with.
                region = session.region_name or ("us-east-1" if endpoint_url else None)
                client = session.client("s3", endpoint_url=endpoint_url, region_name=region,
                                        config=config)
                _clients[key] = client
    return client


class S3ObjectStore:
    """Objects in an S3-compatible bucket under a key prefix."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.url = str(location)

    def local_path(self, key: str) -> Path | None:
        return None

    def reachable(self) -> bool:
        """The bucket answers (HEAD bucket) with these credentials."""
        try:
            self._call("reach the bucket", "head_bucket")
        except (ObjectStoreUnavailable, ObjectNotFound):
            return False
        return True

    def describe(self, key: str) -> str:
        return f"s3://{self.location.bucket}/{self.location.key(check_key(key))}"

    def _key(self, key: str) -> str:
        return self.location.key(check_key(key))

    def _fail(self, exc: Exception, doing: str) -> ObjectStoreUnavailable:
        """An ObjectStoreUnavailable naming the settings, never the credentials."""
        where = self.location.endpoint_url or "AWS's endpoint for the configured region"
        reason = _reason(exc)
        return ObjectStoreUnavailable(
            f"{self.location.variable} = {self.url}: cannot {doing} ({reason}); the object "
            f"store is {where} — check {self.location.variable}, CLM_S3_ENDPOINT_URL and "
            "the AWS_* credentials/region",
            variable=self.location.variable)

    def _call(self, doing: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(_client(self.location.endpoint_url), method)(
                Bucket=self.location.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"no object {kwargs.get('Key')} in {self.url}") from None
            raise self._fail(exc, doing) from None
        except BotoCoreError as exc:
            raise self._fail(exc, doing) from None

    def get(self, key: str) -> bytes:
        answer = self._call(f"read {key}", "get_object", Key=self._key(key))
        body = answer["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def put(self, key: str, data: bytes, *, durable: bool = True) -> ObjectStat:
        # One PUT: S3 makes the object visible whole, or keeps the old one.
        answer = self._call(f"write {key}", "put_object", Key=self._key(key), Body=data)
        return ObjectStat(len(data), (len(data), str(answer.get("ETag", "")).strip('"')))

    def stat(self, key: str) -> ObjectStat | None:
        try:
            answer = self._call(f"inspect {key}", "head_object", Key=self._key(key))
        except ObjectNotFound:
            # A HEAD answers a bare 404 for a missing bucket too: one listing tells the
            # two apart (NoSuchBucket is ObjectStoreUnavailable, not "no such series").
            self._call(f"inspect {key}", "list_objects_v2", Prefix=self._key(key), MaxKeys=1)
            return None
        size = int(answer["ContentLength"])
        return ObjectStat(size, (size, str(answer.get("ETag", "")).strip('"')))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def children(self, prefix: str = "") -> tuple[list[str], list[str]]:
        """Sub-"folders" (common prefixes) and object names one level below `prefix`."""
        base = self.location.key(check_key(prefix)) + "/" if prefix else (
            self.location.prefix + "/" if self.location.prefix else "")
        dirs: set[str] = set()
        files: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": base, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"list {prefix or 'the root'}", "list_objects_v2", **kwargs)
            for cp in page.get("CommonPrefixes", []):
                dirs.add(cp["Prefix"][len(base):].rstrip("/"))
            for obj in page.get("Contents", []):
                files.add(obj["Key"][len(base):])
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(d for d in dirs if d), sorted(f for f in files if f)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", "delete_object", Key=self._key(key))


def _reason(exc: Exception) -> str:
    """A one-line reason from a botocore error, with any credential value removed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
