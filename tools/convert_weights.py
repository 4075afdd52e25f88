"""Convert ImageNet RepVGG weights (official / mmpretrain / timm) to mmrepvgg backbone keys.

The training-time (multi-branch) weights are renamed, not folded, so a segmentor can start
from them through ``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')``.

Examples::

    python tools/convert_weights.py RepVGG-B2-train.pth checkpoints/repvgg-b2_in1k.pth \\
        --source official
    python tools/convert_weights.py timm_repvgg_b1g4.pth checkpoints/repvgg-b1g4_in1k.pth \\
        --source timm --arch B1g4
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mmengine.logging import print_log

import mmrepvgg  # noqa: F401
from mmrepvgg.checkpoint import is_deployed_state, save_checkpoint_atomic
from mmrepvgg.cli import add_checkpoint_args, run_tool
from mmrepvgg.deploy import backbone_checkpoint, load_mapped_state
from mmrepvgg.utils.errors import CheckpointError, user_errors
from mmrepvgg.utils.fileio import check_output_path


def arch_arg(text: str) -> str | dict:
    """An ``argparse`` type: an arch name, or a JSON object of :class:`RepVGGArch` fields."""
    if not text.lstrip().startswith('{'):
        return text
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f'not a JSON object: {err}') from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError('give a JSON object')
    return spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', help='ImageNet weights (training-time)')
    parser.add_argument('out', help='backbone checkpoint to write')
    parser.add_argument('--arch', type=arch_arg,
                        help='RepVGG arch: a name, e.g. B2, or a JSON object for another '
                        'layout, e.g. \'{"num_blocks": [2, 4, 14, 1], "width_factors": [1, 1, '
                        '1, 2.5]}\' (default: inferred from the shapes)')
    add_checkpoint_args(parser, force_help='overwrite OUT', cfg_options=False)
    return parser.parse_args(argv)


def convert_backbone_weights(checkpoint: str | os.PathLike, out: str | os.PathLike,
                             source: str | None = None, arch: str | dict | None = None,
                             force: bool = False, trust: bool = False) -> dict:
    """ImageNet weights (official, mmpretrain, timm or ours) -> backbone weights in ``out``.

    Args:
        checkpoint: Training-time weights.
        out: Destination; never the input, never an existing file unless ``force``.
        source: Layout; None: detect it.
        arch: RepVGG arch (name or spec); None: infer it from the shapes.
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.

    Returns:
        The written ``meta``.
    """
    check_output_path(out, force, [checkpoint])
    state, source, _ = load_mapped_state(checkpoint, source, trust)
    if is_deployed_state(state):
        raise CheckpointError(f'{checkpoint} holds deployed (folded) weights; a backbone to '
                              'fine-tune needs the training-time (multi-branch) ones')
    result = backbone_checkpoint(state, f'{checkpoint} ({source} layout)', arch)
    result['meta'].update(source=source, source_checkpoint=str(checkpoint))
    save_checkpoint_atomic(result, out, force=force, inputs=[checkpoint])
    meta = result['meta']
    print_log(f'Wrote {len(result["state_dict"])} backbone tensors (RepVGG-{meta["arch"]}, '
              f'{meta["block"]}) to {out}', logger='current')
    return meta


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; bad input prints one ``error:`` line and returns 1."""
    args = parse_args(argv)
    # KeyError / ValueError: an unknown or malformed --arch
    return run_tool(lambda: convert_backbone_weights(
        args.checkpoint, args.out, source=args.source, arch=args.arch, force=args.force,
        trust=args.trust_checkpoint), user_errors() + (KeyError, ValueError))


if __name__ == '__main__':
    sys.exit(main())
