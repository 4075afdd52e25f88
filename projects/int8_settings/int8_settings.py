"""Which ONNX Runtime int8 settings make folded RepVGG fastest on this CPU? (a study, not the package)

For a folded RepVGG classifier (random weights: speed does not depend on the values) it
exports fp32 ONNX with the dynamo and the TorchScript exporter, quantizes it statically in
several settings, and for every int8 file

1. checks the graph ONNX Runtime actually runs (``SessionOptions.optimized_model_filepath``):
   how many convolutions run as integer convs (``QLinearConv`` / ``ConvInteger``, any
   domain) and how many stay float (``Conv`` / ``FusedConv`` in any domain, NCHWc
   included);
2. times fp32 and every int8 variant **interleaved in one process** (round r of every
   session, then round r+1, ..., the order rotated every round), batch 1 and 8, and reports
   per variant the median fp32/int8 ratio over the rounds (ratio of the same round) and its
   spread (min-max).

Settings (one factor changed at a time from the first row, plus the TorchScript rows):
activations int8 (S8S8) or uint8 (U8S8); weights per-channel or per-tensor;
``quant_pre_process`` on or off; QDQ or QOperator format; dynamo or TorchScript exporter.

Run (about 3 min for A0, 5 for B0 on 2 cores)::

    PYTHONPATH=$PWD python projects/int8_settings/int8_settings.py --arch A0 B0 \\
        --threads 2 --rounds 7 --out projects/int8_settings/results.json
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization as q

from mmrepvgg import reparameterize
from mmrepvgg.models import RepVGG

#: name -> (exporter, pre_process, format, activation type, per_channel); S8sym: int8
#: activations with a zero zero-point (``extra_options=dict(ActivationSymmetric=True)``)
VARIANTS = {
    'dynamo QDQ S8S8 per-channel pre': ('dynamo', True, 'QDQ', 'S8', True),
    'dynamo QDQ S8S8-symmetric per-channel pre': ('dynamo', True, 'QDQ', 'S8sym', True),
    'dynamo QDQ U8S8 per-channel pre': ('dynamo', True, 'QDQ', 'U8', True),
    'dynamo QDQ S8S8 per-tensor pre': ('dynamo', True, 'QDQ', 'S8', False),
    'dynamo QDQ U8S8 per-tensor pre': ('dynamo', True, 'QDQ', 'U8', False),
    'dynamo QDQ S8S8 per-channel no-pre': ('dynamo', False, 'QDQ', 'S8', True),
    'dynamo QOperator S8S8 per-channel pre': ('dynamo', True, 'QOperator', 'S8', True),
    'dynamo QOperator U8S8 per-channel pre': ('dynamo', True, 'QOperator', 'U8', True),
    'torchscript QDQ S8S8 per-channel pre': ('torchscript', True, 'QDQ', 'S8', True),
    'torchscript QDQ S8S8 per-channel no-pre': ('torchscript', False, 'QDQ', 'S8', True),
}
INTEGER_CONVS = ('QLinearConv', 'ConvInteger')
FLOAT_CONVS = ('Conv', 'FusedConv')


class Classifier(torch.nn.Module):
    """Folded RepVGG + global average pool + linear: the deployed ImageNet classifier."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.backbone = RepVGG(arch=arch)
        self.fc = torch.nn.Linear(self.backbone.out_channels[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The folded model and its input size: an arch name (a classifier at 224) or
    ``CONFIG.py@SIZE`` (a segmentor config, e.g. PSPNet at 713)."""
    torch.manual_seed(0)
    if '@' not in name:
        return reparameterize(Classifier(name).eval()), 224
    from mmengine.config import Config
    from mmrepvgg.deploy import TensorForward, build_model
    path, size = name.split('@')
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    for key in ('backbone', 'decode_head', 'auxiliary_head'):
        if cfg.model.get(key) and 'norm_cfg' in cfg.model[key]:
            cfg.model[key].norm_cfg = dict(type='BN', requires_grad=True)
    return TensorForward(reparameterize(build_model(cfg).eval())).eval(), int(size)


def export(model: torch.nn.Module, path: str, exporter: str, size: int) -> None:
    """fp32 ONNX with a dynamic batch axis."""
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        if exporter == 'dynamo':
            prog = torch.onnx.export(model, (x, ), dynamo=True, input_names=['input'],
                                     output_names=['logits'], opset_version=18,
                                     dynamic_shapes=({0: torch.export.Dim('batch')}, ),
                                     external_data=False, verbose=False)
            onnx.save(prog.model_proto, path)
        else:
            torch.onnx.export(model, (x, ), path, dynamo=False, input_names=['input'],
                              output_names=['logits'], opset_version=17,
                              dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})


class Reader(q.CalibrationDataReader):
    """Random calibration batches (speed only; accuracy needs real images)."""

    def __init__(self, size: int, n: int = 8) -> None:
        gen = np.random.default_rng(0)
        self.data = iter([{'input': gen.standard_normal((1, 3, size, size)).astype(np.float32)}
                          for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def quantize(src: str, dst: str, fmt: str, act: str, per_channel: bool, size: int) -> str:
    """``quantize_static`` with ONNX Runtime's log lines captured; returns them."""
    log = io.StringIO()
    handler = logging.StreamHandler(log)  # the quantizer warns through the logging module
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            q.quantize_static(src, dst, Reader(size), quant_format=getattr(q.QuantFormat, fmt),
                              activation_type=(q.QuantType.QUInt8 if act == 'U8'
                                               else q.QuantType.QInt8),
                              weight_type=q.QuantType.QInt8, per_channel=per_channel,
                              calibrate_method=q.CalibrationMethod.MinMax,
                              extra_options=dict(ActivationSymmetric=act == 'S8sym'))
    finally:
        logging.getLogger().removeHandler(handler)
    return log.getvalue()


def session(path: str, threads: int, optimized: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def executed_convs(path: str, threads: int, tmp: str) -> dict:
    """Integer and float convs in the graph ONNX Runtime optimized for this CPU."""
    opt = os.path.join(tmp, 'optimized_' + os.path.basename(path))
    session(path, threads, opt)
    ops = collections.Counter((n.domain or 'ai.onnx', n.op_type)
                              for n in onnx.load(opt).graph.node)
    integer = sum(v for (d, t), v in ops.items() if t in INTEGER_CONVS)
    floating = sum(v for (d, t), v in ops.items() if t in FLOAT_CONVS)
    return dict(integer_convs=integer, float_convs=floating,
                ops={f'{d}.{t}': v for (d, t), v in sorted(ops.items())})


def time_interleaved(sessions: dict, x: np.ndarray, rounds: int, seconds: float) -> dict:
    """Seconds per run of every session: rounds interleaved, order rotated every round."""
    names = list(sessions)
    feeds = {n: {sessions[n].get_inputs()[0].name: x} for n in names}
    for n in names:  # warm-up, and one run each to size the rounds
        for _ in range(2):
            sessions[n].run(None, feeds[n])
    t0 = time.perf_counter()
    sessions[names[0]].run(None, feeds[names[0]])
    slowest = time.perf_counter() - t0
    iters = max(2, int(seconds / max(slowest, 1e-4)))
    per = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            start = time.perf_counter()
            for _ in range(iters):
                sessions[n].run(None, feeds[n])
            per[n].append((time.perf_counter() - start) / iters)
    return dict(iters=iters, seconds=per)


def cpu_model() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
        return next(line.split(':', 1)[1].strip() for line in out.splitlines()
                    if line.startswith('Model name'))
    return platform.processor()


def study(arch: str, threads: int, rounds: int, batches: list[int], seconds: float,
          variants: list[str]) -> dict:
    model, size = build(arch)
    out = dict(arch=arch, size=size, variants={}, timing={})
    exporters = sorted({VARIANTS[v][0] for v in variants})
    with tempfile.TemporaryDirectory(prefix='int8-settings-') as tmp:
        fp32 = {}
        for exporter in exporters:
            fp32[exporter] = os.path.join(tmp, f'{exporter}.onnx')
            export(model, fp32[exporter], exporter, size)
            pre = os.path.join(tmp, f'{exporter}_pre.onnx')
            q.quant_pre_process(fp32[exporter], pre)
            fp32[exporter + '_pre'] = pre
        files = {}
        for name in variants:
            exporter, pre, fmt, act, pc = VARIANTS[name]
            dst = os.path.join(tmp, name.replace(' ', '_') + '.onnx')
            log = quantize(fp32[exporter + ('_pre' if pre else '')], dst, fmt, act, pc, size)
            files[name] = dst
            nodes = collections.Counter(n.op_type for n in onnx.load(dst).graph.node)
            out['variants'][name] = dict(
                exporter=exporter, pre_process=pre, format=fmt, activations=act,
                per_channel=pc, quantizer_warnings=sorted({line.strip() for line in
                                                           log.splitlines()
                                                           if 'Expected bias' in line})[:2],
                graph_convs=nodes.get('Conv', 0) + nodes.get('QLinearConv', 0),
                executed=executed_convs(dst, threads, tmp))
            ex = out['variants'][name]['executed']
            print(f'{arch} {name}: {ex["integer_convs"]} integer convs, {ex["float_convs"]} '
                  'float convs in the optimized graph', flush=True)
        sessions = {f'fp32 {e}': session(fp32[e], threads) for e in exporters}
        sessions.update({n: session(p, threads) for n, p in files.items()})
        for batch in batches:
            x = np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(
                np.float32)
            t = time_interleaved(sessions, x, rounds, seconds)
            rows = {}
            for name in sessions:
                base = t['seconds'][f'fp32 {VARIANTS[name][0]}' if name in VARIANTS
                                    else name]
                ratios = [b / s for b, s in zip(base, t['seconds'][name])]
                rows[name] = dict(ms_median=1e3 * statistics.median(t['seconds'][name]),
                                  ms_rounds=[1e3 * s for s in t['seconds'][name]],
                                  ratio_median=statistics.median(ratios),
                                  ratio_min=min(ratios), ratio_max=max(ratios))
                print(f'{arch} batch {batch} {name}: {rows[name]["ms_median"]:.1f} ms, '
                      f'fp32/int8 {rows[name]["ratio_median"]:.2f}x '
                      f'({rows[name]["ratio_min"]:.2f}-{rows[name]["ratio_max"]:.2f})',
                      flush=True)
            out['timing'][str(batch)] = dict(iters=t['iters'], rows=rows)
    return out


def markdown(result: dict) -> str:
    lines = [f'Device: {result["cpu"]}, {result["threads"]} ONNX Runtime threads, '
             f'onnxruntime {result["onnxruntime"]}, torch {result["torch"]}, '
             f'{result["rounds"]} interleaved rounds; ratio = fp32 (same exporter) / int8 '
             'time in the same round, median (min-max over rounds).', '']
    for model in result['models']:
        batches = list(model['timing'])
        lines += [f'### {model["arch"]} ({model["size"]}x{model["size"]})', '',
                  '| setting | integer / float convs run | ' + ' | '.join(
                      f'batch {b} ms | batch {b} fp32/int8' for b in batches) + ' |',
                  '|---|---|' + '---|---|' * len(batches)]
        for name in model['timing'][batches[0]]['rows']:
            ex = model['variants'].get(name, {}).get('executed')
            convs = f'{ex["integer_convs"]} / {ex["float_convs"]}' if ex else 'fp32'
            cells = []
            for b in batches:
                r = model['timing'][b]['rows'][name]
                cells.append(f'{r["ms_median"]:.1f} | {r["ratio_median"]:.2f}x '
                             f'({r["ratio_min"]:.2f}-{r["ratio_max"]:.2f})')
            lines.append(f'| {name} | {convs} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', nargs='+', default=['A0', 'B0'],
                        help='arch names (classifiers at 224) or CONFIG.py@SIZE (segmentors)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                        metavar='VARIANT', help='settings to compare (default: all)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--round-seconds', type=float, default=0.5)
    parser.add_argument('--out', help='json file (a .md beside it)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = dict(command=' '.join(['python'] + sys.argv), cpu=cpu_model(),
                  threads=args.threads, rounds=args.rounds, onnxruntime=ort.__version__,
                  torch=torch.__version__, onnx=onnx.__version__,
                  started=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                  models=[study(a, args.threads, args.rounds, args.batch, args.round_seconds,
                                args.variants) for a in args.arch])
    text = markdown(result)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
            f.write(f'Generated by `{result["command"]}` ({result["started"]}).\n\n' + text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
