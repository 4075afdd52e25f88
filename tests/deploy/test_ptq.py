"""tools/quantize.py's guarantees (issue 18, point 4): every argument and output checked before
anything is written, nothing partial on failure, temporary files removed on SIGTERM,
metadata that never claims int8 where there is none, --calib-dir, and every quantized Conv
running as an integer conv in ONNX Runtime (checked on its optimized graph)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrepvgg.deploy.onnx import read_metadata
from mmrepvgg.deploy.quantize import check_integer_convs, executed_convs, qdq_summary
from mmrepvgg.utils.errors import ExportError
from mmrepvgg_runtime import RUNTIME_KEY
from tests.deploy.helpers import quantize_checkpoint
from tests.helpers import load_tool, never_called, one_error_line

ROOT = Path(__file__).resolve().parents[2]
quantize_tool = load_tool('quantize')
LAYERS = 10  # 9 RepVGG blocks and the linear head
CONVS = 9


def test_int8_file_runs_integer_convs_and_says_so(trained_digits, tmp_path):
    cfg, ckpt = trained_digits
    out = tmp_path / 'int8.onnx'
    result = quantize_checkpoint(cfg, ckpt, out, calib_images=16, sensitivity=False,
                                 shape=(32, 32), threads=1, progress=False,
                                 fp32_out=tmp_path / 'fp32.onnx')
    executed = result['graph']['executed']
    assert executed['integer_convs'] == CONVS and executed['float_convs'] == 0
    assert f'runs {CONVS} of {CONVS} convolutions as integer convolutions' in executed['summary']
    assert executed['summary'] in (tmp_path / 'int8.md').read_text()
    # independently: the optimized graph of the written file
    again = executed_convs(out)
    assert (again.integer, again.float) == (CONVS, 0)
    meta = read_metadata(out)
    assert meta['precision'] == 'int8' and meta[RUNTIME_KEY]['precision'] == 'int8'
    assert meta['quantization']['int8_layers'] == LAYERS == len(qdq_summary(out)
                                                                ['quantized_layers'])
    assert meta['quantization']['integer_convs_in_onnxruntime'] == CONVS
    assert read_metadata(tmp_path / 'fp32.onnx')[RUNTIME_KEY]['precision'] == 'fp32'
    # the torch-free runtime runs both files (torch blocked), with nearly the same top-1
    import json

    from tests.runtime.test_cli import assert_torch_free, run_blocked
    folder = tmp_path / 'digits'
    folder.mkdir()
    for img in sorted((Path(cfg.test_dataloader.dataset.data_root) / 'test').rglob('*.png'))[:30]:
        shutil.copy(img, folder / f'{img.parent.name}_{img.name}')
    labels = {}
    for name in ('fp32', 'int8'):
        proc = run_blocked(tmp_path / f'{name}.onnx', folder, '--out-dir', tmp_path / name,
                           '--quiet')
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert_torch_free(proc)
        result = json.loads((tmp_path / name / 'predictions.json').read_text())
        assert result['precision'] == name
        labels[name] = [p['pred_label'] for p in result['predictions']]
    assert np.mean(np.equal(labels['fp32'], labels['int8'])) >= 0.9


def test_keep_float_everything_is_refused_not_labelled_int8(trained_digits, tmp_path):
    """--keep-float 1000 used to write a model with 0 int8 tensors labelled 'int8 per-channel'."""
    cfg, ckpt = trained_digits
    out = tmp_path / 'all_float.onnx'
    with pytest.raises(ExportError, match=f'keeps all {LAYERS} weighted layers in float'):
        quantize_checkpoint(cfg, ckpt, out, calib_images=4, keep_float=1000, shape=(32, 32),
                            threads=1, progress=False, fp32_out=tmp_path / 'f.onnx')
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_default_shape_that_does_not_fit_writes_nothing(trained_digits, tmp_path, capsys):
    """Without --shape the digits config (no resize in its test pipeline) is refused, and
    nothing is written, so the corrected rerun needs no --force."""
    cfg, ckpt = trained_digits
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    out, fp32 = tmp_path / 'q' / 'int8.onnx', tmp_path / 'q' / 'fp32.onnx'
    args = [str(cfg_file), ckpt, str(out), '--fp32-out', str(fp32), '--no-sensitivity',
            '--calib-images', '4', '--threads', '1']
    assert quantize_tool.main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith('error: ') and '--shape H W' in err[-1]
    assert not out.exists() and not fp32.exists()
    assert not (tmp_path / 'q' / 'int8.json').exists()
    assert quantize_tool.main(args + ['--shape', '32', '32']) == 0
    assert out.is_file() and fp32.is_file() and (tmp_path / 'q' / 'int8.md').is_file()


def test_failure_late_in_the_run_leaves_nothing(trained_digits, tmp_path, monkeypatch):
    """An error after the int8 graph is made (here: in the evaluation) writes no output."""
    cfg, ckpt = trained_digits
    monkeypatch.setattr('mmrepvgg.deploy.quantize._eval_and_time', never_called)
    with pytest.raises(AssertionError):
        quantize_checkpoint(cfg, ckpt, tmp_path / 'a.onnx', calib_images=4, sensitivity=False,
                            run_eval=True, shape=(32, 32), threads=1, progress=False,
                            fp32_out=tmp_path / 'b.onnx')
    assert list(tmp_path.iterdir()) == []


def test_calib_dir(trained_digits, tmp_path, monkeypatch):
    cfg, ckpt = trained_digits
    folder = tmp_path / 'my images'
    src = Path(cfg.test_dataloader.dataset.data_root) / 'test'
    folder.mkdir()
    for img in sorted(src.rglob('*.png'))[:12]:
        shutil.copy(img, folder / f'{img.parent.name}_{img.name}')
    result = quantize_checkpoint(cfg, ckpt, tmp_path / 'c.onnx', calib_images=8,
                                 sensitivity=False, shape=(32, 32), threads=1, progress=False,
                                 calib_dir=folder)
    calib = result['quantization']['calibration']
    assert calib['inputs'] == 8 and 'my images (12 images)' in calib['split']
    # bad folders fail before any work (the exporter is never reached), in one line
    monkeypatch.setattr('mmrepvgg.deploy.quantize.export_onnx', never_called)
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    (tmp_path / 'empty').mkdir()
    for bad, words in ((tmp_path / 'nope', 'does not exist'), (tmp_path / 'empty', 'No images'),
                       (tmp_path / 'digits.py', 'is not a directory')):
        status = quantize_tool.main([str(cfg_file), ckpt, str(tmp_path / 'x.onnx'),
                                     '--calib-dir', str(bad), '--shape', '32', '32'])
        assert status == 1
    assert not (tmp_path / 'x.onnx').exists()


def test_calib_dir_messages(tmp_path):
    from mmrepvgg.deploy.onnx_eval import calib_images
    with pytest.raises(FileNotFoundError, match='does not exist'):
        calib_images(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='--calib-dir: No images'):
        calib_images(tmp_path / 'empty')


def test_sigterm_mid_calibration_removes_the_temporary_files(trained_digits, tmp_path):
    cfg, ckpt = trained_digits
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    tmp = tmp_path / 'tmp'
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, 'tools/quantize.py', str(cfg_file), ckpt, str(tmp_path / 'q.onnx'),
         '--shape', '32', '32', '--calib-images', '1000', '--calib-method', 'entropy',
         '--no-sensitivity', '--threads', '1', '--fp32-out', str(tmp_path / 'f.onnx')],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith('mmrepvgg-calib-') for p in tmp.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    assert any(p.name.startswith('mmrepvgg-quant-') for p in tmp.iterdir())
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    # no mmrepvgg-quant-*, mmrepvgg-calib-*, nor ONNX Runtime's quantizer's own; ``.ses`` is
    # a session-id file an imported library writes at import time, not a temporary file
    assert [p.name for p in tmp.iterdir() if p.name != '.ses'] == []
    assert not (tmp_path / 'q.onnx').exists() and not (tmp_path / 'f.onnx').exists()


# ------------------------------------------------------------------------ the graph check

def _folded_repvgg(path: Path, exporter: str) -> Path:
    """A small folded RepVGG backbone exported to ``path`` (its last feature map out)."""
    import onnx
    import torch

    from mmrepvgg import reparameterize
    from mmrepvgg.deploy.onnx import export_module
    from mmrepvgg.models import RepVGG

    class Last(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = RepVGG(arch=dict(num_blocks=(1, 1, 1, 1),
                                             width_factors=(0.25, 0.25, 0.25, 0.25)))

        def forward(self, x):
            return self.backbone(x)[-1]

    torch.manual_seed(0)
    model = reparameterize(Last().eval())
    onnx.save(export_module(model, torch.randn(1, 3, 16, 16), exporter, 17 if exporter ==
                            'torchscript' else 18), str(path))
    return path


def _qdq(src: Path, dst: Path) -> Path:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{'input': np.random.default_rng(i).standard_normal(
                (1, 3, 16, 16)).astype(np.float32)} for i in range(2)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                      per_channel=True)
    return dst


def test_a_conv_left_float_is_caught(tmp_path):
    """The TorchScript exporter puts a folded RepVGG conv bias behind an Identity node; without
    quant_pre_process that QDQ Conv is not fused and runs in float: the check fails on it."""
    good = executed_convs(_qdq(_folded_repvgg(tmp_path / 'a.onnx', 'dynamo'),
                               tmp_path / 'a8.onnx'))
    assert (good.integer, good.float) == (5, 0)
    assert 'runs 5 of 5 convolutions as integer' in check_integer_convs(good)
    bad = executed_convs(_qdq(_folded_repvgg(tmp_path / 'b.onnx', 'torchscript'),
                              tmp_path / 'b8.onnx'))
    assert bad.float >= 1 and bad.float_nodes and bad.integer + bad.float == 5
    with pytest.raises(ExportError, match='run in float in ONNX Runtime'):
        check_integer_convs(bad, where='b8.onnx')
    check_integer_convs(bad, strict=False)  # warns, returns the summary
    assert check_integer_convs(bad, kept_float=bad.float).startswith('ONNX Runtime runs')
    fp32 = executed_convs(tmp_path / 'a.onnx')
    assert (fp32.integer, fp32.float) == (0, 5)
    with pytest.raises(ExportError, match='no convolution runs as an integer'):
        check_integer_convs(fp32, kept_float=5)


# ------------------------------------------------------------------ refused before any work

def _no_data_config(tmp_path: Path) -> tuple[Path, Path]:
    """A small classifier config whose dataset folders do not exist, and a checkpoint."""
    from tests.deploy.test_runtime_meta import cls_config, save
    cfg = cls_config()
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(tmp_path / 'no_data')
    return save(cfg, tmp_path, 'cls')


def _image_folder(folder: Path, count: int = 2) -> Path:
    import cv2
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f'{i}.png'), np.full((40, 40, 3), 40 * i, np.uint8))
    return folder


def test_eval_without_the_dataset_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """issue 22: ``--eval`` without the dataset failed only after the export and calibration;
    now one line with tools/test.py's data-root hint, before the checkpoint is read."""
    import torch
    cfg_file, ckpt = _no_data_config(tmp_path)
    monkeypatch.setattr(torch, 'load', never_called)
    out = tmp_path / 'x.onnx'
    calib = _image_folder(tmp_path / 'calib')  # calibration data there: only --eval lacks it
    assert quantize_tool.main([str(cfg_file), str(ckpt), str(out), '--eval', '--calib-dir',
                               str(calib), '--shape', '32', '32']) == 1
    line = one_error_line(capsys)
    assert 'Dataset folder not found' in line and 'test_dataloader.dataset.data_root=DIR' in line
    # calibrating on the train split needs it too
    assert quantize_tool.main([str(cfg_file), str(ckpt), str(out), '--shape', '32', '32']) == 1
    assert 'train_dataloader.dataset.data_root=DIR' in one_error_line(capsys)
    assert not out.exists()


def test_calib_dir_file_that_is_no_image_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """issue 23 item 8: a text file named a.png gave mmcv's AssertionError traceback."""
    import torch
    cfg_file, ckpt = _no_data_config(tmp_path)
    folder = _image_folder(tmp_path / 'calib')
    (folder / 'a.png').write_text('not an image')
    monkeypatch.setattr(torch, 'load', never_called)
    assert quantize_tool.main([str(cfg_file), str(ckpt), str(tmp_path / 'x.onnx'),
                               '--calib-dir', str(folder), '--shape', '32', '32']) == 1
    line = one_error_line(capsys)
    assert str(folder / 'a.png') in line and 'not an image' in line
