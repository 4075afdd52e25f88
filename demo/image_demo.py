"""Run a model on one image, as mmseg's and mmpretrain's ``demo/image_demo.py``.

    python demo/image_demo.py demo/street.png configs/demo/pspnet_repvgg-small_tiny-cityscapes.py \
        work_dirs/demo/train/iter_200_deploy.pth --out-file out.png
    python demo/image_demo.py demo/digit.png configs/demo/repvgg-small_digits.py \
        work_dirs/demo_cls/train/epoch_8.pth

A segmentation config (mmseg) draws the predicted classes over the image (``--out-file``;
without it a window shows them); a classification config (mmpretrain) prints the class and
its score (and draws them with ``--out-file``). Training-time and deployed (folded)
checkpoints both work: the model is built and loaded by mmseg's ``init_model`` or mmpretrain's
``ImageClassificationInferencer``, which read either form. ``--out-file`` is written
atomically and never over an existing file without ``--force``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

# the checkout's mmrepvgg comes first
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmrepvgg  # noqa: E402,F401  (registers the backbone; our configs import it too)
from mmrepvgg.checkpoint import check_checkpoint_path, install_mmengine_loader  # noqa: E402
from mmrepvgg.cli import run_tool  # noqa: E402
from mmrepvgg.utils.fileio import check_output_path, write_bytes_atomic  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='config file (mmseg or mmpretrain)')
    parser.add_argument('checkpoint', help='checkpoint file (training-time or deployed)')
    parser.add_argument('--out-file', help='write the drawn result here (e.g. out.png)')
    parser.add_argument('--force', action='store_true', help='replace an existing --out-file')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the painted classes, in (0, 1]')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of a checkpoint that weights-only loading '
                        'refuses; only for files you trust')
    return parser.parse_args(argv)


def _encode(image_rgb, path: str) -> bytes:
    import cv2
    ok, data = cv2.imencode(osp.splitext(path)[1] or '.png', image_rgb[..., ::-1])
    if not ok:
        raise ValueError(f'--out-file {path}: cannot encode an image of this type')
    return data.tobytes()


def segment(args: argparse.Namespace) -> None:
    """mmseg's image demo: ``init_model``, ``inference_model``, ``show_result_pyplot``."""
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model, show_result_pyplot
    model = revert_sync_batchnorm(init_model(args.config, args.checkpoint, device=args.device))
    result = inference_model(model, args.img)
    drawn = show_result_pyplot(model, args.img, result, opacity=args.opacity, draw_gt=False,
                               show=args.out_file is None, out_file=None)
    classes = model.dataset_meta['classes']
    labels, counts = result.pred_sem_seg.data.unique(return_counts=True)
    shares = sorted(zip(counts.tolist(), labels.tolist()), reverse=True)[:3]
    total = result.pred_sem_seg.data.numel()
    print('predicted: ' + ', '.join(f'{classes[c]} {n / total:.0%}' for n, c in shares))
    if args.out_file:
        write_bytes_atomic(args.out_file, _encode(drawn, args.out_file), force=args.force,
                           inputs=[args.img, args.checkpoint, args.config])
        print(f'wrote {args.out_file}')


def classify(args: argparse.Namespace) -> None:
    """mmpretrain's image demo: ``ImageClassificationInferencer``."""
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(args.config, pretrained=args.checkpoint,
                                               device=args.device)
    (result, ) = inferencer(args.img)
    print(f"{result['pred_class']} (label {result['pred_label']}), "
          f"score {result['pred_score']:.4f}")
    if args.out_file:
        from mmcv import imread
        from mmpretrain.visualization import UniversalVisualizer
        image = imread(args.img, channel_order='rgb')
        visualizer = inferencer.visualizer or UniversalVisualizer()  # a config without one
        drawn = visualizer.visualize_cls(
            image, _sample(result), classes=inferencer.classes, draw_gt=False,
            resize=224 if min(image.shape[:2]) < 224 else None)  # room for the text
        write_bytes_atomic(args.out_file, _encode(drawn, args.out_file), force=args.force,
                           inputs=[args.img, args.checkpoint, args.config])
        print(f'wrote {args.out_file}')


def _sample(result: dict):
    """An mmpretrain ``DataSample`` holding ``result``'s prediction (for the visualizer)."""
    import torch
    from mmpretrain.structures import DataSample
    sample = DataSample().set_pred_label(result['pred_label'])
    sample.set_pred_score(torch.as_tensor(result['pred_scores']))
    return sample


def main(argv: list[str] | None = None) -> int:
    """Segment or classify ``img``; bad input prints one ``error:`` line."""
    args = parse_args(argv)
    install_mmengine_loader(trust=args.trust_checkpoint)

    def work() -> None:
        from mmengine.config import Config
        if not osp.isfile(args.img):
            raise FileNotFoundError(f'Image not found: {args.img}')
        check_checkpoint_path(args.checkpoint)
        if args.out_file:
            check_output_path(args.out_file, args.force,
                              [args.img, args.checkpoint, args.config])
        scope = Config.fromfile(args.config).get('default_scope')
        segment(args) if scope == 'mmseg' else classify(args)

    return run_tool(work)


if __name__ == '__main__':
    sys.exit(main())
