"""What the torch-based trainers (deep forecasters, RL policies) share: the device, the
thread bound, the seed, and the artifact — safetensors weights plus a JSON config.

Owns `torch_device` (CLM_DEVICE=auto|cpu|cuda), `torch_session` (threads and seeds for
one fit or predict), `pack` / `unpack` (state dict + config ↔ one safetensors file; no
pickle anywhere: the config travels in the file's string metadata, and loading rebuilds
the model from it). torch is imported lazily by the callers' modules, never by the web
process.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["DEVICE_ENV", "pack", "torch_device", "torch_session", "unpack", "unpack_for"]

DEVICE_ENV = "CLM_DEVICE"
_CONFIG_KEY = "clm_config"


def torch_device() -> Any:
    """The device CLM_DEVICE asks for: "cpu" (default off a GPU), "cuda", or "auto" (a
    GPU when torch sees one). A request for cuda without one is an error, not a silent
    fallback: the operator asked for it."""
    import torch

    wanted = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, got {wanted!r}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device")
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


@contextmanager
def torch_session(seed: int, n_threads: int) -> Iterator[Any]:
    """torch with `n_threads` intra-op threads and every generator seeded: a CPU run
    with the same data, params, seed and threads repeats bit for bit."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n_threads)))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield torch
    finally:
        torch.set_num_threads(previous)


def pack(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> bytes:
    """One safetensors file: the weights (contiguous CPU tensors) and `config` as JSON in
    the header's metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return save(tensors, metadata={_CONFIG_KEY: json.dumps(dict(config), sort_keys=True)})


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, config) of a `pack`ed file; ValueError when it is not one."""
    from safetensors.torch import load

    tensors = load(data)
    # The metadata is in the header; safe_open reads it from a file, so parse it here.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {}
    if _CONFIG_KEY not in meta:
        raise ValueError("artifact is a safetensors file without a CLM config")
    return tensors, json.loads(meta[_CONFIG_KEY])


def unpack_for(data: bytes, kind_key: str, expected: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`unpack`, refusing an artifact whose config[kind_key] is not `expected` (a model of
    another type), with torch seeded so that building the module before its weights are
    loaded draws the same (discarded) initial values every time."""
    import torch

    state, config = unpack(data)
    if config.get(kind_key) != expected:
        raise ValueError(f"artifact holds a {config.get(kind_key)!r} model, not {expected!r}")
    torch.manual_seed(0)
    return state, config
