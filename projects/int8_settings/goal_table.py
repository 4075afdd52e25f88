"""The int8 goal table of docs/int8.md from the jsons of ``bench_goals.sh`` runs.

Usage: python projects/int8_settings/goal_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds ``cls_b1.json``, ``cls_b8.json``, ``psp_b1.json``, ``psp_b8.json`` (any
subset) written by ``tools/benchmark.py --backend onnxruntime onnxruntime-int8``. One row
per model, batch and run: the median ms per batch of each backend, and the int8 speed-up
over fp32, paired by round (median, min-max over the run's rounds), with the goal of issue
18 and whether that run's median meets it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS = {'RepVGG-A0': 2.5, 'RepVGG-B0': 2.5, 'RepVGG-B1g2': 2.0, 'RepVGG-B2': 2.0,
         'pspnet_repvgg-b1g2-fast_cityscapes': 2.0}
NAMES = {'pspnet_repvgg-b1g2-fast_cityscapes': 'PSPNet-B1g2-fast (713x713)'}


def rows(run: Path, label: str) -> list[tuple]:
    out = []
    for name in ('cls_b1', 'cls_b8', 'psp_b1', 'psp_b8'):
        path = run / f'{name}.json'
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        batch = report['protocol']['batch']
        by = {(r['model'], r['backend']): r for r in report['results']}
        for key, per in report['ratios']['backends'].items():
            model = key.split('/')[0]
            r = per['onnxruntime-int8']
            fp32, int8 = by[model, 'onnxruntime'], by[model, 'onnxruntime-int8']
            info = int8.get('onnxruntime', {})
            out.append((model, batch, label, fp32['ms_per_batch'], int8['ms_per_batch'], r,
                        info, report['protocol']['rounds'], report.get('date', '')))
    return out


def main() -> int:
    runs = [Path(p) for p in sys.argv[1:]]
    if not runs:
        print(__doc__)
        return 2
    table = []
    for i, run in enumerate(runs):
        table += rows(run, f'{i + 1}')
    order = list(GOALS)
    table.sort(key=lambda t: (order.index(t[0]) if t[0] in order else 99, t[1], t[2]))
    lines = ['| model | batch | run | fp32 ms / batch (median) | int8 ms / batch (median) | '
             'int8 speed-up: median (min-max over rounds) | integer / float convs | goal | '
             'met (median) |', '|---|---|---|---|---|---|---|---|---|']
    for model, batch, run, f, i, r, info, rounds, date in table:
        goal = GOALS.get(model)
        convs = (f"{info['integer_convs']} / {info['float_convs']}"
                 if 'integer_convs' in info else '-')
        lines.append(f'| {NAMES.get(model, model)} | {batch} | {run} ({rounds} rounds, '
                     f'{date[11:16]} UTC) | {f:.1f} | {i:.1f} | **{r["median"]:.2f}x** '
                     f'({r["min"]:.2f}-{r["max"]:.2f}) | {convs} | '
                     f'{"-" if goal is None else f">= {goal:g}x"} | '
                     f'{"-" if goal is None else ("yes" if r["median"] >= goal else "**no**")} |')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
