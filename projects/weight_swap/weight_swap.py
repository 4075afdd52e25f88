"""Does a speed gap between two implementations follow the code or the weight values?

Ours and a peer (:mod:`projects.benchmark.peers`) of one arch are deployed, then each is also
given the other's weights (:func:`~projects.benchmark.peers.copy_weights`, outputs checked equal
to the model whose weights it took). The four models are timed interleaved with the
benchmark's own loop (:func:`mmrepvgg.utils.timing.time_interleaved`: warm-up, then
rounds in an order rotated each round, median round):

- ``ours`` and ``<peer>``: each with its own random initialization (what ``--peer-weights
  own`` times);
- ``ours, <peer> weights`` and ``<peer>, our weights``: the weights swapped.

If the code made the difference, a model would keep its speed with the other's weights; if
the values do (a GPU's clock and power depend on the data), the speed moves with the weights.
On an H200 it moved with the weights (docs/gpu/h200-2026-11-26-run2/README.md), which is why
``tools/benchmark.py --peers`` shares our weights with every peer.
"""
from __future__ import annotations

import copy
import datetime
import statistics
from typing import Sequence

from mmengine.logging import print_log
from torch import nn

from mmrepvgg.deploy.build import TensorForward
from mmrepvgg.utils.timing import time_interleaved
from projects.benchmark.benchmark import BenchmarkSettings
from projects.benchmark.device import (backend_supported, cudnn_benchmark, device_info,
                                       device_sync, float32_precision, precision_label,
                                       resolve_device, tf32_state)
from projects.benchmark.models import example_input
from projects.benchmark.peers import check_same_outputs, copy_weights, parse_peer
from projects.benchmark.report import device_line
from projects.benchmark.runners import make_runner
from projects.benchmark.variants import prepare_variants

#: Ratios reported per arch: name -> (numerator, denominator) among the four models, with
#: ``{p}`` the peer's source.
SWAP_RATIOS = {
    'ours / {p}, own weights': ('ours', '{p}'),
    'ours / {p}, both with {p} weights': ('ours, {p} weights', '{p}'),
    'ours / {p}, both with our weights': ('ours', '{p}, our weights'),
    'ours: {p} weights / our weights': ('ours, {p} weights', 'ours'),
    '{p}: {p} weights / our weights': ('{p}', '{p}, our weights'),
}


def feature_part(model: nn.Module, source: str) -> nn.Module:
    """The backbone of a deployed classifier (stem and stages, no pooling or head).

    Args:
        model: A classifier (a ``TensorForward`` is unwrapped).
        source: ``'mmrepvgg'``, ``'timm'`` or ``'mmpretrain'``.
    """
    model = model.model if isinstance(model, TensorForward) else model
    if source == 'timm':
        return nn.Sequential(model.stem, model.stages).eval()
    return model.backbone.eval()


def _build_four(arch: str, source: str, num_classes: int,
                check_shape: tuple[int, int]) -> tuple[dict[str, nn.Module], dict[str, float]]:
    ours, peer = (prepare_variants(spec, ('deploy', ), num_classes)[0].module
                  for spec in (arch, f'{source}:{arch}'))
    ours_pw, peer_ow = copy.deepcopy(ours), copy.deepcopy(peer)
    copy_weights(peer, ours_pw, source, 'mmrepvgg')
    copy_weights(ours, peer_ow, 'mmrepvgg', source)
    checks = {
        f'ours, {source} weights': check_same_outputs(peer, ours_pw, check_shape,
                                                      what=f'ours with {source} weights'),
        f'{source}, our weights': check_same_outputs(ours, peer_ow, check_shape,
                                                     what=f'{source} with our weights'),
    }
    models = {'ours': ours, source: peer, f'ours, {source} weights': ours_pw,
              f'{source}, our weights': peer_ow}
    return models, checks


