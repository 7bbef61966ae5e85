"""A typed client for the CLM HTTP API (docs/API.md).

Owns `Client` (train and wait, list and page versions, promote, rollback, serving,
download an artifact with its hash checked, reports, jobs), its results (`Job`,
`Version`, `Page`) and `ApiError` (the problem+json answer: status, title, detail,
errors, and the extra members such as a 409's `job_id`).

Standard library only (urllib), on purpose: a script or notebook that talks to CLM needs
nothing else installed, and the module can be copied next to a script as it is. Answers
503 (database or broker unreachable; the API sends `Retry-After`) and connection
failures are retried with bounded exponential backoff; other errors raise at once.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["ApiError", "ArtifactHashMismatch", "Client", "Job", "JobTimeout", "Page",
           "Version"]

T = TypeVar("T")
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(Exception):
    """An error answer of the API (problem+json): `status`, `title`, `detail`, `errors`
    ([{"field", "message"}]) and `extra` (other members, e.g. `job_id` on a 409)."""

    def __init__(self, status: int, title: str, detail: str,
                 errors: list[dict[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        self.extra = dict(extra or {})

    @classmethod
    def from_response(cls, status: int, body: bytes, reason: str = "") -> ApiError:
        try:
            doc = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        known = {"type", "title", "status", "detail", "errors"}
        return cls(status, str(doc.get("title") or reason or "HTTP error"),
                   str(doc.get("detail") or body[:500].decode("utf-8", "replace")),
                   doc.get("errors") if isinstance(doc.get("errors"), list) else None,
                   {k: v for k, v in doc.items() if k not in known})


class ArtifactHashMismatch(Exception):
    """A downloaded artifact's sha256 is not the one the registry recorded."""


class JobTimeout(TimeoutError):
    """`wait_job` gave up before the job finished (the job keeps running)."""


@dataclass(frozen=True)
class Job:
    """A training or search job (`raw`: the whole answer)."""

    job_id: str
    status: str
    model_id: str | None
    version: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Job:
        return cls(str(doc["job_id"]), str(doc.get("status")), doc.get("model_id"),
                   doc.get("version"), dict(doc))

    @property
    def finished(self) -> bool:
        return self.status in FINAL_JOB_STATES


