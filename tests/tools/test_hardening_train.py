"""Issue 19, training: a strict ``--resume`` (item 3), ``--amp`` on the CPU (item 5), several
CPU processes (item 8: the logged number is the checkpoint's; nothing left in the current
directory, item 9)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def run(cmd: list[str], cwd: Path = ROOT, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def refused(proc: subprocess.CompletedProcess, *match: str) -> str:
    """One ``error:`` line holding every ``match``, status 1, no traceback."""
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and all(m in errors[0] for m in match), proc.stderr[-3000:]
    return errors[0]


def opts(root: Path, iters: int) -> list[str]:
    return [*(f'{k}_dataloader.dataset.data_root={root}/' for k in ('train', 'val', 'test')),
            f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'train_dataloader.batch_size=2']


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    from demo.datasets import make_tiny_cityscapes, prepare_cityscapes
    root = tmp_path_factory.mktemp('cs') / 'cs'
    make_tiny_cityscapes(root, 4, 2, (32, 64))
    prepare_cityscapes(root)
    return root


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    """One iteration of the tiny PSPNet config: ``iter_1.pth`` and ``iter_1_deploy.pth``."""
    work = tmp_path_factory.mktemp('train')
    ok(run([PY, 'tools/train.py', SEG, '--work-dir', str(work), '--cfg-options',
            *opts(data, 1)]))
    assert (work / 'iter_1_deploy.pth').is_file()
    return work / 'iter_1.pth'


def resume(ckpt: Path, data: Path, work: Path) -> subprocess.CompletedProcess:
    return run([PY, 'tools/train.py', SEG, '--work-dir', str(work), '--resume', str(ckpt),
                '--cfg-options', *opts(data, 2)])


# -- item 3: --resume is strict -------------------------------------------------------------

def test_resume_with_a_missing_key_is_refused(trained, data, tmp_path):
    ckpt = torch.load(trained, weights_only=False)
    key = next(k for k in ckpt['state_dict'] if k.endswith('running_mean'))
    del ckpt['state_dict'][key]
    torch.save(ckpt, tmp_path / 'missing.pth')
    refused(resume(tmp_path / 'missing.pth', data, tmp_path / 'w'), 'missing', key)


def test_resume_from_a_deployed_checkpoint_is_refused(trained, data, tmp_path):
    """It was a ``KeyError: 'message_hub'`` traceback."""
    refused(resume(trained.with_name('iter_1_deploy.pth'), data, tmp_path / 'w'),
            'deployed')


def test_resume_from_a_qarepvgg_checkpoint_into_repvgg_is_refused(trained, data, tmp_path):
    """It loaded non-strictly, then the optimizer raised a ``ValueError`` traceback."""
    from mmengine.config import Config

    from mmrepvgg.deploy import build_model
    cfg = Config.fromfile(str(ROOT / SEG))
    cfg.model.backbone.block_cfg = dict(type='QARepVGGBlock')
    ckpt = torch.load(trained, weights_only=False)
    ckpt['state_dict'] = build_model(cfg).state_dict()
    torch.save(ckpt, tmp_path / 'qa.pth')
    refused(resume(tmp_path / 'qa.pth', data, tmp_path / 'w'), 'QARepVGG')


def test_resume_from_the_checkpoint_itself_still_works(trained, data, tmp_path):
    """The regression guard: a fitting checkpoint resumes."""
    out = ok(resume(trained, data, tmp_path / 'w'))
    assert 'resumed' in out.lower() and (tmp_path / 'w' / 'iter_2.pth').is_file()


# -- issue 23: no code from a checkpoint (item 1), resume under another geometry (item 3) ----

def test_resume_never_runs_config_code_from_the_checkpoint(trained, data, tmp_path):
    """mmengine's ``Runner.resume`` executes ``meta['config']`` (a .py config text): a
    checkpoint that passes the weights-only check ran it."""
    marker = tmp_path / 'MARKER'
    ckpt = torch.load(trained, weights_only=False)
    ckpt['meta']['config'] = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    torch.save(ckpt, tmp_path / 'code.pth')
    out = ok(resume(tmp_path / 'code.pth', data, tmp_path / 'w'))
    assert not marker.exists() and 'resumed' in out.lower()


def test_resume_under_another_geometry_is_refused_in_one_line(trained, data, tmp_path):
    """It logged one INFO line and trained on under the other geometry."""
    proc = run([PY, 'tools/train.py', SEG, '--work-dir', str(tmp_path / 'w'), '--resume',
                str(trained), '--cfg-options', *opts(data, 2), 'model.backbone.dilation_plan=None'])
    refused(proc, '--resume', 'another geometry', 'load_from')
    assert not list((tmp_path / 'w').glob('*.pth'))


# -- item 5: --amp on the CPU ---------------------------------------------------------------

def test_amp_on_the_cpu_is_one_line(data, tmp_path):
    proc = run([PY, 'tools/train.py', SEG, '--work-dir', str(tmp_path / 'w'), '--amp',
                '--cfg-options', *opts(data, 1)])
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible: --amp runs there')
    refused(proc, '--amp', 'GPU')


def test_the_docs_do_not_promise_amp_on_the_cpu():
    text = (ROOT / 'README.md').read_text() + (ROOT / 'docs' / 'training.md').read_text()
    assert re.search(r'--amp[^\n]*(needs|only on) a GPU', text), 'say that --amp needs a GPU'


# -- item 8 and 9: several CPU processes ----------------------------------------------------

def _val_miou(text: str) -> float:
    line = [x for x in text.splitlines() if 'Iter(val)' in x and 'mIoU:' in x][-1]
    return float(line.split('mIoU:')[1].split()[0])


def _test_miou(text: str) -> float:
    line = [x for x in text.splitlines() if 'Iter(test)' in x and 'mIoU:' in x][-1]
    return float(line.split('mIoU:')[1].split()[0])


def test_two_cpu_processes_log_what_the_checkpoint_scores(data, tmp_path):
    """The validation logged at the end is the saved checkpoint's (BN buffers averaged over
    the processes before it), the log says so, and neither dist_train.sh nor dist_test.sh
    leaves a ``.dist_test/`` in the cwd."""
    if torch.cuda.is_available():
        pytest.skip('CPU processes only')
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    work = tmp_path / 'w'
    port = str(29500 + os.getpid() % 1000)
    out = ok(subprocess.run(
        ['bash', str(ROOT / 'tools/dist_train.sh'), str(ROOT / SEG), '2', '--work-dir',
         str(work), '--cfg-options', *opts(data, 4)], cwd=cwd,
        env=dict(env(), PORT=port, PYTHON=PY), capture_output=True, text=True, timeout=600))
    assert 'BN running statistics are averaged over the 2 processes' in out
    logged = _val_miou(out)
    tested = ok(run([PY, 'tools/test.py', str(ROOT / SEG), str(work / 'iter_4.pth'),
                     '--work-dir', str(tmp_path / 't'), '--cfg-options',
                     *(f'{k}_dataloader.dataset.data_root={data}/' for k in ('val', 'test'))]))
    assert _test_miou(tested) == logged
    assert not (cwd / '.dist_test').exists()
    # tools/dist_test.sh on two CPU processes: the same number, nothing left in the cwd
    dist_tested = ok(subprocess.run(
        ['bash', str(ROOT / 'tools/dist_test.sh'), str(ROOT / SEG), str(work / 'iter_4.pth'),
         '2', '--work-dir', str(tmp_path / 'dt'), '--cfg-options',
         *(f'{k}_dataloader.dataset.data_root={data}/' for k in ('val', 'test'))], cwd=cwd,
        env=dict(env(), PORT=str(int(port) + 1), PYTHON=PY), capture_output=True, text=True,
        timeout=600))
    assert _test_miou(dist_tested) == logged
    assert not (cwd / '.dist_test').exists() and not list(cwd.iterdir())


def test_dist_test_leftovers_are_ignored_by_git():
    proc = subprocess.run(['git', 'check-ignore', '-q', '.dist_test/tmp123/part_0.pkl'],
                          cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, '.dist_test/ is not in .gitignore'
