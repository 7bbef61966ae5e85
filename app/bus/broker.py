"""Broker facts the app needs without importing Celery: transport options, ping, queue depths.

The embedded default is kombu's filesystem transport under `var/broker/` (server-less, and
unlike the SQLAlchemy transport it keeps Celery's task events and remote control working,
so Flower and `celery inspect` see the workers). `CLM_BROKER_URL=redis://…` switches to Redis.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from app.core.config import Settings

# Work queues, by step kind. Routing lives in workers/celery_app.py.
WORK_QUEUES = ("data", "train", "evaluate", "default")


def _install_atomic_filesystem_put() -> None:
    """Make kombu's filesystem transport publish atomically.

    kombu (<= 5.7) creates the message file under its final name and then writes it, so
    a consumer polling the folder can take the file while it is still empty and die on
    the JSON ("Unrecoverable error: JSONDecodeError"), losing the message. With several
    workers polling every 0.1 s that is not rare. Here the message is written under a
    hidden temporary name (which `_get` never matches: it wants `<id>.<queue>.msg`) and
    renamed into place, so readers only ever see complete files.
    """
    import uuid
    from time import monotonic_ns

    from kombu.exceptions import ChannelError
    from kombu.transport import filesystem
    from kombu.utils.encoding import str_to_bytes
    from kombu.utils.json import dumps

    if getattr(filesystem.Channel, "_clm_atomic_put", False):
        return

    def _put(self: Any, queue: str, payload: Any, **kwargs: Any) -> None:
        # Fixed-width nanoseconds: consumers take files in sorted name order, so this
        # keeps FIFO order even for messages published within one millisecond (kombu's
        # millisecond stamp leaves those to the uuid's random order).
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temp = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    filesystem.Channel._put = _put
    filesystem.Channel._clm_atomic_put = True


_install_atomic_filesystem_put()


def filesystem_folder(settings: Settings) -> Path:
    return settings.var_dir / "broker"


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        root = filesystem_folder(settings)
        for sub in ("queue", "control", "processed"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "processed_folder": str(root / "processed"),
            "store_processed": False,
            # kombu polls the folder; its 1 s default adds up to a second to every
            # hand-over between pipeline steps. Listing a small folder is cheap.
            "polling_interval": 0.1,
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Must exceed the longest task: an unacked task is redelivered after this, and
        # the job lease (not the broker) decides whether the work is really lost.
        return {"visibility_timeout": settings.broker_visibility_timeout_s}
    return {}


def ping_broker(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the broker accepts a connection within `timeout` seconds."""
    if settings.is_embedded_broker:
        folder = filesystem_folder(settings) / "queue"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(folder, os.W_OK)
    from kombu import Connection

    try:
        with Connection(
            settings.broker_url,
            transport_options=transport_options(settings),
            connect_timeout=timeout,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False


def queue_depths(
    settings: Settings, queues: tuple[str, ...] = WORK_QUEUES
) -> dict[str, int | None]:
    """Messages waiting per work queue (None when the broker cannot be asked)."""
    if settings.is_embedded_broker:
        folder = filesystem_folder(settings) / "queue"
        depths: dict[str, int | None] = {q: 0 for q in queues}
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return depths  # no message was ever sent: every queue is empty
        except OSError:
            return {q: None for q in queues}
        for name in names:
            queue = name.partition(".")[2].removesuffix(".msg")
            if queue in depths:
                depths[queue] = (depths[queue] or 0) + 1
        return depths
    if settings.broker_url.startswith(("redis://", "rediss://")):
        try:
            import redis

            client = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
            # Celery's Redis transport keeps each priority band in its own list.
            result: dict[str, int | None] = {}
            for q in queues:
                total = 0
                for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169"):
                    total += int(client.llen(q + suffix))
                result[q] = total
            return result
        except Exception:
            return {q: None for q in queues}
    return {q: None for q in queues}
