"""tools/infer_onnx.py and mmrepvgg_runtime with torch, mmcv, mmengine, mmseg and mmpretrain
blocked from import, on hand-built ONNX models (fp32 and int8), and its one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.runtime import onnx_models as om

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmseg', 'mmpretrain', 'mmrepvgg')

#: Runs tools/infer_onnx.py with a meta-path finder that refuses the OpenMMLab stack and torch
#: (and mmrepvgg, which imports torch) and records every attempt to import them.
BLOCKER = f'''
import os, runpy, sys
BLOCKED = {BLOCKED!r}
tried = []
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            tried.append(name)
            raise ImportError('blocked by the test: ' + name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ['tools/infer_onnx.py'] + sys.argv[1:]
try:
    runpy.run_path(os.path.join({str(ROOT)!r}, 'tools', 'infer_onnx.py'), run_name='__main__')
finally:
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
    sys.stderr.write('\\nBLOCKED-IMPORTS ' + repr(tried) + ' LOADED ' + repr(loaded) + '\\n')
'''


def run_blocked(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``tools/infer_onnx.py ARGS`` in a fresh interpreter with torch & co. blocked."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run([sys.executable, '-c', BLOCKER, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_torch_free(proc: subprocess.CompletedProcess) -> None:
    line = proc.stderr.rsplit('BLOCKED-IMPORTS', 1)[-1]
    assert "[] LOADED []" in line, proc.stderr[-2000:]


def quantize_int8(src: Path, dst: Path, shape: tuple) -> Path:
    """ONNX Runtime static int8 (QDQ, S8S8 per-channel) of a test model."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            gen = np.random.default_rng(0)
            self.it = iter([{'input': gen.standard_normal(shape).astype(np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                      per_channel=True)
    return dst


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp('runtime_models')
    slide = om.seg_meta(inference=dict(mode='slide', crop_size=[16, 16], stride=[12, 12]))
    out = dict(seg=om.segmentor(d / 'seg.onnx', om.seg_meta()),
               slide=om.segmentor(d / 'slide.onnx', slide, hw=(16, 16)),
               cls=om.classifier(d / 'cls.onnx', om.cls_meta()))
    out['slide_int8'] = quantize_int8(out['slide'], d / 'slide_int8.onnx', (1, 3, 16, 16))
    out['cls_int8'] = quantize_int8(out['cls'], d / 'cls_int8.onnx', (1, 3, 32, 32))
    return out


@pytest.fixture
def images(tmp_path) -> Path:
    om.write_images(tmp_path / 'imgs', [(32, 64), (50, 100), (41, 90)])
    return tmp_path / 'imgs'


@pytest.mark.parametrize('name', ['seg', 'slide', 'slide_int8'])
def test_segmentor_torch_blocked(models, images, tmp_path, name):
    out = tmp_path / 'out'
    proc = run_blocked(models[name], images, '--out-dir', out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_torch_free(proc)
    import cv2
    for img in sorted(images.iterdir()):
        src = cv2.imread(str(img))
        labels = cv2.imread(str(out / f'{img.stem}.png'), cv2.IMREAD_UNCHANGED)
        assert labels.shape == src.shape[:2] and labels.dtype == np.uint8
        assert labels.max() < 5 and len(np.unique(labels)) > 1
        overlay = cv2.imread(str(out / f'{img.stem}_overlay.jpg'))
        assert overlay.shape == src.shape
    assert '3/3' in proc.stderr  # the progress bar


def test_int8_agrees_with_fp32(models, images, tmp_path):
    """The runtime runs an int8 QDQ file like the fp32 one (same metadata, same labels on
    nearly every pixel)."""
    from mmrepvgg_runtime import OnnxModel, read_image
    fp32, int8 = OnnxModel(models['slide']), OnnxModel(models['slide_int8'])
    for img in sorted(images.iterdir()):
        a, b = fp32.segment(read_image(img)), int8.segment(read_image(img))
        assert (a == b).mean() > 0.9


@pytest.mark.parametrize('name', ['cls', 'cls_int8'])
def test_classifier_torch_blocked(models, images, tmp_path, name):
    out = tmp_path / 'out'
    proc = run_blocked(models[name], images / 'img0.png', images, '--out-dir', out, '--quiet')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_torch_free(proc)
    result = json.loads((out / 'predictions.json').read_text())
    preds = result['predictions']
    assert [Path(p['image']).name for p in preds] == ['img0.png', 'img1.png', 'img2.png']
    for p in preds:
        assert len(p['topk']) == 3 and p['topk'][0]['label'] == p['pred_label']
        assert p['pred_class'] == f'class{p["pred_label"]}'
        scores = [t['score'] for t in p['topk']]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_classifier_scores_are_softmax_of_the_network(models, images):
    """predictions.json's scores are the softmax of the graph's logits on the preprocessed
    image (computed here independently with onnxruntime)."""
    import onnxruntime as ort
    from mmrepvgg_runtime import OnnxModel, read_image
    from mmrepvgg_runtime.image import normalize, run_pipeline
    model = OnnxModel(models['cls'])
    img = read_image(images / 'img1.png')
    x = normalize(run_pipeline(img, model.spec), model.spec)
    assert x.shape == (3, 32, 32)
    logits = ort.InferenceSession(str(models['cls'])).run(None, {'input': x[None]})[0][0]
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(model.classify(img), expected / expected.sum(), rtol=1e-5)


# ---------------------------------------------------------------------------- errors

def cli(*args) -> tuple[int, str]:
    """The CLI in-process: (status, stderr's last line)."""
    import contextlib
    import io
    from mmrepvgg_runtime.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return status, lines[-1] if lines else ''


def test_no_overwrite_without_force(models, images, tmp_path):
    out = tmp_path / 'out'
    assert cli(models['seg'], images, '--out-dir', out, '--quiet')[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    status, line = cli(models['seg'], images, '--out-dir', out, '--quiet')
    assert status == 1 and line.startswith('error: ') and 'pass --force' in line
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert cli(models['seg'], images, '--out-dir', out, '--quiet', '--force')[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temp files left


def test_output_over_an_input_is_refused_even_with_force(models, images):
    """--out-dir = the input folder: img0.png would be written over the input image."""
    before = (images / 'img0.png').read_bytes()
    status, line = cli(models['seg'], images, '--out-dir', images, '--force', '--quiet')
    assert status == 1 and 'is the input' in line
    assert (images / 'img0.png').read_bytes() == before
    assert sorted(p.name for p in images.iterdir()) == ['img0.png', 'img1.png', 'img2.png']


def test_two_inputs_same_stem(models, tmp_path):
    om.write_images(tmp_path / 'a', [(32, 64)])
    om.write_images(tmp_path / 'b', [(32, 64)], seed=1)
    status, line = cli(models['seg'], tmp_path / 'a', tmp_path / 'b', '--out-dir',
                       tmp_path / 'out')
    assert status == 1 and 'would both write' in line
    assert not (tmp_path / 'out').exists()


def test_unreadable_image_fails_before_any_output(models, images, tmp_path):
    (images / 'zz_broken.png').write_text('not an image')
    status, line = cli(models['seg'], images, '--out-dir', tmp_path / 'out')
    assert status == 1 and 'zz_broken.png' in line
    assert not (tmp_path / 'out').exists()


def test_missing_inputs_and_model(models, tmp_path):
    status, line = cli(models['seg'], tmp_path / 'nope.png', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'No such image or folder' in line
    (tmp_path / 'empty').mkdir()
    status, line = cli(models['seg'], tmp_path / 'empty', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'No images' in line
    om.write_images(tmp_path / 'i', [(8, 8)])
    status, line = cli(tmp_path / 'nope.onnx', tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'No such model file' in line
    (tmp_path / 'junk.onnx').write_bytes(b'junk')
    status, line = cli(tmp_path / 'junk.onnx', tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'ONNX Runtime cannot load' in line
    (tmp_path / 'file').write_text('x')
    status, line = cli(models['seg'], tmp_path / 'i', '--out-dir', tmp_path / 'file')
    assert status == 1 and 'is a file' in line


def test_model_without_runtime_metadata(tmp_path):
    model = om.segmentor(tmp_path / 'bare.onnx', None)
    om.write_images(tmp_path / 'i', [(32, 64)])
    status, line = cli(model, tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'has no runtime metadata' in line and 'export' in line


@pytest.mark.parametrize('meta, words', [
    (dict(schema=2), 'schema 2'),
    (dict(task='detection'), "task 'detection'"),
    (dict(pipeline=[dict(type='random_crop')]), 'type must be one of'),
    (dict(pipeline=[dict(type='resize', scale=[0, 4])]), 'two positive ints'),
    (dict(inference=dict(mode='slide', crop_size=[16])), 'slide crop_size'),
    (dict(std=[1, 0, 1]), 'positive'),
])
def test_bad_metadata_is_one_line(tmp_path, meta, words):
    model = om.segmentor(tmp_path / 'bad.onnx', om.seg_meta(**meta))
    om.write_images(tmp_path / 'i', [(32, 64)])
    status, line = cli(model, tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and words in line and 'bad runtime metadata' in line, line


def test_size_the_graph_cannot_take(tmp_path):
    """A static whole-image graph refuses an image whose test-pipeline size differs; a slide
    model refuses an image smaller than its window; each in one line naming the image."""
    whole = om.segmentor(tmp_path / 'static.onnx', om.seg_meta(), hw=(32, 64))
    om.write_images(tmp_path / 'ok', [(16, 32)])  # resizes to 32x64: runs
    assert cli(whole, tmp_path / 'ok', '--out-dir', tmp_path / 'o1', '--quiet')[0] == 0
    om.write_images(tmp_path / 'square', [(40, 40)])  # resizes to 32x32
    status, line = cli(whole, tmp_path / 'square', '--out-dir', tmp_path / 'o2')
    assert status == 1 and 'img0.png' in line and '32x32 input' in line and 'takes 32x64' in line
    slide = om.segmentor(tmp_path / 'slide.onnx', om.seg_meta(
        pipeline=[], inference=dict(mode='slide', crop_size=[16, 16], stride=[12, 12])),
        hw=(16, 16))
    om.write_images(tmp_path / 'small', [(12, 40)])
    status, line = cli(slide, tmp_path / 'small', '--out-dir', tmp_path / 'o3')
    assert status == 1 and 'smaller than the 16x16 sliding window' in line


def test_progress_bar_without_a_terminal():
    import io
    from mmrepvgg_runtime.progress import Progress
    stream = io.StringIO()
    bar = Progress(20, 'model.onnx', stream=stream)
    for _ in range(20):
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith('model.onnx [' + '#' * 30 + '] 20/20')
    quiet = io.StringIO()
    bar = Progress(5, 'x', enabled=False, stream=quiet)
    bar.update(5)
    assert quiet.getvalue() == ''
