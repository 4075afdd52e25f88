"""int8 post-training quantization (ONNX Runtime, QDQ) of the folded model, with a report.

Examples::

    # quantize, evaluate fp32 vs int8 ONNX on the test split, time both, write the report
    python tools/quantize.py configs/repvgg-a0_in1k.py RepVGG-A0-train.pth a0_int8.onnx --eval
    # per-tensor weights, entropy calibration, keep the 2 most sensitive layers in float
    python tools/quantize.py configs/repvgg-a0_in1k.py RepVGG-A0-train.pth a0_int8.onnx \\
        --per-tensor --calib-method entropy --keep-float 2 --eval

Calibration images come from the config's **train** split (through its test pipeline);
evaluation uses its val/test split and evaluator. The report (json + markdown, default
``OUT.json`` / ``OUT.md``) names the calibrator, per-channel or per-tensor weights, the
layers kept in float, the per-layer sensitivity ranking, accuracy and speed.
See docs/export.md.
"""
from __future__ import annotations

import argparse
import sys

import mmrepvgg  # noqa: F401  (registers the backbone)
from mmrepvgg.cli import (
    add_checkpoint_args,
    load_tool_config,
    non_negative_int,
    positive_int,
    run_tool,
)
from mmrepvgg.deploy.onnx_export import DEFAULT_OPSET, EXPORTERS
from mmrepvgg.deploy.quant_report import summary_lines
from mmrepvgg.deploy.quantize import (
    ACTIVATION_TYPES,
    CALIBRATORS,
    QuantSettings,
    quantize_checkpoint,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmseg or mmpretrain config of the model')
    parser.add_argument('checkpoint', help='training-time or deployed checkpoint')
    parser.add_argument('out', help='int8 ONNX file to write')
    parser.add_argument('--calib-images', type=positive_int, default=200,
                        help='calibration inputs from the train split (default 200, or the '
                        'split size)')
    parser.add_argument('--calib-method', choices=list(CALIBRATORS), default='minmax')
    parser.add_argument('--per-tensor', action='store_true',
                        help='one weight scale per tensor (default: per output channel)')
    parser.add_argument('--activation-type', choices=list(ACTIVATION_TYPES), default='int8',
                        help='int8 (S8S8, default) or uint8 (U8S8) activations')
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument('--keep-float', type=non_negative_int, default=0, metavar='K',
                      help='keep the K most sensitive layers in float')
    keep.add_argument('--keep-float-layers', nargs='+', default=[], metavar='NAME',
                      help='keep these layers in float (module paths such as '
                      'backbone.stem.branch_reparam, or ONNX node names)')
    parser.add_argument('--no-sensitivity', action='store_true',
                        help='skip the per-layer sensitivity ranking')
    parser.add_argument('--sensitivity-images', type=positive_int, default=16,
                        help='calibration inputs the sensitivity is measured on')
    parser.add_argument('--eval', action='store_true',
                        help='evaluate fp32 and int8 ONNX on the val/test split and time both')
    parser.add_argument('--max-eval-images', type=positive_int, help='evaluate on the first N only')
    parser.add_argument('--report', help='json report (default OUT.json; markdown beside it)')
    parser.add_argument('--fp32-out', help='also keep the fp32 ONNX model here')
    parser.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the config's test crop)")
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    parser.add_argument('--threads', type=positive_int,
                        help='ONNX Runtime intra-op threads (default: its own)')
    parser.add_argument('--speed-iters', type=positive_int,
                        help='timed runs per round (default: a quarter second per round)')
    parser.add_argument('--speed-rounds', type=positive_int, default=5, help='interleaved rounds')
    parser.add_argument('--seed', type=int, default=0, help='seed of the calibration subset')
    add_checkpoint_args(parser, force_help='overwrite OUT and the report')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Quantize; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)
    command = 'python tools/quantize.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    results = []

    def work() -> None:
        cfg = load_tool_config(args)
        settings = QuantSettings(args.calib_method, not args.per_tensor, args.activation_type)
        results.append(quantize_checkpoint(
            cfg, args.checkpoint, args.out, settings, calib_images=args.calib_images,
            keep_float=args.keep_float, keep_float_layers=args.keep_float_layers,
            sensitivity=not args.no_sensitivity, sensitivity_images=args.sensitivity_images,
            run_eval=args.eval, max_eval_images=args.max_eval_images, report=args.report,
            fp32_out=args.fp32_out, shape=tuple(args.shape) if args.shape else None,
            exporter=args.exporter, opset=args.opset, threads=args.threads,
            speed_iters=args.speed_iters, speed_rounds=args.speed_rounds, force=args.force,
            trust=args.trust_checkpoint, source=args.source, seed=args.seed, command=command))

    status = run_tool(work)
    if status == 0:
        print('\n'.join(summary_lines(results[0])), flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