def weight_swap_benchmark(archs: Sequence[str], source: str = 'timm',
                          settings: BenchmarkSettings | None = None,
                          backbone: bool = False) -> dict:
    """Time ours and a peer, each with its own and with the other's deployed weights.

    Args:
        archs: RepVGG archs (``'B2'``); each is timed in its own interleaved group of four.
        source: The peer library, ``'timm'`` or ``'mmpretrain'``.
        settings: Device (checked before anything is built), dtype, batch (default 128),
            shape (default 224x224), warm-up (default 10) and timed batches (default 30)
            per model, interleaved rounds (order rotated each round; the median counts),
            classes and ``cudnn.benchmark``, as the benchmark takes them; the rest is unused.
        backbone: Time the backbones only (stem and stages), as the H200 diagnostic did.

    Returns:
        ``dict(device_info, protocol, archs=[dict(arch, speeds, best, rounds, ratios,
        checks)], date)``; speeds in examples/s (median round), ratios the median over rounds
        of the per-round ratio.

    Raises:
        KeyError: An arch the peer library does not have.
        ValueError: A device that is not there, a precision it cannot run, or a swap whose
            outputs differ.
    """
    st = settings or BenchmarkSettings()
    dev = resolve_device(st.device)
    dtype, batch, rounds = st.dtype, st.batch or 128, st.rounds
    shape = tuple(st.shape or (224, 224))
    warmup = 10 if st.warmup is None else st.warmup
    iters = st.iters or 30
    ok, reason = backend_supported(dtype, dev)
    if not ok:
        raise ValueError(reason)
    for arch in archs:
        parse_peer(f'{source}:{arch}')
    proto = dict(batch=batch, shape=tuple(shape), warmup=warmup, iters=iters)
    check_shape = (min(shape[0], 64), min(shape[1], 64))
    autotune = st.cudnn_autotune and dev.type == 'cuda'
    out = []
    info = state = None
    x = example_input(tuple(shape), batch)
    for arch in archs:
        print_log(f'weight swap: building ours and {source} {arch}', logger='current')
        models, checks = _build_four(arch, source, st.num_classes, check_shape)
        if backbone:
            models = {name: feature_part(model, 'mmrepvgg' if name.startswith('ours') else source)
                      for name, model in models.items()}
        with float32_precision(dtype == 'tf32'), cudnn_benchmark(autotune):
            state, info = tf32_state(), device_info(dev)
            runs = {name: make_runner(model, x, 'eager', dev, dtype)
                    for name, model in models.items()}
            per = dict(zip(runs, time_interleaved(runs, iters, rounds, warmup, batch,
                                                  device_sync(dev))))
        ratios = {}
        for label, (num, den) in SWAP_RATIOS.items():
            a, b = per[num.format(p=source)], per[den.format(p=source)]
            ratios[label.format(p=source)] = statistics.median(u / v for u, v in zip(a, b))
        out.append(dict(arch=arch, speeds={k: statistics.median(r) for k, r in per.items()},
                        best={k: max(r) for k, r in per.items()}, rounds=per, ratios=ratios,
                        checks=checks))
        del models, runs
    protocol = dict(proto, shape=list(shape), rounds=rounds, dtype=dtype, device=dev.type,
                    precision=precision_label(dtype, state or tf32_state(), dev),
                    cudnn_benchmark=autotune, source=source,
                    part='backbone (stem and stages)' if backbone else 'classifier',
                    order='rotated each round')
    return dict(device_info=info or device_info(dev), protocol=protocol, archs=out,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))


def weight_swap_markdown(report: dict) -> str:
    """The weight-swap report as markdown: device, protocol, speeds and ratios per arch."""
    proto = report['protocol']
    source = proto['source']
    lines = [device_line(report['device_info'], report.get('date')),
             f"Protocol: {proto['part']}, batch {proto['batch']} at {proto['shape'][0]}x"
             f"{proto['shape'][1]}, {proto['precision']}, eager, cudnn.benchmark "
             f"{'on' if proto['cudnn_benchmark'] else 'off'}, {proto['warmup']} warm-up + "
             f"{proto['iters']} timed batches x {proto['rounds']} interleaved round(s) "
             '(order rotated each round), median round', '']
    names = ['ours', source, f'ours, {source} weights', f'{source}, our weights']
    head = ['Arch'] + [f'{n} (examples/s)' for n in names]
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for a in report['archs']:
        lines.append('| ' + ' | '.join([a['arch']] + [f"{a['speeds'][n]:.2f}" for n in names])
                     + ' |')
    labels = [label.format(p=source) for label in SWAP_RATIOS]
    lines += ['', 'Ratios (median over rounds of the ratio in the same round):', '',
              '| Arch | ' + ' | '.join(labels) + ' |', '|' + '---|' * (len(labels) + 1)]
    for a in report['archs']:
        lines.append('| ' + ' | '.join([a['arch']] + [f"{a['ratios'][k]:.3f}x" for k in labels])
                     + ' |')
    worst = max(v for a in report['archs'] for v in a['checks'].values())
    lines += ['', f'Each swapped model was checked against the model whose weights it took '
              f'(fp32, CPU): max rel diff {worst:.2g}.']
    return '\n'.join(lines)
