"""The OpenMMLab entry points a user calls, run in a fresh process (mmengine keeps global
state): ``python -m tests.user_paths {seg,cls} CONFIG CHECKPOINT OUT.json [--deploy]``.

For one checkpoint it builds the model as ``tools/test.py`` does (its code path:
``prepare_test_config`` + the runner's ``test()``), records its metric and outputs on a few
test images, then builds the model through mmseg's ``init_model`` + ``inference_model`` and
``MMSegInferencer`` (seg), or mmpretrain's ``init_model``, ``get_model`` and
``ImageClassificationInferencer`` (cls), with nothing but ``import mmrepvgg`` (the config's
``custom_imports``), and writes every output's max relative difference to the reference
(``{name: rel}``), the metric and the log text of the loads as JSON. An error in a path is
recorded as ``{'error': message}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _reference(config: str, checkpoint: str, work_dir: str, deploy: bool):
    """tools/test.py's model after its test run, and the metrics."""
    from mmrepvgg.runner import build_runner, prepare_test_config
    from mmrepvgg.checkpoint import install_mmengine_loader
    install_mmengine_loader(trust=False)  # what tools/test.py does first
    cfg = prepare_test_config(config, checkpoint, work_dir=work_dir, deploy=deploy)
    runner = build_runner(cfg)
    metrics = runner.test()
    model = runner.model.eval()
    model.cfg = cfg
    return model, metrics


def _error(err: BaseException) -> dict:
    return {'error': f'{type(err).__name__}: {err}'}


def _seg(config: str, checkpoint: str, work_dir: str, deploy: bool) -> dict:
    from mmengine.config import Config
    result: dict = {}
    try:
        ref_model, metrics = _reference(config, checkpoint, work_dir, deploy)
        result['metric'] = float(metrics['mIoU'])
    except Exception as err:  # noqa: BLE001  (tools/test.py refused: recorded)
        ref_model, result['reference'] = None, _error(err)
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    cfg = Config.fromfile(config)
    images = sorted(str(p) for p in Path(cfg.test_dataloader.dataset.data_root).glob(
        'leftImg8bit/val/*/*.png'))[:2]
    result['images'] = len(images)
    ref = ([r.seg_logits.data for r in inference_model(ref_model, images)]
           if ref_model is not None else None)
    try:
        model = init_model(config, checkpoint, device='cpu')
        outs = [r.seg_logits.data for r in inference_model(model, images)]
        result['init_model+inference_model'] = max(map(_rel, outs, ref)) if ref else 'ran'
        result['deploy'] = bool(model.backbone.deploy)
    except Exception as err:  # noqa: BLE001  (recorded for the test to show)
        result['init_model+inference_model'] = _error(err)
    try:
        inferencer = MMSegInferencer(model=config, weights=checkpoint, device='cpu')
        samples = inferencer(images, return_datasamples=True)
        samples = samples['predictions'] if isinstance(samples, dict) else samples
        outs = [s.seg_logits.data for s in samples]
        result['MMSegInferencer'] = max(map(_rel, outs, ref)) if ref else 'ran'
    except Exception as err:  # noqa: BLE001
        result['MMSegInferencer'] = _error(err)
    return result


def _cls(config: str, checkpoint: str, work_dir: str, deploy: bool) -> dict:
    from mmengine.config import Config
    ref_model, metrics = _reference(config, checkpoint, work_dir, deploy)
    from mmcv import imread
    from mmpretrain.apis import ImageClassificationInferencer, get_model, init_model
    cfg = Config.fromfile(config)
    images = sorted(str(p) for p in Path(cfg.test_dataloader.dataset.data_root).glob(
        'test/*/*.png'))[:8]
    batch = ref_model.data_preprocessor(
        {'inputs': [torch.from_numpy(imread(p)).permute(2, 0, 1).contiguous() for p in images]},
        False)['inputs']
    with torch.no_grad():
        ref = ref_model(batch, mode='tensor')
    result: dict = {'metric': float(metrics['accuracy/top1']), 'images': len(images)}
    builders = {
        'init_model': lambda: init_model(config, checkpoint, device='cpu'),
        'get_model': lambda: get_model(config, pretrained=checkpoint, device='cpu'),
        'ImageClassificationInferencer': lambda: ImageClassificationInferencer(
            model=config, pretrained=checkpoint, device='cpu'),
    }
    for name, build in builders.items():
        try:
            built = build()
            model = built.model if name == 'ImageClassificationInferencer' else built
            with torch.no_grad():
                result[name] = _rel(model(batch, mode='tensor'), ref)
            if name == 'ImageClassificationInferencer':
                scores = torch.stack([torch.as_tensor(r['pred_scores'])
                                      for r in built(images)])
                result[name + ' scores'] = _rel(scores, ref.softmax(-1))
        except Exception as err:  # noqa: BLE001
            result[name] = _error(err)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('task', choices=('seg', 'cls'))
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('out')
    parser.add_argument('--deploy', action='store_true')
    args = parser.parse_args(argv)
    work_dir = str(Path(args.out).with_suffix('')) + '_work'
    try:
        result = (_seg if args.task == 'seg' else _cls)(args.config, args.checkpoint,
                                                        work_dir, args.deploy)
    except Exception as err:  # noqa: BLE001  (tools/test.py itself refused)
        traceback.print_exc()
        result = {'reference': _error(err)}
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
