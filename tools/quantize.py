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
import os
import sys
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log

import mmrepvgg  # noqa: F401  (registers the backbone)
from mmrepvgg.cli import (
    add_checkpoint_args,
    load_tool_config,
    non_negative_int,
    positive_int,
    run_tool,
)
from mmrepvgg.deploy import load_model, source_files
from mmrepvgg.deploy.onnx import DEFAULT_OPSET, EXPORTERS, ExportOptions
from mmrepvgg.deploy.onnx_eval import eval_split
from mmrepvgg.deploy.quantize import (ACTIVATION_TYPES, CALIBRATORS, QuantizeOptions,
                                      QuantSettings, quantize_model, report_markdown,
                                      summary_lines)
from mmrepvgg.runner.prepare import check_data
from mmrepvgg.utils.fileio import (check_output_paths, sigterm_unwinds, write_bytes_atomic,
                                   write_json_atomic)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmseg or mmpretrain config of the model')
    parser.add_argument('checkpoint', help='training-time or deployed checkpoint')
    parser.add_argument('out', help='int8 ONNX file to write')
    parser.add_argument('--calib-images', type=positive_int, default=200,
                        help='calibration inputs (default 200, or as many as there are)')
    parser.add_argument('--calib-dir', metavar='DIR',
                        help="calibrate on the images of DIR (searched recursively, through "
                        "the config's test pipeline) instead of the dataset's train split")
    parser.add_argument('--calib-method', choices=list(CALIBRATORS), default='minmax')
    parser.add_argument('--per-tensor', action='store_true',
                        help='one weight scale per tensor (default: per output channel)')
    parser.add_argument('--activation-type', choices=list(ACTIVATION_TYPES), default='uint8',
                        help='uint8 (U8S8, default: measured fastest, docs/int8.md) or int8 '
                        '(S8S8) activations')
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
                        help="input size (default: what the network sees under the config's "
                        'test behaviour, as tools/export_onnx.py)')
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


def quantize_file(config: str | Config, checkpoint: str | os.PathLike, out: str | os.PathLike,
                  options: QuantizeOptions | None = None, force: bool = False,
                  trust: bool = False, source: str | None = None,
                  report: str | os.PathLike | None = None,
                  fp32_out: str | os.PathLike | None = None, command: str | None = None) -> dict:
    """Checkpoint -> int8 ONNX file, its report (json + markdown) and optionally the fp32 file.

    Every output is checked before any work and written at the very end, so a failure
    leaves nothing partial; SIGTERM unwinds like an error (temporary files removed).

    Args:
        config: mmseg or mmpretrain config (path or Config).
        checkpoint: Training-time or deployed checkpoint.
        out: The int8 ONNX file.
        options: :class:`~mmrepvgg.deploy.quantize.QuantizeOptions` (the export's included).
        force: Overwrite existing outputs.
        trust: Allow full unpickling of the checkpoint.
        source: Checkpoint layout (None: detect).
        report: The json report (a ``.md`` beside it); default ``out`` with ``.json``.
        fp32_out: Also write the fp32 ONNX there.
        command: The command line, recorded in the report.

    Returns:
        The report.
    """
    options = options or QuantizeOptions()
    out = Path(out)
    report_json = Path(report) if report else out.with_suffix('.json')
    sources = source_files(config, checkpoint)
    check_output_paths([out, report_json, report_json.with_suffix('.md'), fp32_out], force,
                       sources)
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    # then the data: a missing dataset is one line before minutes of export and calibration
    check_data(cfg, (() if options.calib_dir else ('train', ))
               + ((eval_split(cfg), ) if options.run_eval else ()))
    result: dict[str, Any] = dict(command=command, config=cfg.filename, checkpoint=str(checkpoint),
                                  int8_onnx=str(out),
                                  fp32_onnx=str(fp32_out) if fp32_out else None)
    with sigterm_unwinds():
        model, deployed, meta = load_model(cfg, checkpoint, source, trust)
        made = quantize_model(model, cfg, options, deployed, meta, str(out))
        result.update(made.report)
        # everything is known: write the outputs, all of them or (on an error) none more
        write_bytes_atomic(out, made.int8.SerializeToString(), force=force, inputs=sources)
        if fp32_out:
            write_bytes_atomic(fp32_out, made.fp32.SerializeToString(), force=force,
                               inputs=sources)
        graph = result['graph']
        print_log(f'Wrote {out}: {len(graph["quantized_layers"])} int8 layers, '
                  f'{len(graph["float_layers"])} float; output SQNR vs fp32 '
                  f'{result["output_sqnr_db"]:.1f} dB; {graph["executed"]["summary"]}',
                  logger='current')
        write_report(result, report_json, force, sources)
    return result


def write_report(result: dict, path: Path, force: bool, inputs: list) -> None:
    """The report as json and as markdown beside it (``.md``), atomically."""
    write_json_atomic(path, result, force=force, inputs=inputs)
    write_bytes_atomic(path.with_suffix('.md'), report_markdown(result), force=force,
                       inputs=inputs)
    print_log(f'Wrote {path} and {path.with_suffix(".md")}', logger='current')


def main(argv: list[str] | None = None) -> int:
    """Quantize; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)
    command = 'python tools/quantize.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    results = []

    def work() -> None:
        cfg = load_tool_config(args)
        options = QuantizeOptions(
            QuantSettings(args.calib_method, not args.per_tensor, args.activation_type),
            calib_images=args.calib_images, calib_dir=args.calib_dir,
            keep_float=args.keep_float, keep_float_layers=args.keep_float_layers,
            sensitivity=not args.no_sensitivity, sensitivity_images=args.sensitivity_images,
            run_eval=args.eval, max_eval_images=args.max_eval_images, threads=args.threads,
            speed_iters=args.speed_iters, speed_rounds=args.speed_rounds, seed=args.seed,
            export=ExportOptions(tuple(args.shape) if args.shape else None,
                                 exporter=args.exporter, opset=args.opset))
        results.append(quantize_file(cfg, args.checkpoint, args.out, options, args.force,
                                     args.trust_checkpoint, args.source, args.report,
                                     args.fp32_out, command))

    status = run_tool(work)
    if status == 0:
        print('\n'.join(summary_lines(results[0])), flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
