"""Issue 19, item 6 and the Low items of 9: one ``error:`` line where tracebacks were, and
what the tools said that was not so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_tool, one_error_line, refused

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'

pytestmark = pytest.mark.usefixtures('one_thread')


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))



# -- a work dir / root that is a link to a folder the tool made ----------------------------

def test_make_tiny_cityscapes_through_a_link(tmp_path, capsys):
    real, link = tmp_path / 'real', tmp_path / 'link'
    tool = load_tool('make_tiny_cityscapes')
    assert tool.main([str(real), '--num-train', '1', '--num-val', '1', '--size', '16', '32']) == 0
    link.symlink_to(real, target_is_directory=True)
    # was OSError: Cannot call rmtree on a symbolic link
    assert tool.main([str(link), '--num-train', '1', '--num-val', '1', '--size', '16',
                      '32']) == 0, capsys.readouterr().err
    assert link.is_symlink() and (real / 'leftImg8bit' / 'val').is_dir()


def test_fresh_work_dir_through_a_link_empties_the_target(tmp_path):
    """compare_qa_digits.py and the demos share the rule (``fresh_work_dir``)."""
    from mmrepvgg.utils.fileio import fresh_work_dir
    real, link = tmp_path / 'real', tmp_path / 'link'
    fresh_work_dir(real)
    (real / 'old.txt').write_text('from a previous run')
    (real / 'sub').mkdir()
    link.symlink_to(real, target_is_directory=True)
    fresh_work_dir(link)
    assert link.is_symlink() and [p.name for p in real.iterdir()] == ['.mmrepvgg-demo']


# -- check_exactness, prepare_cityscapes, --cfg-options -------------------------------------

def test_check_exactness_qarepvgg_with_an_se_arch(capsys):
    status = load_tool('check_exactness').main(['--block', 'QARepVGGBlock', '--arch', 'D2se'])
    line = one_error_line(capsys)
    assert status == 1 and 'D2se' in line and 'QARepVGGBlock' in line


def test_prepare_cityscapes_on_a_corrupt_polygon_file(tmp_path):
    bad = tmp_path / 'gtFine' / 'val' / 'frankfurt' / 'x_gtFine_polygons.json'
    bad.parent.mkdir(parents=True)
    bad.write_text('{"imgHeight": 4, "imgWid')
    proc = subprocess.run([PY, 'tools/prepare_cityscapes.py', str(tmp_path)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    refused(proc, str(bad))  # was a JSONDecodeError traceback


def test_cfg_options_into_a_string_plan(tmp_path, capsys):
    """``model.backbone.dilation_plan.strides=...`` on ``dilation_plan='full'``: mmengine's
    ``TypeError`` traceback."""
    status = load_tool('deploy_convert').main(
        [SEG, str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth'), '--cfg-options',
         'model.backbone.dilation_plan.strides=[1,1,2,2]'])
    line = one_error_line(capsys)
    assert status == 1 and 'dilation_plan' in line
    proc = subprocess.run([PY, 'tools/train.py', SEG, '--work-dir', str(tmp_path / 'w'),
                           '--cfg-options', 'model.backbone.dilation_plan.strides=[1,1,2,2]'],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    refused(proc, 'dilation_plan')


# -- benchmark --render / --update-docs on json that is not a report ------------------------

@pytest.mark.parametrize('content', ['[1, 2]', '"text"', '{}', '{"device_info": 3, '
                                     '"protocol": [], "results": 5, "ratios": {}}'])
def test_render_of_a_json_that_is_not_a_report(tmp_path, content, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text(content)
    status = load_tool('benchmark').main(['--render', str(bad)])
    line = one_error_line(capsys)
    assert status == 1 and 'not a benchmark report' in line and str(bad) in line, line


def test_update_docs_is_all_or_nothing(tmp_path, monkeypatch, capsys):
    """A multi-file --update-docs rewrote the first file, then crashed on the second."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / 'docs' / 'fold_time_cpu_1thread.json', 'good.json')
    Path('bad.json').write_text('[1]')
    first = tmp_path / 'a.md'
    first.write_text('<!-- benchmark: good.json -->\nstale\n<!-- /benchmark -->\n')
    second = tmp_path / 'b.md'
    second.write_text('<!-- benchmark: bad.json -->\nstale\n<!-- /benchmark -->\n')
    status = load_tool('benchmark').main(['--update-docs', str(first), str(second)])
    line = one_error_line(capsys)
    assert status == 1 and 'bad.json' in line
    assert 'stale' in first.read_text()


