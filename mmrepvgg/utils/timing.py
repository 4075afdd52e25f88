"""The one interleaved timing loop (benchmark, ONNX Runtime sessions, the weight swap)."""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from mmengine.logging import print_log


def time_interleaved(runs: Mapping[str, Callable[[], Any]]
                     | Sequence[tuple[str, Callable[[], Any]]], iters: int, rounds: int = 1,
                     warmup: int = 1, examples: int = 1, sync: Callable[[], None] | None = None,
                     log: str | None = 'benchmark') -> list[list[float]]:
    """Time callables in interleaved rounds, the one timing loop of the benchmark tools.

    Each callable runs one batch (``fn()``, its result ignored): a model on its input
    (:func:`make_runner`), an ONNX Runtime session, anything. First ``warmup`` untimed calls
    of each (at least one: a compiled or cuDNN-autotuned model's first call is not timed).
    Then ``rounds`` rounds; in each, every callable makes ``iters`` calls back to back,
    timed with ``time.perf_counter`` between two ``sync()``. The order is rotated by one each
    round (a, b, c; then b, c, a; ...), so a noisy machine slows them all alike and none always
    runs first.

    Args:
        runs: ``{label: fn}`` or ``[(label, fn)]`` (labels name them in the log only, and
            may repeat in a list).
        iters: Timed calls per callable and round.
        rounds: Timed rounds.
        warmup: Untimed calls of each before the first round (at least 1).
        examples: Examples per call (the batch size): the rates are examples/s; 1 gives
            calls/s.
        sync: Waits for the device's queued work (:func:`device_sync`; ``None``: nothing
            to wait for).
        log: Prefix of the progress lines (``print_log``); ``None``: silent.

    Returns:
        For each callable, in the order given, its examples/s in each round (round order).
        The speed is the median round (``statistics.median``), the best round the max;
        ratios of two callables are best taken per round (they ran back to back).
    """
    items = list(runs.items() if isinstance(runs, Mapping) else runs)
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], Any], calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return time.perf_counter() - start

    for label, fn in items:
        if log:
            print_log(f'{log}: warm-up {label} x{max(warmup, 1)}', logger='current')
        timed(fn, max(warmup, 1))
    n = len(items)
    rates: list[list[float]] = [[] for _ in items]
    for r in range(rounds):
        for i in [(r + k) % n for k in range(n)]:
            label, fn = items[i]
            rates[i].append(examples * iters / timed(fn, iters))
            if log:
                print_log(f'{log}: round {r + 1}/{rounds} {label}: {rates[i][-1]:.2f} '
                          'examples/s', logger='current')
    return rates
