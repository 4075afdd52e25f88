"""Speed-accuracy plot like the paper's Fig. 1, from a benchmark json and the metafile."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

from mmrepvgg.utils.fileio import check_output_path, write_atomic

from .metafile import find_paper_model, load_metafile


def speed_accuracy_points(report: dict, metafile: str | os.PathLike, table: int = 4,
                          variants: Sequence[str] = ('deploy', 'fused')) -> list[dict]:
    """Pair each measured model with its top-1 (or mIoU) from the metafile.

    Args:
        report: A :func:`projects.benchmark.benchmark.run_benchmark` result.
        metafile: Path of the metafile (the project's: ``configs/metafile.yml``).
        table: Which paper table the accuracy comes from (4: 120 epochs, 5: 200 epochs,
            8: Cityscapes mIoU); models not in it are left out.
        variants: The forms to plot (default: as deployed, the paper's protocol).

    Returns:
        ``[dict(model, variant, family, speed, accuracy)]``.
    """
    paper = load_metafile(metafile)
    points = []
    for r in report['results']:
        if r['variant'] not in variants or r.get('family') == 'peer':
            continue
        p = find_paper_model(r['model'], paper)
        acc = p.top1(table) if p is not None else None
        if acc is None:
            continue
        points.append(dict(model=r['model'], variant=r['variant'], family=r['family'],
                           speed=r['examples_per_s'], accuracy=acc))
    return points


def plot_speed_accuracy(report: dict, out: str, metafile: str | os.PathLike, table: int = 4,
                        variants: Sequence[str] = ('deploy', 'fused'), title: str | None = None,
                        force: bool = False, inputs: Sequence[str] = ()) -> list[dict]:
    """Save a top-1 vs measured speed plot (RepVGG as a line, baselines as markers).

    The axes name the device, torch, the date, the precision (TF32 state) and the protocol the
    speed was measured with, so a reduced CPU run or a TF32 run is not mistaken for the paper's
    1080Ti numbers.

    Args:
        report: A benchmark result (:func:`projects.benchmark.benchmark.run_benchmark`).
        out: Where to save the figure (``.png``, ``.pdf``, ``.svg``).
        metafile: Path of the metafile (``configs/metafile.yml``).
        table: Paper table of the accuracies (4, 5 or 8).
        variants: Forms to plot.
        title: Figure title (default: the paper table).
        force: Overwrite an existing ``out``.
        inputs: Files the plot is made from (the benchmark json): ``out`` is never one.

    Returns:
        The plotted points.

    Raises:
        ValueError: ``out`` has no figure format matplotlib writes, or no model has a result
            in the table.
        FileExistsError: ``out`` exists and ``force`` is False (checked before plotting).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(out).suffix.lstrip('.').lower()
    formats = FigureCanvasBase.get_supported_filetypes()  # (opens no figure)
    if fmt not in formats:
        raise ValueError(f'{out}: give a figure file ending in one of '
                         f'{", ".join("." + f for f in sorted(formats))}')
    check_output_path(out, force, inputs)
    points = speed_accuracy_points(report, metafile, table, variants)
    if not points:
        raise ValueError(f'no benchmarked model has a result in paper Table {table}')
    info, proto = report['device_info'], report['protocol']
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ours = sorted((p for p in points if p['family'] == 'repvgg'), key=lambda p: p['speed'])
    base = [p for p in points if p['family'] != 'repvgg']
    if ours:
        ax.plot([p['speed'] for p in ours], [p['accuracy'] for p in ours], '-o', color='C3',
                label='RepVGG (deployed)')
    if base:
        ax.plot([p['speed'] for p in base], [p['accuracy'] for p in base], 's', color='C0',
                label='baselines (conv-BN fused)')
    for p in points:
        ax.annotate(p['model'].replace('RepVGG-', ''), (p['speed'], p['accuracy']),
                    textcoords='offset points', xytext=(4, 4), fontsize=8)
    device = info.get('gpu') or info['cpu']
    precision = proto.get('precision') or f"{proto['dtype']} (TF32 state not recorded)"
    when = f", {report['date'][:10]}" if report.get('date') else ''
    ax.set_xlabel(f"measured speed (examples/s): {device}, {info['torch_threads']} thread(s), "
                  f"torch {info['torch']}{when}\n"
                  f"batch {proto['batch']} at {proto['shape'][0]}x{proto['shape'][1]}, "
                  f"{precision}, {proto['backend']}"
                  + ('' if proto.get('paper_protocol') else ' (not the paper\'s protocol)'),
                  fontsize=7)
    metric = 'mIoU (%)' if table == 8 else 'ImageNet top-1 (%)'
    ax.set_ylabel(f'{metric}, paper Table {table}')
    title = title or f'Accuracy (paper Table {table}) vs speed measured here'
    ax.set_title('\n'.join(textwrap.wrap(title, 70)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, format=fmt), force=force, inputs=inputs)
    finally:
        plt.close(fig)
    return points
