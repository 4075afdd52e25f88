"""export_onnx writes the config's test behaviour for mmrepvgg_runtime, and the runtime (run
with torch blocked) gives what mmseg's ``inference_model`` / mmpretrain's inferencer give on
the same images; a config or --shape the runtime cannot run is refused in one line; --opset
is honoured or refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config

import mmrepvgg  # noqa: F401
from mmrepvgg.deploy import build_model
from mmrepvgg.deploy.onnx import read_metadata
from mmrepvgg.utils.errors import ExportError
from mmrepvgg_runtime import RUNTIME_KEY
from tests.deploy.helpers import export_onnx
from tests.helpers import load_tool, one_error_line, randomize_bn_
from tests.runtime import onnx_models as om
from tests.runtime.test_cli import assert_torch_free, run_blocked

ROOT = Path(__file__).resolve().parents[2]
export_tool = load_tool('export_onnx')
pytestmark = pytest.mark.usefixtures('one_thread')


def save(cfg: Config, tmp: Path, name: str, seed: int = 0) -> tuple[Path, Path]:
    """Config file and training-time checkpoint (randomized BN statistics)."""
    cfg_file = tmp / f'{name}.py'
    cfg.dump(str(cfg_file))
    torch.manual_seed(seed)
    model = randomize_bn_(build_model(cfg), seed=3).eval()
    ckpt = tmp / f'{name}.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return cfg_file, ckpt


def demo_seg_config(mode: str = 'whole') -> Config:
    """``make demo``'s PSPNet config (its test pipeline: Resize 256x128 keeping the ratio)."""
    cfg = Config.fromfile(str(ROOT / 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'))
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)
    if mode == 'slide':
        cfg.model.test_cfg = dict(mode='slide', crop_size=(96, 96), stride=(64, 64))
    return cfg


def cls_config() -> Config:
    """The ImageNet test pipeline (ResizeEdge 256 -> CenterCrop 224) shrunk to 40 -> 32."""
    cfg = Config.fromfile(str(ROOT / 'configs/demo/repvgg-small_digits.py'))
    cfg.model.backbone.norm_cfg = dict(type='BN')
    cfg.data_preprocessor = dict(num_classes=10, mean=[120., 110., 100.], std=[60., 55., 50.],
                                 to_rgb=True)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='ResizeEdge', scale=40),
                dict(type='CenterCrop', crop_size=32), dict(type='PackInputs')]
    cfg.test_dataloader.dataset.pipeline = pipeline
    cfg.val_dataloader.dataset.pipeline = pipeline
    cfg.test_pipeline = pipeline
    return cfg


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_segmentor_runtime_equals_inference_model(tmp_path, mode):
    from mmseg.apis import inference_model, init_model
    cfg_file, ckpt = save(demo_seg_config(mode), tmp_path, f'seg_{mode}')
    out = tmp_path / 'seg.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out)]) == 0  # no options
    spec = read_metadata(out)[RUNTIME_KEY]
    graph_hw = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type
                .shape.dim][2:]
    if mode == 'whole':  # the resize's size for an image of its aspect ratio
        assert graph_hw == [128, 256] and spec['inference'] == {'mode': 'whole'}
        sizes = [(128, 256), (100, 200), (64, 128)]
    else:
        assert graph_hw == [96, 96] and spec['inference']['crop_size'] == [96, 96]
        sizes = [(128, 256), (90, 150), (120, 130)]
    assert spec['pipeline'] == [dict(type='resize', scale=[256, 128], keep_ratio=True,
                                     interpolation='bilinear')]
    images = om.write_images(tmp_path / 'imgs', sizes, seed=7)
    proc = run_blocked(out, tmp_path / 'imgs', '--out-dir', tmp_path / 'pred', '--quiet')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_torch_free(proc)
    import cv2
    model = init_model(str(cfg_file), str(ckpt), device='cpu')
    for img in images:
        ref = inference_model(model, str(img)).pred_sem_seg.data[0].numpy()
        got = cv2.imread(str(tmp_path / 'pred' / f'{img.stem}.png'), cv2.IMREAD_UNCHANGED)
        assert got.shape == ref.shape and len(np.unique(ref)) > 1
        assert (got == ref).mean() >= 0.995, (img, (got == ref).mean())


