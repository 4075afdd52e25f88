"""Export the folded (deployed) model to ONNX and check it against PyTorch with ONNX Runtime.

Examples::

    # a training-time checkpoint (ours, official, mmpretrain or timm layout) or a deployed one
    python tools/export_onnx.py configs/repvgg-a0_in1k.py RepVGG-A0-train.pth a0.onnx
    # PSPNet at the paper's 713x713 (the config's test crop, the default)
    python tools/export_onnx.py configs/pspnet_repvgg-b1g2-fast_cityscapes.py \\
        work_dirs/pspnet_repvgg-b1g2-fast_cityscapes/iter_40000.pth pspnet.onnx

The graph takes the normalized NCHW tensor the config's data preprocessor makes (mean, std,
channel order and class names are in the ONNX metadata) and returns logits: ``(N, classes)``
for a classifier, the decode head's logits (not resized to the input) for a segmentor.
See docs/export.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log

import mmrepvgg  # noqa: F401  (registers the backbone)
from mmrepvgg.cli import add_checkpoint_args, load_tool_config, positive_int, run_tool
from mmrepvgg.deploy import load_model, source_files
from mmrepvgg.deploy.onnx import (DEFAULT_OPSET, EXPORTERS, ExportOptions, ExportReport,
                                  export_onnx)
from mmrepvgg.utils.fileio import check_output_path, write_bytes_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmseg or mmpretrain config of the model')
    parser.add_argument('checkpoint', help='training-time or deployed checkpoint')
    parser.add_argument('out', help='ONNX file to write')
    parser.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: what the network sees under the config's "
                        'test behaviour: the slide window, the test crop or resize)')
    parser.add_argument('--batch', type=positive_int, default=1, help='batch size of the graph')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='make the batch axis dynamic')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    parser.add_argument('--fp16', action='store_true',
                        help='export in float16 (input and output float16)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help='torch.onnx exporter (default: dynamo)')
    parser.add_argument('--tolerance', type=float,
                        help='max relative ONNX Runtime vs PyTorch difference '
                        '(default 1e-4; 1e-2 with --fp16)')
    parser.add_argument('--no-runtime-meta', action='store_true',
                        help="do not write the test behaviour for tools/infer_onnx.py (for a "
                        "config or --shape the torch-free runtime cannot run as tested)")
    add_checkpoint_args(parser, force_help='overwrite OUT')
    return parser.parse_args(argv)


def export_file(config: str | Config, checkpoint: str | os.PathLike, out: str | os.PathLike,
                force: bool = False, trust: bool = False, source: str | None = None,
                **options: Any) -> ExportReport:
    """Checkpoint -> folded model -> verified ONNX file, written atomically.

    Args:
        config: mmseg or mmpretrain config (path or Config) with a RepVGG backbone.
        checkpoint: Training-time or deployed checkpoint (any layout).
        out: The ONNX file; never the checkpoint or the config, never an existing file
            unless ``force`` (checked before any work).
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.
        source: Checkpoint layout; None: detect it.
        **options: :class:`~mmrepvgg.deploy.onnx.ExportOptions` fields.

    Returns:
        The :class:`~mmrepvgg.deploy.onnx.ExportReport` (printed).
    """
    sources = source_files(config, checkpoint)
    check_output_path(out, force, sources)
    opts = ExportOptions(**options)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    model, deployed, meta = load_model(cfg, checkpoint, source, trust)
    report = export_onnx(model, cfg, opts, deployed, meta, str(checkpoint))
    write_bytes_atomic(out, report.proto.SerializeToString(), force=force, inputs=sources)
    report.out = str(out)
    print_log(report.summary(), logger='current')
    return report


def main(argv: list[str] | None = None) -> int:
    """Export; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)

    def work() -> None:
        cfg = load_tool_config(args)
        export_file(cfg, args.checkpoint, args.out, args.force, args.trust_checkpoint,
                    args.source, shape=tuple(args.shape) if args.shape else None,
                    batch=args.batch, dynamic_batch=args.dynamic_batch, opset=args.opset,
                    fp16=args.fp16, exporter=args.exporter, tolerance=args.tolerance,
                    runtime_meta=not args.no_runtime_meta)

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