# -- Low (item 9) ---------------------------------------------------------------------------

def test_compare_qa_digits_refuses_repeated_seeds(tmp_path, capsys):
    """``--seeds 0 0`` failed after training with a missing vis_data/config.py."""
    status = load_tool('compare_qa_digits').main(['--seeds', '0', '0', '--work-dir',
                                                  str(tmp_path / 'w')])
    line = one_error_line(capsys)
    assert status == 1 and '--seeds' in line and not (tmp_path / 'w').exists()


def test_benchmark_peers_for_a_config_is_refused(capsys):
    """``--peers`` was silently ignored for config specs."""
    status = load_tool('benchmark').main(['configs/repvgg-a0_in1k.py', '--peers', '--batch',
                                          '1', '--device', 'cpu'])
    line = one_error_line(capsys)
    assert status == 1 and '--peers' in line and 'configs/repvgg-a0_in1k.py' in line


def test_convert_weights_takes_the_dict_arch_it_suggests(tmp_path):
    """The error suggests a dict --arch; the command line now takes one (as JSON)."""
    from mmrepvgg.models import RepVGG
    spec = {'num_blocks': [1, 1, 1, 1], 'width_factors': [0.25, 0.25, 0.25, 0.25]}
    torch.manual_seed(0)
    backbone = RepVGG(spec, out_indices=(0, 1, 2, 3))
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()}},
               tmp_path / 'custom.pth')

    def convert(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PY, 'tools/convert_weights.py', str(tmp_path / 'custom.pth'),
                               *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                              timeout=300)
    line = refused(convert(str(tmp_path / 'a.pth')), '--arch')
    assert '"num_blocks"' in line, line  # the JSON form is suggested
    proc = convert(str(tmp_path / 'b.pth'), '--arch', json.dumps(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / 'b.pth').is_file()


def test_torch_jit_script_is_documented_as_unsupported():
    """``torch.jit.script`` fails on the backbone; trace / export / compile work: the docs
    must say which (support it or say so)."""
    from mmrepvgg.models import RepVGG
    model = RepVGG('A0', out_indices=(3, )).eval()
    torch.jit.trace(model, torch.randn(1, 3, 32, 32))
    try:
        torch.jit.script(model)
    except Exception:  # noqa: BLE001  (TorchScript's frontend errors have no common type)
        text = (ROOT / 'docs' / 'export.md').read_text()
        assert 'torch.jit.script' in text and 'not supported' in text


class _Stop(Exception):
    pass


def test_calibration_progress_counts_what_the_split_has(tmp_path, monkeypatch):
    """``--calib-images 100000`` showed a bar of 100000 for a split of 1347 images."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from demo.datasets import make_digits_folder
    from mmrepvgg.deploy import build_model
    from mmrepvgg.deploy import onnx_eval
    counts = make_digits_folder(tmp_path / 'digits')
    cfg = Config.fromfile(str(ROOT / 'configs/demo/repvgg-small_digits.py'))
    cfg.merge_from_dict({f'{k}_dataloader.dataset.data_root': str(tmp_path / 'digits')
                         for k in ('train', 'val', 'test')})
    session = SimpleNamespace(get_inputs=lambda: [SimpleNamespace(shape=[1, 3, 32, 32])])
    totals = []

    def bar(*args, total=None, **kwargs):
        totals.append(total)
        raise _Stop  # the total is what this test is about: no need to calibrate

    monkeypatch.setattr(onnx_eval, 'tqdm', bar)
    with pytest.raises(_Stop):
        onnx_eval.capture_inputs(cfg, build_model(cfg), session, 100000)
    assert totals == [counts['train']]
