"""Test a checkpoint, as trained or folded into the deployed (plain) RepVGG.

Examples::

    python tools/test.py configs/pspnet_repvgg-b2_cityscapes.py work_dirs/x/iter_7440.pth
    python tools/test.py CONFIG CKPT --deploy --show-dir vis   # fold first, write images
    python tools/test.py CONFIG work_dirs/x/iter_7440_deploy.pth   # a deployed checkpoint
    bash tools/dist_test.sh CONFIG CKPT 8 --deploy
    python tools/test.py CONFIG CKPT --submission submission   # Cityscapes test server
    python tools/test.py CONFIG CKPT --submission official --cfg-options test_evaluator.format_only=False

``--submission DIR`` tests with mmseg's ``CityscapesMetric`` instead of the config's
evaluator: the predictions are written as Cityscapes ``labelIds`` PNGs (what the benchmark
server takes, zipped) with ``format_only=True`` (no scores: the test split has no labels).
On ``val``, ``--cfg-options test_evaluator.format_only=False`` also scores them with
cityscapesscripts' official evaluator.

The checkpoint is loaded strictly: every missing, unexpected or mis-shaped key is an error.
A deployed checkpoint (``branch_reparam`` keys) is recognized and the model is folded before
loading it (the log says so).
"""
from __future__ import annotations

import argparse
import sys

import mmrepvgg  # noqa: F401  (registers the backbone and the deploy hook)
from mmrepvgg.checkpoint import install_mmengine_loader
from mmrepvgg.cli import add_runner_args, parse_runner_args, run_tool
from mmrepvgg.runner import check_test_out, close_distributed, prepare_test_config, test


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a model with a RepVGG backbone')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (training-time or deployed)')
    parser.add_argument('--work-dir', help='the dir for logs and metrics')
    parser.add_argument('--deploy', action='store_true',
                        help='fold every RepVGG block (RepVGGDeployHook) after loading the '
                        'checkpoint and test the plain model')
    parser.add_argument('--out', help='segmentation: folder for the predicted label maps; '
                        'classification: pickle file (.pkl) of the results; under the work '
                        'dir when relative, like --show-dir')
    parser.add_argument('--force', action='store_true',
                        help='let --out / --submission replace existing results or label maps')
    parser.add_argument('--submission', metavar='DIR',
                        help='Cityscapes: write the predictions as labelIds PNGs for the test '
                        "server into DIR (mmseg's CityscapesMetric, format_only=True; under "
                        'the work dir when relative)')
    parser.add_argument('--show', action='store_true', help='show prediction images')
    parser.add_argument('--show-dir', help='write prediction images under this folder (under '
                        'the work dir when relative); the log names the exact folder')
    parser.add_argument('--show-interval', type=int, default=1,
                        help='draw every n-th test image (default: all)')
    return parse_runner_args(add_runner_args(parser), argv)


def submission_options(out_dir: str, cfg_options: dict | None) -> dict:
    """``--cfg-options`` with the test evaluator replaced by mmseg's ``CityscapesMetric``
    writing labelIds PNGs into ``out_dir`` (the user's own options merged over it)."""
    evaluator = dict(_delete_=True, type='CityscapesMetric', output_dir=out_dir,
                     format_only=True, keep_results=True)
    return {'test_evaluator': evaluator, **(cfg_options or {})}


def main(argv: list[str] | None = None) -> int:
    """Test; bad input (e.g. a checkpoint that does not fit) prints one ``error:`` line."""
    args = parse_args(argv)
    install_mmengine_loader(trust=args.trust_checkpoint)

    def work() -> None:
        options = args.cfg_options
        if args.submission:
            options = submission_options(args.submission, options)
        cfg = prepare_test_config(args.config, args.checkpoint, work_dir=args.work_dir,
                                  deploy=args.deploy, show_dir=args.show_dir, show=args.show,
                                  show_interval=args.show_interval,
                                  out=args.out, cfg_options=options,
                                  launcher=args.launcher)
        if args.out:
            check_test_out(cfg, args.out, args.force)
        if args.submission:  # as --out: under the work dir when relative, never over data
            cfg.test_evaluator['output_dir'] = check_test_out(cfg, args.submission, args.force)
        test(cfg)
        close_distributed()

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
