"""The tools' one way to report bad input: one ``error:`` line, non-zero exit, no traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrepvgg.cli import run_tool
from mmrepvgg.utils.errors import CheckpointError
from tests.helpers import one_error_line, run_script

ROOT = Path(__file__).resolve().parents[2]


def test_run_tool_reports_bad_input_and_keeps_bugs_loud(capsys):
    def bad_file():
        raise CheckpointError('x.pth is truncated or corrupt')

    assert run_tool(bad_file) == 1
    assert one_error_line(capsys) == 'error: x.pth is truncated or corrupt'
    assert run_tool(lambda: None) == 0

    def interrupted():
        raise KeyboardInterrupt

    assert run_tool(interrupted) == 130
    assert 'interrupted' in one_error_line(capsys)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_tool(lambda: 1 / 0)
    assert run_tool(lambda: {}['k'], (KeyError, )) == 1  # a KeyError without its quotes
    assert one_error_line(capsys) == 'error: k'


@pytest.mark.parametrize('tool,argv,match', [
    ('complexity', ['A0', 'ResNet-5O'], "Unknown model 'ResNet-5O'"),
    ('complexity', ['configs/no_such_config.py'], 'Config not found'),
    ('benchmark', ['A0', 'configs/no_such_config.py'],
     'Config not found: configs/no_such_config.py'),
    ('benchmark', ['A0', 'timm:Z1'], "Unknown arch 'Z1' in 'timm:Z1'"),
    ('check_exactness', ['--arch', 'A0', 'C9'], "Unknown RepVGG arch 'C9'"),
    ('check_exactness', ['--dtype', 'fp16', '--checkpoint', 'configs/repvgg-a0_in1k.py',
                         'no_such.pth'], 'Checkpoint not found: no_such.pth'),
    ('check_exactness', ['--dtype', 'fp16', '--arch', 'A0', '--device', 'gpu0'],
     "--device gpu0: Invalid device string: 'gpu0'"),
    ('prepare_cityscapes', ['no_such_folder'], 'No *_gtFine_polygons.json under'),
])
def test_bad_names_and_files_are_one_line_errors(tool, argv, match, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert run_script(monkeypatch, f'tools/{tool}.py', *argv) == 1
    assert match in one_error_line(capsys)


@pytest.mark.parametrize('tool,argv', [
    ('tools/benchmark.py', ['A0', 'timm:A0', '--batch', '1', '--shape', '32', '32']),
    ('tools/benchmark.py', ['--measure-peak']),
    ('tools/gpu/peers_weights.py', ['A0']),
    ('tools/check_exactness.py', ['--dtype', 'fp16', '--arch', 'A0']),
    ('tools/check_exactness.py', ['--dtype', 'bf16', '--checkpoint',
                                  'configs/repvgg-a0_in1k.py', 'no_such.pth']),
])
@pytest.mark.parametrize('device,match', [
    ('cuda', '--device cuda: CUDA is not available on this machine'),
    ('cuda:1', '--device cuda:1: CUDA is not available on this machine'),
    ('gpu', '--device gpu: Expected one of cpu, cuda'),
    ('gpu0', "--device gpu0: Invalid device string: 'gpu0'"),
    ('meta', '--device meta: use one of cpu, cuda'),
])
def test_a_device_that_is_not_there_is_refused_before_any_model_is_built(
        tool, argv, device, match, monkeypatch, capsys):
    """CUDA absent (as on the CPU CI; forced here) or a bad device string: one error line,
    exit 1, and nothing built or loaded first."""
    import torch

    import mmrepvgg.deploy.build as build
    import projects.benchmark.models as models
    import projects.benchmark.peers as peers
    from mmrepvgg.models.backbone import RepVGG

    def built(*args, **kwargs):
        raise AssertionError('a model was built before the device was checked')

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(models, 'build_model_cfg', built)  # every classifier and baseline
    monkeypatch.setattr(models, 'build_model', built)  # every config
    monkeypatch.setattr(peers, 'build_model_cfg', built)  # every mmpretrain peer
    monkeypatch.setattr(RepVGG, '__init__', built)  # every backbone
    monkeypatch.setattr(build, 'load_mapped_state', built)  # a checkpoint
    monkeypatch.chdir(ROOT)
    assert run_script(monkeypatch, tool, *argv, '--device', device) == 1
    assert one_error_line(capsys).startswith(f'error: {match}')


def test_complexity_json_is_written_atomically_and_never_clobbered(tmp_path, monkeypatch,
                                                                    capsys):
    def run(*argv: str) -> int:
        monkeypatch.chdir(ROOT)
        return run_script(monkeypatch, 'tools/complexity.py', *argv)

    out = tmp_path / 'rows.json'
    out.write_text('keep')
    assert run('A0', '--json', str(out)) == 1
    assert 'exists; pass --force' in one_error_line(capsys) and out.read_text() == 'keep'
    config = tmp_path / 'a0.py'
    config.write_text("_base_ = '%s'\n" % (ROOT / 'configs/repvgg-a0_in1k.py'))
    assert run(str(config), '--json', str(config), '--force') == 1
    assert 'is the input' in one_error_line(capsys)
    assert run('A0', '--json', str(out), '--force') == 0
    assert json.loads(out.read_text())[0]['name'] == 'RepVGG-A0'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a0.py', 'rows.json']


TOOLS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob('tools/*.py'),
                                                  *ROOT.glob('tools/gpu/*.py')]
               if p.name != 'mmcv_lite_ext.py')  # (a module copied into mmcv, not a tool)


@pytest.mark.parametrize('tool', TOOLS)
def test_every_tool_prints_its_help(tool, monkeypatch, capsys):
    """`python tools/X.py --help` works (benchmark.py's help once crashed on a '%')."""
    assert run_script(monkeypatch, tool, '--help') == 0
    assert capsys.readouterr().out.startswith('usage: ')


@pytest.mark.parametrize('tool', ['demo', 'demo_cls', 'demo_int8'])
def test_demos_refuse_a_folder_they_did_not_make_in_one_line(tool, tmp_path, monkeypatch,
                                                             capsys):
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thesis.tex').write_text('keep')
    assert run_script(monkeypatch, f'tools/{tool}.py', '--work-dir', str(mine)) == 1
    assert 'was not made by' in one_error_line(capsys)
    assert [p.name for p in mine.iterdir()] == ['thesis.tex']
