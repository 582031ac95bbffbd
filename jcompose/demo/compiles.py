"""Counts the programs JAX traces for compilation in this process (the demo shows it per request).

JAX reports each trace of a jitted function for a new signature as a `/jax/core/compile/jaxpr_trace_duration`
event; a request whose programs are all in the jit caches reports none (the persistent compilation cache
on disk does not hide a trace, so a count of zero means nothing was rebuilt)."""

from __future__ import annotations

import threading

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"

_lock = threading.Lock()
_count = [0]
_registered = [False]


def _listen(event: str, seconds: float, **_) -> None:
    if event == TRACE_EVENT:
        with _lock:
            _count[0] += 1


def start() -> None:
    """Registers the listener once per process."""
    from jax import monitoring

    with _lock:
        if not _registered[0]:
            monitoring.register_event_duration_secs_listener(_listen)
            _registered[0] = True


def count() -> int:
    """Programs traced since `start()`."""
    with _lock:
        return _count[0]
