"""``tools/infer_onnx.py``: run an exported ONNX model (fp32 or int8) on images, without torch.

Bad input (a missing file, a model without runtime metadata, an image the model cannot
take, an existing output without ``--force``) prints one line, ``error: <message>``, and
exits with status 1 (130 after Ctrl-C, 143 after SIGTERM; temporary files are removed).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import USER_ERRORS, error_message
from .files import sigterm_unwinds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog='infer_onnx.py',
        description='Run an mmrepvgg ONNX model (tools/export_onnx.py or tools/quantize.py) '
        'on images with onnxruntime, numpy and OpenCV only. Segmentors write DIR/<stem>.png '
        '(label map, train ids, at the image size) and DIR/<stem>_overlay.jpg; classifiers '
        'DIR/predictions.json (top-k classes and scores per image).')
    parser.add_argument('model', help='the ONNX file')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files or folders (searched recursively)')
    parser.add_argument('--out-dir', required=True, help='output folder (created if missing)')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--threads', type=_positive, default=None,
                        help='ONNX Runtime intra-op threads (default: its own choice)')
    parser.add_argument('--topk', type=_positive, default=None,
                        help="classes per image for a classifier (default: the model's, 5)")
    parser.add_argument('--no-overlay', action='store_true',
                        help='segmentors: write the label maps only')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='weight of the class colours in the overlay (default 0.5)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar, no summary')
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = parse_args(argv)
    try:
        with sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: temporary files are removed
            from .infer import infer  # here: a missing numpy / OpenCV is one line too
            result = infer(args.model, args.inputs, args.out_dir, force=args.force,
                           threads=args.threads, topk=args.topk, overlay=not args.no_overlay,
                           alpha=args.alpha, progress=not args.quiet)
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f'error: {error_message(err, first_line=True)}', file=sys.stderr)
        return 1
    if not args.quiet:
        what = ('label maps' if result['task'] == 'segmentation' else 'predictions')
        print(f'{result["images"]} images -> {what} in {args.out_dir} '
              f'({len(result["outputs"])} files)')
    return 0
