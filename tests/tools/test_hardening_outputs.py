"""Issue 19, outputs: no tool writes over a file it read or over data without ``--force``.

Item 1 (``tools/test.py --out``), item 2 (every file of a config's ``_base_`` chain is an
input of ``export_onnx``, ``deploy_convert``, ``quantize`` and ``benchmark``), item 7
(``benchmark --update-docs`` on a link) and the early output checks of item 9 (a dangling
link, an unwritable folder).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_tool, one_error_line, refused, run_script

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
CLS = 'configs/demo/repvgg-small_digits.py'
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'

pytestmark = pytest.mark.usefixtures('one_thread')


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def run_tool(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300)



def save_model(config: Path, path: Path) -> Path:
    """A checkpoint of the (untrained) model of ``config``: enough for the output checks."""
    from mmengine.config import Config

    from mmrepvgg.deploy import build_model
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(config)))
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture
def chain(tmp_path) -> dict:
    """A copy of configs/ (the digits config and its ``_base_`` chain), a checkpoint of its
    model, and the digits data."""
    configs = tmp_path / 'configs'
    shutil.copytree(ROOT / 'configs', configs)
    leaf = configs / CLS.split('/', 1)[1]
    ckpt = save_model(leaf, tmp_path / 'ck.pth')
    return dict(leaf=leaf, base=configs / 'repvgg-a0_in1k.py',
                deep=configs / '_base_' / 'models' / 'repvgg_in1k.py', ckpt=ckpt)


# -- item 2: every file of the _base_ chain is an input -------------------------------------

def test_config_files_lists_the_base_chain(chain):
    from mmrepvgg.utils.config import config_files
    files = {Path(f).resolve() for f in config_files(str(chain['leaf']))}
    assert {chain['leaf'].resolve(), chain['base'].resolve(), chain['deep'].resolve()} <= files


@pytest.mark.parametrize('which', ['base', 'deep', 'leaf'])
@pytest.mark.parametrize('tool', ['export_onnx', 'deploy_convert', 'quantize'])
def test_an_output_in_the_base_chain_is_refused(chain, tool, which, capsys):
    """``export_onnx.py leaf.py CKPT base.py --force`` turned base.py into ONNX bytes."""
    target = chain[which]
    before = target.read_bytes()
    status = load_tool(tool).main([str(chain['leaf']), str(chain['ckpt']), str(target),
                                   '--force'])
    line = one_error_line(capsys)
    assert status == 1 and 'is the input' in line and str(target) in line, line
    assert target.read_bytes() == before


@pytest.mark.parametrize('flag', ['--markdown', '--out'])
def test_benchmark_never_writes_over_a_config(chain, flag, capsys):
    """``benchmark.py leaf2.py --markdown leaf2.py --force`` replaced the config."""
    for target in (chain['leaf'], chain['base']):
        before = target.read_bytes()
        status = load_tool('benchmark').main(
            [str(chain['leaf']), flag, str(target), '--force', '--batch', '1', '--shape', '32',
             '32', '--warmup', '0', '--iters', '1', '--variants', 'deploy', '--no-flops',
             '--device', 'cpu'])
        line = one_error_line(capsys)
        assert status == 1 and 'is the input' in line, line
        assert target.read_bytes() == before


def test_complexity_json_never_writes_over_a_config(chain, capsys, monkeypatch):
    target = chain['base']
    before = target.read_bytes()
    status = run_script(monkeypatch, 'tools/complexity.py', str(chain['leaf']), '--json',
                        str(target), '--force')
    line = one_error_line(capsys)
    assert status == 1 and 'is the input' in line, line
    assert target.read_bytes() == before


# -- item 1: tools/test.py --out ------------------------------------------------------------

def test_test_out_never_replaces_the_checkpoint_or_a_config(chain, tmp_path):
    ckpt = chain['ckpt']
    before = ckpt.read_bytes()
    link = tmp_path / 'res.pkl'
    link.symlink_to(ckpt)
    common = ['tools/test.py', str(chain['leaf']), str(ckpt), '--work-dir', str(tmp_path / 'w')]
    hard = ckpt.with_suffix('.pkl')
    os.link(ckpt, hard)  # a hard link: the same file under another name
    for out in (ckpt, link, hard):
        refused(run_tool(common + ['--out', str(out), '--force']), 'is the input')
    refused(run_tool(common + ['--out', str(chain['base']), '--force']), 'is the input')
    assert ckpt.read_bytes() == before


def test_test_out_needs_force_and_a_pickle_name(chain, tmp_path):
    common = ['tools/test.py', str(chain['leaf']), str(chain['ckpt']), '--work-dir',
              str(tmp_path / 'w')]
    existing = tmp_path / 'old.pkl'
    existing.write_bytes(b'keep me')
    refused(run_tool(common + ['--out', str(existing)]), 'exists; pass --force')
    assert existing.read_bytes() == b'keep me'
    refused(run_tool(common + ['--out', str(tmp_path / 'x.txt')]), '.pkl')  # was a ValueError


def test_test_relative_out_goes_under_the_work_dir(chain, tmp_path):
    """A relative --out lands under the work dir, like --show-dir (it landed in the cwd)."""
    from demo.datasets import make_digits_folder
    make_digits_folder(tmp_path / 'digits', test_fraction=0.05)
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    opts = [f'{k}_dataloader.dataset.data_root={tmp_path / "digits"}' for k in ('val', 'test')]
    proc = run_tool([str(ROOT / 'tools/test.py'), str(chain['leaf']), str(chain['ckpt']),
                     '--work-dir', str(tmp_path / 'w'), '--out', 'preds.pkl',
                     '--cfg-options', *opts], cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / 'w' / 'preds.pkl').is_file() and not (cwd / 'preds.pkl').exists()
    assert f'Results will be written to {tmp_path / "w" / "preds.pkl"}' in proc.stdout + \
        proc.stderr


@pytest.fixture(scope='module')
def tiny_cityscapes(tmp_path_factory) -> Path:
    from demo.datasets import make_tiny_cityscapes, prepare_cityscapes
    root = tmp_path_factory.mktemp('cs') / 'cs'
    make_tiny_cityscapes(root, 1, 1, (32, 64))
    prepare_cityscapes(root)
    return root


def test_segmentor_out_never_writes_into_the_data(tiny_cityscapes, tmp_path):
    """``--out <data_root>/leftImg8bit/val/frankfurt`` overwrote the test images."""
    ckpt = save_model(ROOT / SEG, tmp_path / 'seg.pth')
    images = tiny_cityscapes / 'leftImg8bit' / 'val' / 'frankfurt'
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    opts = [f'{k}_dataloader.dataset.data_root={tiny_cityscapes}/' for k in ('val', 'test')]
    for out in (images, tiny_cityscapes, tiny_cityscapes / 'gtFine' / 'new'):
        refused(run_tool(['tools/test.py', SEG, str(ckpt), '--work-dir', str(tmp_path / 'w'),
                          '--out', str(out), '--force', '--cfg-options', *opts]),
                'dataset folder')
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    old = tmp_path / 'preds'
    old.mkdir()
    (old / 'frankfurt_000000_000019_leftImg8bit.png').write_bytes(b'old')
    refused(run_tool(['tools/test.py', SEG, str(ckpt), '--work-dir', str(tmp_path / 'w'),
                      '--out', str(old), '--cfg-options', *opts]), 'pass --force')


# -- item 7: --update-docs through a link ---------------------------------------------------

def test_update_docs_writes_through_a_link(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / 'docs' / 'fold_time_cpu_1thread.json', tmp_path / 'bench.json')
    real = tmp_path / 'real.md'
    real.write_text('# Doc\n\n<!-- benchmark: bench.json -->\nstale\n<!-- /benchmark -->\n')
    link = tmp_path / 'LINK.md'
    link.symlink_to(real)
    assert load_tool('benchmark').main(['--update-docs', str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    text = real.read_text()
    assert 'stale' not in text and '--render bench.json' in text
    assert f'a link to {real}' in capsys.readouterr().out


# -- item 9: outputs that cannot be written fail before the work ----------------------------

def test_a_dangling_link_output_fails_before_the_export(chain, tmp_path, monkeypatch, capsys):
    from mmrepvgg.deploy import build
    from tests.helpers import never_called
    dangling = tmp_path / 'out.onnx'
    dangling.symlink_to(tmp_path / 'missing' / 'target.onnx')
    monkeypatch.setattr(build, 'load_mapped_state', never_called)
    status = load_tool('export_onnx').main([str(chain['leaf']), str(chain['ckpt']),
                                            str(dangling)])
    line = one_error_line(capsys)
    assert status == 1 and 'link' in line and str(dangling) in line, line
    assert dangling.is_symlink()


def test_an_unwritable_folder_fails_before_the_work(tmp_path, monkeypatch):
    """The message names the output, not a temporary file."""
    from mmrepvgg.utils.fileio import check_output_path, write_bytes_atomic
    folder = tmp_path / 'ro'
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **kw: False if Path(p) == folder
                        and mode & os.W_OK else real_access(p, mode, **kw))
    with pytest.raises(PermissionError, match=rf'{folder / "a.onnx"}.*not writable'):
        check_output_path(folder / 'a.onnx')
    with pytest.raises(PermissionError, match='not writable') as info:
        write_bytes_atomic(folder / 'a.onnx', b'x')
    assert '.tmp' not in str(info.value)
