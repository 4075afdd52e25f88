"""tools/train.py, tools/test.py, tools/dist_train.sh and the demos, at a very small scale."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'
PY = sys.executable


def env() -> dict:
    # one thread per process: several OpenMP threads on few shared cores are much slower
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f'{" ".join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def data_opts(root: Path) -> list[str]:
    return [f'{k}_dataloader.dataset.data_root={root}/' for k in ('train', 'val', 'test')]


def tiny_iters(n: int) -> list[str]:
    return [f'train_cfg.max_iters={n}', f'train_cfg.val_interval={n}',
            f'default_hooks.checkpoint.interval={n}', 'train_dataloader.batch_size=2']


@pytest.fixture(scope='module')
def tiny_cityscapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data') / 'cs'
    run([PY, 'tools/make_tiny_cityscapes.py', str(root), '--num-train', '4', '--num-val', '2',
         '--size', '64', '128', '--prepare'])
    return root


@pytest.fixture(scope='module')
def trained(tiny_cityscapes, tmp_path_factory) -> Path:
    """A single-process CPU run of a SyncBN config (mmengine reverts SyncBN to BN)."""
    work = tmp_path_factory.mktemp('single')
    proc = run([PY, 'tools/train.py', SEG, '--work-dir', str(work), '--cfg-options',
                *data_opts(tiny_cityscapes), *tiny_iters(3)])
    assert 'SyncBN layers will run as BN' in proc.stdout + proc.stderr
    assert (work / 'iter_3.pth').is_file()
    return work / 'iter_3.pth'


def _miou(text: str) -> float:
    line = [x for x in text.splitlines() if 'Iter(test)' in x and 'mIoU:' in x][-1]
    return float(line.split('mIoU:')[1].split()[0])


def test_test_as_trained_and_deployed(trained, tiny_cityscapes, tmp_path):
    common = [PY, 'tools/test.py', SEG, str(trained), '--cfg-options',
              *data_opts(tiny_cityscapes)]
    plain = run(common[:4] + ['--work-dir', str(tmp_path / 'a'), '--show-dir', 'vis']
                + common[4:])
    images = sorted((tmp_path / 'a' / 'vis').rglob('*.png'))
    assert len(images) == 2  # one per val image
    deployed = run(common[:4] + ['--work-dir', str(tmp_path / 'b'), '--deploy'] + common[4:])
    out = deployed.stdout + deployed.stderr
    assert 'RepVGGDeployHook' in out
    assert _miou(plain.stdout + plain.stderr) == _miou(out)


def test_resume(trained, tiny_cityscapes):
    work = trained.parent
    proc = run([PY, 'tools/train.py', SEG, '--work-dir', str(work), '--resume',
                '--cfg-options', *data_opts(tiny_cityscapes), *tiny_iters(4)])
    assert 'resumed' in (proc.stdout + proc.stderr).lower()
    assert (work / 'iter_4.pth').is_file()


def test_two_process_gloo_on_cpu(tiny_cityscapes, tmp_path):
    """torchrun, 2 CPU processes: gloo, DDP without device ids, SyncBN replaced by BN."""
    work = tmp_path / 'dist'
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', SEG, '2', '--work-dir', str(work), '--cfg-options',
         *data_opts(tiny_cityscapes), *tiny_iters(2)],
        cwd=ROOT, env=dict(env(), PYTHON=PY, PORT='29533'), capture_output=True, text=True,
        timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'Process group on CPU: gloo, rank 0 of 2' in out
    assert 'Process group on CPU: gloo, rank 1 of 2' in out
    assert 'Distributed training: True' in out
    assert (work / 'iter_2.pth').is_file()


def test_missing_pretrained_stops_training_with_instructions(tiny_cityscapes, tmp_path):
    proc = subprocess.run(
        [PY, 'tools/train.py', 'configs/pspnet_repvgg-b2_cityscapes.py', '--work-dir',
         str(tmp_path), '--cfg-options', *data_opts(tiny_cityscapes)],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert ('error: Pretrained weights not found: checkpoints/repvgg-b2_in1k.pth'
            in proc.stderr)
    assert 'tools/convert_weights.py' in proc.stderr


def test_demo_at_a_very_small_scale(tmp_path):
    """`make demo` end to end: data, train, test trained/deployed (same mIoU), images,
    tools/deploy_convert.py, summary."""
    proc = run([PY, 'tools/demo.py', '--work-dir', str(tmp_path / 'demo'), '--max-iters', '2',
                '--num-train', '2', '--num-val', '2', '--threads', '1'], timeout=600)
    out = proc.stdout
    assert 'Demo summary' in out and 'same score             yes' in out
    assert len(list((tmp_path / 'demo' / 'test_trained' / 'vis').rglob('*.png'))) == 2
    assert (tmp_path / 'demo' / 'deploy' / 'pspnet_repvgg_deploy.pth').is_file()


@pytest.mark.slow
def test_demo_cls_learns_digits(tmp_path):
    """`make demo-cls`: test top-1 on held-out digits well above chance (10%)."""
    proc = run([PY, 'tools/demo_cls.py', '--work-dir', str(tmp_path / 'cls'),
                '--max-epochs', '4', '--threads', '1', '--min-accuracy', '80'], timeout=900)
    assert 'same score             yes' in proc.stdout
