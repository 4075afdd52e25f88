"""The runtime keeps docs/runtime.md's promises on hostile input: one ``error:`` line, nothing
written (all or nothing), files with the umask's mode, the metadata validated as a schema."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.runtime import onnx_models as om
from tests.runtime.test_cli import ROOT, cli


def test_a_failing_image_leaves_nothing_written(tmp_path):
    """The third image of a folder has a size the static graph refuses: the first two
    outputs are not written either (a new --out-dir is not even created)."""
    model = om.segmentor(tmp_path / 'static.onnx', om.seg_meta(), hw=(32, 64))
    om.write_images(tmp_path / 'imgs', [(16, 32), (32, 64), (40, 40)])  # img2 -> 32x32
    status, line = cli(model, tmp_path / 'imgs', '--out-dir', tmp_path / 'new' / 'out',
                       '--quiet')
    assert status == 1 and 'img2.png' in line and 'takes 32x64' in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ['imgs', 'static.onnx']
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')
    status, _ = cli(model, tmp_path / 'imgs', '--out-dir', tmp_path / 'out', '--quiet')
    assert status == 1 and sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['keep.txt']


def test_outputs_follow_the_umask(tmp_path):
    """Label maps, overlays and predictions.json get 0644 under umask 022, as every other
    file the project writes (not mkstemp's 0600)."""
    om.write_images(tmp_path / 'imgs', [(32, 64)])
    seg = om.segmentor(tmp_path / 'seg.onnx', om.seg_meta())
    cls = om.classifier(tmp_path / 'cls.onnx', om.cls_meta())
    old = os.umask(0o022)
    try:
        assert cli(seg, tmp_path / 'imgs', '--out-dir', tmp_path / 'seg', '--quiet')[0] == 0
        assert cli(cls, tmp_path / 'imgs', '--out-dir', tmp_path / 'cls', '--quiet')[0] == 0
    finally:
        os.umask(old)
    written = [*(tmp_path / 'seg').iterdir(), *(tmp_path / 'cls').iterdir()]
    assert sorted(p.name for p in written) == ['img0.png', 'img0_overlay.jpg',
                                               'predictions.json']
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {'0o644'}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` (signature, IHDR, an empty IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b''))
            + chunk(b'IEND', b''))


def _jpeg_header(width: int, height: int) -> bytes:
    """A JPEG that declares ``width x height`` (SOI, JFIF APP0, a baseline SOF0, EOI)."""
    app0 = b'JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00'
    sof = struct.pack('>BHHB', 8, height, width, 3) + b'\x01\x11\x00\x02\x11\x00\x03\x11\x00'
    return (b'\xff\xd8' + b'\xff\xe0' + struct.pack('>H', len(app0) + 2) + app0
            + b'\xff\xc0' + struct.pack('>H', len(sof) + 2) + sof + b'\xff\xd9')


@pytest.mark.parametrize('ext, make', [('.png', _png_header), ('.jpg', _jpeg_header)])
def test_an_image_too_large_to_decode_is_one_line(tmp_path, ext, make):
    """A 40000x30000 image (over OpenCV's decoding limit) is refused by its header, in one
    line, before any work: not a ``cv2.error`` traceback."""
    model = om.segmentor(tmp_path / 'seg.onnx', om.seg_meta())
    (tmp_path / 'imgs').mkdir()
    (tmp_path / 'imgs' / f'huge{ext}').write_bytes(make(40000, 30000))
    status, line = cli(model, tmp_path / 'imgs', '--out-dir', tmp_path / 'out')
    assert status == 1 and 'huge' in line and '40000x30000' in line, line
    assert not (tmp_path / 'out').exists()
    from mmrepvgg_runtime import RuntimeInputError, read_image
    with pytest.raises(RuntimeInputError, match='40000x30000'):
        read_image(tmp_path / 'imgs' / f'huge{ext}')


def _int64_input_model(path: Path) -> Path:
    """A foreign graph (``Cast`` then a segmentor's conv) whose input is int64."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.ones((5, 3, 4, 4), np.float32)
    inp = helper.make_tensor_value_info('input', TensorProto.INT64, ['N', 3, 'H', 'W'])
    out = helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', 5, 'h', 'w'])
    nodes = [helper.make_node('Cast', ['input'], ['x'], to=TensorProto.FLOAT),
             helper.make_node('Conv', ['x', 'w'], ['logits'], kernel_shape=[4, 4],
                              strides=[4, 4])]
    graph = helper.make_graph(nodes, 'int64', [inp], [out], [numpy_helper.from_array(w, 'w')])
    return om._save(graph, path, om.seg_meta())


@pytest.mark.parametrize('name, meta, words', [
    ('wrong type', dict(inference='slide'), 'inference must be an object'),
    ('wrong type', dict(inference=['whole']), 'inference must be an object'),
    ('NaN', dict(mean=[float('nan')] * 3), 'finite'),
    ('string bool', dict(bgr_to_rgb='false'), 'bgr_to_rgb must be true or false'),
    ('string bool', dict(align_corners='false'), 'align_corners must be true or false'),
    ('string bool', dict(pipeline=[dict(type='resize', scale=[64, 32], keep_ratio='false')]),
     'keep_ratio must be true or false'),
    ('absurd scale', dict(pipeline=[dict(type='resize', scale=[100000, 2],
                                         keep_ratio=False)]), 'resize scale'),
    ('bool schema', dict(schema=True), 'schema True'),
    ('threshold', dict(threshold=7.5), 'threshold'),
])
def test_metadata_is_validated_as_a_schema(tmp_path, name, meta, words):
    """Wrong types, non-finite numbers, strings for booleans and absurd sizes are refused
    in one line when the model is loaded (not a traceback, not a silently wrong result)."""
    model = om.segmentor(tmp_path / 'bad.onnx', om.seg_meta(**meta))
    om.write_images(tmp_path / 'i', [(32, 64)])
    status, line = cli(model, tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'bad runtime metadata' in line and words in line, (name, line)
    assert not (tmp_path / 'o').exists()


def test_a_graph_that_does_not_fit_its_metadata_is_one_line(tmp_path):
    """A classifier file claiming ``task: segmentation``, a graph with an int64 input: each
    refused in one line when loaded."""
    om.write_images(tmp_path / 'i', [(32, 64)])
    liar = om.classifier(tmp_path / 'liar.onnx', om.seg_meta(), hw=('H', 'W'))
    status, line = cli(liar, tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and 'says segmentation' in line and 'tensor(float)' in line, line
    status, line = cli(_int64_input_model(tmp_path / 'int64.onnx'), tmp_path / 'i',
                       '--out-dir', tmp_path / 'o')
    assert status == 1 and 'one float NCHW image' in line and 'int64' in line, line
    assert not (tmp_path / 'o').exists()


def test_a_file_exported_without_runtime_metadata_names_the_option(tmp_path):
    """An mmrepvgg export made with --no-runtime-meta (its other metadata is there) is told
    to export again without that option, not to use 'this version'."""
    model = om.segmentor(tmp_path / 'bare.onnx', None,
                         extra=dict(mmrepvgg_version='1.0.0', task='segmentation'))
    om.write_images(tmp_path / 'i', [(32, 64)])
    status, line = cli(model, tmp_path / 'i', '--out-dir', tmp_path / 'o')
    assert status == 1 and '--no-runtime-meta' in line and 'this version' not in line, line


def test_without_opencv_the_runtime_says_so_in_one_line(tmp_path):
    """``tools/infer_onnx.py`` on a machine without opencv-python: one line, status 1."""
    model = om.segmentor(tmp_path / 'seg.onnx', om.seg_meta())
    code = ('import runpy, sys; sys.modules["cv2"] = None; '
            'sys.argv = ["infer_onnx.py"] + sys.argv[1:]; '
            f'runpy.run_path({str(ROOT / "tools" / "infer_onnx.py")!r}, run_name="__main__")')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-c', code, str(model), str(tmp_path),
                           '--out-dir', str(tmp_path / 'o')], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith('error: cv2 is not installed: pip install opencv-python')


def test_predictions_json_is_unchanged_in_form(tmp_path):
    """The classifier's predictions.json keeps its fields (the writer moved, not the format)."""
    om.write_images(tmp_path / 'i', [(32, 64)])
    cls = om.classifier(tmp_path / 'cls.onnx', om.cls_meta())
    assert cli(cls, tmp_path / 'i', '--out-dir', tmp_path / 'o', '--quiet')[0] == 0
    data = json.loads((tmp_path / 'o' / 'predictions.json').read_text())
    assert sorted(data) == ['model', 'precision', 'predictions', 'task', 'topk']
    assert data['topk'] == 3 and len(data['predictions'][0]['topk']) == 3


def test_sigterm_mid_folder_leaves_nothing(tmp_path):
    """SIGTERM while the second of three images runs: exit status 143, no output and no
    staging folder left (the signal arrives from inside the run, so no timing is involved)."""
    model = om.segmentor(tmp_path / 'seg.onnx', om.seg_meta())
    om.write_images(tmp_path / 'imgs', [(32, 64)] * 3)
    (tmp_path / 'out').mkdir()
    code = f'''
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from mmrepvgg_runtime import model
from mmrepvgg_runtime.cli import main
real, calls = model.OnnxModel.segment, []
def segment(self, img):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self, img)
model.OnnxModel.segment = segment
sys.exit(main(sys.argv[1:]))
'''
    proc = subprocess.run([sys.executable, '-c', code, str(model), str(tmp_path / 'imgs'),
                           '--out-dir', str(tmp_path / 'out'), '--quiet'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert list((tmp_path / 'out').iterdir()) == []