@dataclass(frozen=True)
class Version:
    """A model version (`raw`: the whole answer: lineage, evaluation, ...)."""

    model_id: str
    version: str
    status: str
    metrics: dict[str, Any]
    artifact: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Version:
        return cls(str(doc["model_id"]), str(doc["version"]), str(doc["status"]),
                   dict(doc.get("metrics") or {}), doc.get("artifact"), dict(doc))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the cursor of the next (None on the last)."""

    items: list[T]
    next_cursor: str | None


class Client:
    """CLM over HTTP. `base_url` like "http://127.0.0.1:8000"; `token` a bearer token
    (`clm token create`). 503s and connection errors are retried `retries` times with
    backoff doubling from `backoff_s` up to `max_backoff_s` (or the answer's
    Retry-After, capped the same)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep

    # ------------------------------------------------------------------ transport
    def _url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        url = self.base_url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return url + ("?" + urllib.parse.urlencode(params) if params else "")

    def _send(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
              body: Any = None, headers: Mapping[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        hdrs = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self._url(path, query), data=data, headers=hdrs,
                                             method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    return resp.status, dict(resp.headers.items()), resp.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
                if status == 304:
                    return status, dict(exc.headers.items()), b""
                if status != 503 or attempt == self.retries:
                    raise ApiError.from_response(status, answer, exc.reason) from None
                wait = _retry_after(exc.headers.get("Retry-After"), delay)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == self.retries:
                    raise
                wait = delay
            self._sleep(min(wait, self.max_backoff_s))
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        _, _, body = self._send(method, path, **kw)
        return json.loads(body.decode("utf-8")) if body else None

    @staticmethod
    def _quote(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    # ------------------------------------------------------------------ jobs
    def train(self, model_type: str, symbol: str, timeframe: str, dataset_span_days: int, *,
              params: Mapping[str, Any] | None = None, trigger_reason: str | None = None,
              regime: str | None = None, strategy: Mapping[str, Any] | None = None) -> Job:
        """POST /clm/train (role operator): the queued job. A model with an active job
        raises ApiError 409 whose `extra["job_id"]` is that job."""
        body: dict[str, Any] = {"model_type": model_type, "symbol": symbol,
                                "timeframe": timeframe, "dataset_span_days": dataset_span_days}
        for key, value in (("params", params), ("trigger_reason", trigger_reason),
                           ("regime", regime), ("strategy", strategy)):
            if value is not None:
                body[key] = value
        return Job.from_dict(self._json("POST", "/clm/train", body=body))

    def job(self, job_id: str) -> Job:
        """GET /clm/jobs/{job_id}."""
        return Job.from_dict(self._json("GET", f"/clm/jobs/{self._quote(job_id)}"))

    def jobs(self, *, limit: int | None = None, cursor: str | None = None,
             **filters: str | None) -> Page[Job]:
        """GET /clm/jobs: one page (filters: status, model_id, model_type,
        trigger_reason, kind)."""
        doc = self._json("GET", "/clm/jobs", query={**filters, "limit": limit,
                                                     "cursor": cursor})
        return Page([Job.from_dict(j) for j in doc["items"]], doc.get("next_cursor"))

    def wait_job(self, job_id: str, *, timeout_s: float = 600.0,
                 poll_s: float = 0.5) -> Job:
        """Poll the job until it succeeded, failed or was cancelled (JobTimeout after
        `timeout_s`; the job goes on)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job.finished:
                return job
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} still {job.status} after {timeout_s}s")
            self._sleep(poll_s)

    def train_and_wait(self, model_type: str, symbol: str, timeframe: str,
                       dataset_span_days: int, *, timeout_s: float = 600.0,
                       poll_s: float = 0.5, **kw: Any) -> Job:
        """`train` then `wait_job`: the finished job (its `version` set when it
        registered one; check `status`)."""
        job = self.train(model_type, symbol, timeframe, dataset_span_days, **kw)
        return self.wait_job(job.job_id, timeout_s=timeout_s, poll_s=poll_s)

    # ------------------------------------------------------------------ registry
    def versions(self, *, limit: int | None = None, cursor: str | None = None,
                 **filters: Any) -> Page[Version]:
        """GET /clm/models: one page, newest first (filters: model_id, model_type,
        symbol, timeframe, status, regime, min_sharpe, created_after, created_before)."""
        doc = self._json("GET", "/clm/models", query={**filters, "limit": limit,
                                                       "cursor": cursor})
        return Page([Version.from_dict(v) for v in doc["items"]], doc.get("next_cursor"))

    def iter_versions(self, *, page_size: int = 100, **filters: Any) -> Iterator[Version]:
        """Every matching version, following the cursors."""
        cursor = None
        while True:
            page = self.versions(limit=page_size, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def version(self, model_id: str, version: str) -> Version:
        """GET /clm/models/{model_id}/versions/{version} (with its status history)."""
        return Version.from_dict(self._json(
            "GET", f"/clm/models/{self._quote(model_id)}/versions/{self._quote(version)}"))

    def report(self, model_id: str, version: str) -> dict[str, Any]:
        """GET …/report: attributions, calibration, by_regime, by_period, trades."""
        doc: dict[str, Any] = self._json(
            "GET", f"/clm/models/{self._quote(model_id)}/versions/"
                   f"{self._quote(version)}/report")
        return doc

    def promote(self, model_id: str, version: str, *, reason: str, promoted_by: str,
                force: bool = False) -> dict[str, Any]:
        """POST /clm/promote (role admin): {"model_id", "production" (the version),
        "retired", "noop"}."""
        result: dict[str, Any] = self._json("POST", "/clm/promote", body={
            "model_id": model_id, "version": version, "reason": reason,
            "promoted_by": promoted_by, "force": force})
        return result

    def rollback(self, model_id: str, *, reason: str, rollback_by: str,
                 target_version: str | None = None) -> dict[str, Any]:
        """POST /clm/rollback (role admin)."""
        body: dict[str, Any] = {"model_id": model_id, "reason": reason,
                                "rollback_by": rollback_by}
        if target_version is not None:
            body["target_version"] = target_version
        result: dict[str, Any] = self._json("POST", "/clm/rollback", body=body)
        return result

    def serving(self, model_id: str) -> dict[str, Any]:
        """GET /clm/models/{model_id}/serving: what a consumer should run now."""
        result: dict[str, Any] = self._json(
            "GET", f"/clm/models/{self._quote(model_id)}/serving")
        return result

    def download_artifact(self, model_id: str, version: str,
                          destination: str | Path | None = None) -> bytes:
        """The version's model file, its sha256 checked against the registry's record
        (ArtifactHashMismatch otherwise); written to `destination` too when given (only
        after the check)."""
        expected = (self.version(model_id, version).artifact or {}).get("sha256")
        if not expected:
            raise ApiError(404, "Not Found", f"{model_id} {version} has no artifact")
        _, _, data = self._send(
            "GET", f"/clm/models/{self._quote(model_id)}/versions/"
                   f"{self._quote(version)}/artifact",
            headers={"Accept": "application/octet-stream"})
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactHashMismatch(
                f"{model_id} {version}: downloaded sha256 {actual}, registry has {expected}")
        if destination is not None:
            Path(destination).write_bytes(data)
        return data


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(float(header), 0.0) if header else default
    except ValueError:  # an HTTP date: not worth parsing for a bounded retry
        return default
