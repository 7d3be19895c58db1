"""How a compiled OpenVINO model runs one call's chunks: the runner functions :mod:`birdinfer.runtime.models` returns.

Three ways, chosen when the model is loaded (:func:`request_plan`):

* **one request** (``PERFORMANCE_HINT=LATENCY``): the whole call in one inference on every thread;
* **split** (a model exported for a fixed chunk count, e.g. the 4th place's 6 chunks): the count cut into one
  equal part per stream, every part started before any is awaited;
* **small requests** (a model whose batch axis is free and whose rows are independent windows: feature models
  and probes, not sequence models nor models with several inputs): the graph reshaped to a static batch of
  ``request_chunks`` rows, the call cut into such requests, ``2 × streams`` of them in flight over the
  streams; the last request is filled up with copies of its last row, whose outputs are dropped.

Small static requests over single-threaded streams were measured faster than one 2-thread request for the whole
call on every convolutional network tried (benchmarks/request_size.py, 2 cores, 12 chunks of 5 s): a static
shape lets OpenVINO pick its kernels for that shape, and a request of 2 windows keeps a layer's activations
in the core's cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Rows per request for models with a free batch axis (see the module docstring); ``load_models(request_chunks=)``.
REQUEST_CHUNKS = 2


@dataclass(frozen=True)
class RequestPlan:
    """``mode``: "one", "split" (``fixed // streams`` rows per request) or "small" (``rows`` per request)."""

    mode: str
    streams: int
    rows: int | None = None

    def describe(self) -> str:
        if self.mode == "one":
            return "one request per call"
        return f"requests of {self.rows} row(s) over {self.streams} stream(s)"


def rows_independent(entry) -> bool:
    """Whether the model's batch axis holds independent windows (so a call may be cut anywhere)."""
    inputs = getattr(entry, "inputs", ())
    if len(inputs) > 1 or any(getattr(s, "sequence", False) or getattr(s, "ids", None) is not None for s in inputs):
        return False
    return True


def request_plan(entry, streams: int, request_chunks: int | None) -> RequestPlan:
    """How ``entry`` runs with ``streams`` single-threaded streams (1: one request on every thread)."""
    fixed = entry.batch_chunks
    if streams <= 1:
        return RequestPlan("one", 1)
    if fixed is not None:
        if fixed % streams == 0 and fixed > 1:
            return RequestPlan("split", streams, fixed // streams)
        return RequestPlan("one", 1)
    if request_chunks and rows_independent(entry):
        return RequestPlan("small", streams, int(request_chunks))
    return RequestPlan("one", 1)


def reshape_batch(model, rows: int) -> None:
    """Give ``model``'s first input a static batch of ``rows`` (other axes as the graph has them)."""
    port = model.input(0)
    shape = port.get_partial_shape()
    shape[0] = rows
    model.reshape({port: shape})


def make_runner(compiled, entry, plan: RequestPlan, kernels: dict):
    """The runner for one compiled model: ``x`` → the output array, or a list of arrays (one per
    ``entry.named_outputs`` index, manifest version 2); a model with several inputs takes a list of arrays."""
    named = getattr(entry, "named_outputs", None)
    ports = [compiled.output(i) for i in named] if named is not None else [compiled.output(0)]
    requests = [compiled.create_infer_request() for _ in range(plan.streams * (2 if plan.mode == "small" else 1))]

    def collect(r) -> list[np.ndarray]:
        return [np.array(r.get_tensor(port).data, dtype=np.float32, copy=True) for port in ports]

    def result(outs: list[np.ndarray]):
        return outs if named is not None else outs[0]

    sources = getattr(entry, "sources", ())
    if named is not None and sources:  # several inputs (spec.dag_inputs): one array per source, by name or position
        inputs = [compiled.input(s.name) if s.name else compiled.input(i) for i, s in enumerate(sources)]

        def run_several(xs: list) -> list[np.ndarray]:
            requests[0].infer(dict(zip(inputs, xs)))
            return collect(requests[0])

        return _mark(run_several, RequestPlan("one", 1), kernels)
    name = getattr(entry, "input_name", None) if named is not None else None
    port = compiled.input(name) if name else compiled.input(0)

    if plan.mode == "one":
        def run(x: np.ndarray):
            requests[0].infer({port: x})
            return result(collect(requests[0]))
    elif plan.mode == "split":
        def run(x: np.ndarray):
            for i, r in enumerate(requests):  # all parts start before any is awaited: they run at once
                r.start_async({port: np.ascontiguousarray(x[i * plan.rows : (i + 1) * plan.rows])})
            for r in requests:
                r.wait()
            parts = [collect(r) for r in requests]
            return result([np.concatenate([p[i] for p in parts]) for i in range(len(ports))])
    else:
        def run(x: np.ndarray):
            return result(_small_requests(requests, port, collect, x, plan.rows))
    return _mark(run, plan, kernels)


def _small_requests(requests, port, collect, x: np.ndarray, rows: int) -> list[np.ndarray]:
    """``x`` cut into requests of ``rows`` rows (the last one filled up with copies of its last row), up to
    ``len(requests)`` in flight; the outputs in order, without the filling."""
    n = x.shape[0]
    parts = max(1, -(-n // rows))
    if parts * rows != n:
        last = x[-1:] if n else np.zeros((1,) + x.shape[1:], np.float32)
        x = np.concatenate([x, np.repeat(last, parts * rows - n, axis=0)])
    k = len(requests)
    done: list[list[np.ndarray] | None] = [None] * parts
    for i in range(parts):
        r = requests[i % k]
        if i >= k:  # this request still holds part i - k: wait for it and keep its outputs first
            r.wait()
            done[i - k] = collect(r)
        r.start_async({port: np.ascontiguousarray(x[i * rows : (i + 1) * rows])})
    for i in range(max(0, parts - k), parts):
        r = requests[i % k]
        r.wait()
        done[i] = collect(r)
    return [np.concatenate([d[j] for d in done])[:n] for j in range(len(done[0]))]


def _mark(run, plan: RequestPlan, kernels: dict):
    run.streams = plan.streams
    run.request_plan = plan
    run.kernels = kernels
    return run