def test_classifier_runtime_equals_the_inferencer(tmp_path):
    from mmpretrain import ImageClassificationInferencer
    cfg_file, ckpt = save(cls_config(), tmp_path, 'cls')
    out = tmp_path / 'cls.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out)]) == 0
    images = om.write_images(tmp_path / 'imgs', [(40, 60), (77, 50), (32, 32), (45, 45)],
                             seed=3)
    proc = run_blocked(out, tmp_path / 'imgs', '--out-dir', tmp_path / 'pred', '--quiet')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_torch_free(proc)
    preds = json.loads((tmp_path / 'pred' / 'predictions.json').read_text())['predictions']
    inferencer = ImageClassificationInferencer(str(cfg_file), pretrained=str(ckpt),
                                               device='cpu')
    for img, pred in zip(images, preds):
        ref = inferencer(str(img))[0]
        assert Path(pred['image']).name == img.name
        assert pred['pred_label'] == ref['pred_label']
        np.testing.assert_allclose(pred['pred_score'], ref['pred_score'], rtol=1e-4)
        np.testing.assert_allclose([t['score'] for t in pred['topk']],
                                   np.sort(ref['pred_scores'])[::-1][:len(pred['topk'])],
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_trained_digits_runtime_equals_the_inferencer(trained_digits, tmp_path,
                                                      pristine_loader, precision):
    """The ``make demo-cls`` model: its test pipeline keeps the image size, so the export
    needs --shape (refused without, in one line); then top-1 equals mmpretrain's on the
    test digits, with torch blocked; an fp16 export (float16 input and output) too."""
    from mmpretrain import ImageClassificationInferencer
    cfg, ckpt = trained_digits
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    with pytest.raises(ExportError, match='does not fix the input size.*--shape H W'):
        export_onnx(cfg, ckpt, tmp_path / 'x.onnx')
    assert not (tmp_path / 'x.onnx').exists()
    out = tmp_path / 'digits.onnx'
    export_onnx(cfg, ckpt, out, shape=(32, 32), fp16=precision == 'fp16')
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.elem_type == (
        onnx.TensorProto.FLOAT16 if precision == 'fp16' else onnx.TensorProto.FLOAT)
    folder = Path(cfg.test_dataloader.dataset.data_root) / 'test'
    images = sorted(folder.rglob('*.png'))[:40]
    (tmp_path / 'imgs').mkdir()
    for img in images:
        (tmp_path / 'imgs' / f'{img.parent.name}_{img.name}').write_bytes(img.read_bytes())
    proc = run_blocked(out, tmp_path / 'imgs', '--out-dir', tmp_path / 'pred', '--quiet')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_torch_free(proc)
    result = json.loads((tmp_path / 'pred' / 'predictions.json').read_text())
    assert result['precision'] == precision
    preds = result['predictions']
    from mmrepvgg.checkpoint import install_mmengine_loader
    install_mmengine_loader()  # mmengine's checkpoint loads weights-only (torch >= 2.6)
    inferencer = ImageClassificationInferencer(str(cfg_file), pretrained=ckpt, device='cpu')
    refs = inferencer([p['image'] for p in preds])
    assert [p['pred_label'] for p in preds] == [r['pred_label'] for r in refs]


def test_unsupported_test_behaviour_is_refused_in_one_line(tmp_path):
    cfg = demo_seg_config()
    cfg.test_pipeline = [dict(type='LoadImageFromFile'),
                         dict(type='RandomFlip', prob=1.0), dict(type='PackSegInputs')]
    cfg_file, ckpt = save(cfg, tmp_path, 'flip')
    with pytest.raises(ExportError, match="RandomFlip.*has no runtime equivalent") as err:
        export_onnx(str(cfg_file), ckpt, tmp_path / 'a.onnx')
    assert '\n' not in str(err.value) and not (tmp_path / 'a.onnx').exists()
    # without the runtime metadata it exports (at the size given)
    export_onnx(str(cfg_file), ckpt, tmp_path / 'b.onnx', shape=(64, 128), runtime_meta=False)
    assert RUNTIME_KEY not in read_metadata(tmp_path / 'b.onnx')


def test_a_shape_the_test_behaviour_never_feeds_is_refused(tmp_path, capsys):
    cfg_file, ckpt = save(demo_seg_config('slide'), tmp_path, 'slide')
    out = tmp_path / 'x.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--shape', '64', '64']) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('error: ') and 'slide inference feeds 96x96 inputs' in line
    assert not out.exists()


def test_a_shape_no_image_gives_under_a_keep_ratio_resize_is_refused(tmp_path, capsys):
    """issue 23 item 9: the demo PSPNet resizes keeping the ratio to fit 256x128, so every
    network input has its long edge at 256 or its short edge at 128; a 64x64 graph was
    exported, and then the runtime refused every image."""
    from mmrepvgg.deploy.runtime_meta import check_runtime_shape, runtime_spec
    cfg = demo_seg_config()
    cfg_file, ckpt = save(cfg, tmp_path, 'whole')
    out = tmp_path / 'x.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--shape', '64', '64']) == 1
    line = one_error_line(capsys)
    assert 'keeping its aspect ratio' in line and 'no image gives a 64x64 input' in line
    assert not out.exists()
    spec = runtime_spec(cfg, build_model(cfg))
    for fits in ((128, 256), (128, 200), (100, 256), (256, 128), (128, 128)):
        assert check_runtime_shape(spec, fits, 'cfg') == fits
    for never in ((64, 64), (129, 256), (128, 257), (200, 200)):
        with pytest.raises(ExportError, match='no image gives'):
            check_runtime_shape(spec, never, 'cfg')


@pytest.fixture(scope='module')
def tiny_cls(tmp_path_factory):
    return save(cls_config(), tmp_path_factory.mktemp('opset'), 'cls')


@pytest.mark.parametrize('exporter, opset', [('dynamo', 18), ('dynamo', 20),
                                             ('torchscript', 13), ('torchscript', 17)])
def test_opset_is_honoured(tiny_cls, tmp_path, exporter, opset):
    cfg_file, ckpt = tiny_cls
    out = tmp_path / 'a.onnx'
    report = export_onnx(str(cfg_file), ckpt, out, exporter=exporter, opset=opset)
    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')] == [opset]
    assert read_metadata(out)['opset'] == opset and report.opset == opset


@pytest.mark.parametrize('exporter, opset', [('dynamo', 13), ('dynamo', 17), ('dynamo', 99),
                                             ('torchscript', 99)])
def test_opset_is_refused_where_not_honoured(tiny_cls, tmp_path, capsys, exporter, opset):
    cfg_file, ckpt = tiny_cls
    out = tmp_path / 'a.onnx'
    assert export_tool.main([str(cfg_file), str(ckpt), str(out), '--opset', str(opset),
                             '--exporter', exporter]) == 1
    line = one_error_line(capsys)  # only ours: no converter traceback before it (issue 23)
    assert f'{opset}' in line, line
    assert not out.exists()
    with pytest.raises(ExportError):
        export_onnx(str(cfg_file), ckpt, out, exporter=exporter, opset=opset)
