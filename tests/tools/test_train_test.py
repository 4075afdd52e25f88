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
    vis = tmp_path / 'a' / 'vis' / 'vis_data' / 'vis_image'
    assert f'Prediction images will be written to {vis}' in plain.stdout + plain.stderr
    assert len(list(vis.glob('*.png'))) == 2  # one per val image, where the log says
    deployed = run(common[:4] + ['--work-dir', str(tmp_path / 'b'), '--deploy'] + common[4:])
    out = deployed.stdout + deployed.stderr
    assert 'RepVGGDeployHook' in out
    assert _miou(plain.stdout + plain.stderr) == _miou(out)
    # the hook's deployed checkpoint, without model.backbone.deploy=True: recognized, the
    # deployed model is built and tested (not a training-time one with random weights)
    common[3] = str(trained.with_name('iter_3_deploy.pth'))
    auto = run(common[:4] + ['--work-dir', str(tmp_path / 'c')] + common[4:])
    out = auto.stdout + auto.stderr
    assert 'loaded a deployed (folded) state into a training-time model: 9 blocks switched' \
        in out  # (the model says so itself: issue 17)
    assert _miou(out) == _miou(plain.stdout + plain.stderr)


def _fails_with_one_line(cmd: list[str], match: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and 'mmengine - ERROR' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-3000:]


def test_a_checkpoint_that_does_not_fit_is_an_error(trained, tiny_cityscapes, tmp_path):
    """tools/test.py and load_from are strict: never a test of random weights."""
    deeper = 'model.backbone.arch.num_blocks=[1,2,5,1]'  # one more layer in paper stage 4
    _fails_with_one_line(
        [PY, 'tools/test.py', SEG, str(trained), '--work-dir', str(tmp_path / 'a'),
         '--cfg-options', *data_opts(tiny_cityscapes), deeper],
        f'State dict from {trained} does not fit')
    _fails_with_one_line(
        [PY, 'tools/train.py', SEG, '--work-dir', str(tmp_path / 'b'), '--cfg-options',
         *data_opts(tiny_cityscapes), *tiny_iters(1),
         f'load_from={trained.with_name("iter_3_deploy.pth")}'],
        'holds a deployed (folded) model')


def test_unsafe_checkpoint_and_missing_data_are_one_line_errors(trained, tiny_cityscapes,
                                                                 tmp_path):
    import torch
    state = torch.load(trained, weights_only=False)
    state['meta']['hook'] = Path  # a global weights-only loading refuses
    torch.save(state, tmp_path / 'unsafe.pth')
    _fails_with_one_line(
        [PY, 'tools/test.py', SEG, str(tmp_path / 'unsafe.pth'), '--work-dir',
         str(tmp_path / 'a'), '--cfg-options', *data_opts(tiny_cityscapes)],
        'weights-only loading refuses')
    _fails_with_one_line(
        [PY, 'tools/train.py', SEG, '--work-dir', str(tmp_path / 'b'), '--cfg-options',
         *data_opts(tmp_path / 'no_such_data')],
        f'Dataset folder not found: {tmp_path / "no_such_data"}')


def test_dist_scripts_use_the_repo_environment(tmp_path):
    """Without PYTHON and without an activated venv, the repo's .venv/bin/python runs."""
    for script, args in (('dist_train.sh', ['cfg.py', '2']),
                         ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2'])):
        repo = tmp_path / script
        (repo / 'tools').mkdir(parents=True)
        for name in (script, 'dist_launch.sh'):  # the launcher both scripts run
            (repo / 'tools' / name).write_text((ROOT / 'tools' / name).read_text())
        stub = repo / '.venv' / 'bin' / 'python'
        stub.parent.mkdir(parents=True)
        stub.write_text(f'#!/bin/sh\necho "$0 $*" > {repo / "called"}\n')
        stub.chmod(0o755)
        clean = {k: v for k, v in os.environ.items() if k not in ('PYTHON', 'VIRTUAL_ENV')}
        clean['PATH'] = '/usr/bin:/bin'
        proc = subprocess.run(['bash', str(repo / 'tools' / script), *args], env=clean,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        called = (repo / 'called').read_text()
        assert called.startswith(f'{stub} -m torch.distributed.run')
        assert f'{repo}/tools/{script[5:-3]}.py' in called and '--launcher pytorch' in called


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
    # run from an empty folder: the config's relative checkpoints/ path cannot exist there,
    # whatever the checkout holds (the README converts weights into ./checkpoints/)
    proc = subprocess.run(
        [PY, str(ROOT / 'tools/train.py'), str(ROOT / 'configs/pspnet_repvgg-b2_cityscapes.py'),
         '--work-dir', str(tmp_path / 'work'), '--cfg-options', *data_opts(tiny_cityscapes)],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert ('error: Pretrained weights not found: checkpoints/repvgg-b2_in1k.pth'
            in proc.stderr)
    assert 'tools/convert_weights.py' in proc.stderr


def test_demo_at_a_very_small_scale(tmp_path):
    """`make demo` end to end: data, train, test trained/deployed (same mIoU), images,
    tools/deploy_convert.py, summary."""
    # started outside the repo with a relative --work-dir: everything lands there
    proc = subprocess.run([PY, str(ROOT / 'tools' / 'demo.py'), '--work-dir', 'demo_run',
                           '--max-iters', '2', '--num-train', '2', '--num-val', '2',
                           '--threads', '1'], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert 'Demo summary' in out and 'same score             yes' in out
    assert len(list((tmp_path / 'demo_run' / 'test_trained' / 'vis').rglob('*.png'))) == 2
    assert (tmp_path / 'demo_run' / 'deploy' / 'pspnet_repvgg_deploy.pth').is_file()
    assert not (ROOT / 'demo_run').exists()


@pytest.mark.slow
def test_demo_cls_learns_digits(tmp_path):
    """`make demo-cls`: test top-1 on held-out digits well above chance (10%)."""
    proc = run([PY, 'tools/demo_cls.py', '--work-dir', str(tmp_path / 'cls'),
                '--max-epochs', '4', '--threads', '1', '--min-accuracy', '80'], timeout=900)
    assert 'same score             yes' in proc.stdout
