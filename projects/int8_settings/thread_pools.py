"""Why every package session stops spinning when a run ends (issue 18, the A0 batch-1 gap).

The benchmark times its fp32 and int8 ONNX Runtime sessions in turns, in one process. With
ONNX Runtime's default, a session's worker threads keep spinning after a run, waiting for
the next one; on a 2-core machine the idle session's spinning pool then steals cores from
the one being timed. This study times RepVGG-A0 (folded, random weights; int8 as the
benchmark's ``onnxruntime-int8`` makes it) three ways:

- ``alone``: each session alone in its own process (what a deployed model sees), the
  processes alternating fp32 / int8;
- ``in turns, default``: both sessions in one process, timed in interleaved rounds, with
  ONNX Runtime's default threads (per-session pools that keep spinning);
- ``in turns, stop spinning``: the same with ``session.force_spinning_stop=1``, the
  setting of :func:`mmrepvgg.deploy.onnx.create_session`.

Timing as the benchmark's loop does it (:func:`mmrepvgg.utils.timing.time_interleaved`):
a round is ``--calls`` calls back to back, timed as a whole. Per mode: the median ms per
call of each model over the rounds, and the int8 speed-up (fp32 / int8 of the same round;
``alone``: of the same round index), median and min-max over rounds.

Usage::

    PYTHONPATH=$PWD python projects/int8_settings/thread_pools.py --batch 1 --out tp.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _session(path: str, threads: int, stop_spinning: bool):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if stop_spinning:
        opts.add_session_config_entry('session.force_spinning_stop', '1')
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def _round_ms(session, x: np.ndarray, calls: int) -> float:
    """ms per call over ``calls`` calls back to back."""
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, {name: x})
    return 1000 * (time.perf_counter() - start) / calls


def _input(batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def _alone(path: str, batch: int, threads: int, rounds: int, calls: int) -> list[float]:
    """ms per call in each round of one session alone in this process."""
    session = _session(path, threads, stop_spinning=False)
    x = _input(batch)
    _round_ms(session, x, 3)
    return [_round_ms(session, x, calls) for _ in range(rounds)]


def _ratios(fp32: list[float], int8: list[float]) -> dict:
    r = [a / b for a, b in zip(fp32, int8)]
    return dict(fp32_ms=statistics.median(fp32), int8_ms=statistics.median(int8),
                speedup=statistics.median(r), speedup_min=min(r), speedup_max=max(r))


def measure(paths: dict, batch: int, threads: int, rounds: int, calls: int) -> dict:
    """The three ways of timing ``paths['fp32']`` against ``paths['int8']``."""
    results = {}
    per = {}
    for key in ('fp32', 'int8'):  # alone: each model in a fresh process
        cmd = [sys.executable, __file__, '--alone', paths[key], '--batch', str(batch),
               '--threads', str(threads), '--rounds', str(rounds), '--calls', str(calls)]
        per[key] = json.loads(subprocess.check_output(cmd, text=True).splitlines()[-1])
    results['alone'] = _ratios(per['fp32'], per['int8'])
    x = _input(batch)
    for mode, stop in (('in turns, default', False), ('in turns, stop spinning', True)):
        sessions = {k: _session(p, threads, stop) for k, p in paths.items()}
        for s in sessions.values():
            _round_ms(s, x, 3)
        per = {'fp32': [], 'int8': []}
        for _ in range(rounds):
            for key, s in sessions.items():
                per[key].append(_round_ms(s, x, calls))
        results[mode] = _ratios(per['fp32'], per['int8'])
        del sessions
    return results


def export_a0(tmp: str, batch: int) -> dict:
    import onnx
    import torch

    from projects.benchmark.models import build_from_spec
    from mmrepvgg.deploy.build import TensorForward
    from mmrepvgg.deploy.onnx import export_module
    from mmrepvgg.deploy.quantize import quantize_for_timing
    torch.manual_seed(0)
    module = TensorForward(build_from_spec('A0', deploy=True).model).eval()
    example = torch.from_numpy(_input(1))
    fp32 = export_module(module, example, 'dynamo', dynamic_batch=True)
    paths = dict(fp32=os.path.join(tmp, 'a0_fp32.onnx'), int8=os.path.join(tmp, 'a0_int8.onnx'))
    onnx.save(fp32, paths['fp32'])
    onnx.save(quantize_for_timing(fp32, example.numpy()), paths['int8'])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--calls', type=int, default=10, help='timed calls per round (the '
                        'int8 goal table: 10 at batch 1, 3 at batch 8)')
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument('--alone', help=argparse.SUPPRESS)  # internal: one session, print ms
    args = parser.parse_args()
    if args.alone:
        print(json.dumps(_alone(args.alone, args.batch, args.threads, args.rounds, args.calls)))
        return
    with tempfile.TemporaryDirectory(prefix='thread-pools-') as tmp:
        results = measure(export_a0(tmp, args.batch), args.batch, args.threads, args.rounds,
                          args.calls)
    print(f'RepVGG-A0, batch {args.batch}, {args.threads} ONNX Runtime threads, '
          f'{args.rounds} rounds of {args.calls} calls\n')
    print('| how the sessions run | fp32 ms | int8 ms | int8 speed-up: median (min-max) |')
    print('|---|---|---|---|')
    for mode, r in results.items():
        print(f'| {mode} | {r["fp32_ms"]:.2f} | {r["int8_ms"]:.2f} | **{r["speedup"]:.2f}x** '
              f'({r["speedup_min"]:.2f}-{r["speedup_max"]:.2f}) |')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(vars(args), results=results), f, indent=1)


if __name__ == '__main__':
    main()
