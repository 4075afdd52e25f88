"""StrictLoadHook: load_from fits key for key or fails; deployed checkpoints are recognized."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmrepvgg.checkpoint import install_mmengine_loader
from mmrepvgg.engine import StrictLoadHook
from mmrepvgg.utils.errors import CheckpointError
from tests.engine.test_deploy_hook import TinyClassifier, _loader, _runner


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """A 3-iteration run: iter_3.pth and the hook's iter_3_deploy.pth."""
    work_dir = tmp_path_factory.mktemp('strict')
    _runner(work_dir, ema=False, val=False).train()
    return work_dir


def _tester(work_dir: Path, load_from: Path, deployed: str = 'fold', model=None, ema=False):
    runner = _runner(work_dir, ema=ema, val=False, model=model, test_dataloader=_loader(),
                     test_cfg=dict(), test_evaluator=dict(type='_TinyAccuracy'),
                     load_from=str(load_from))
    runner.register_hook(StrictLoadHook(deployed=deployed))
    return runner


@pytest.mark.parametrize('ema', [False, True])
def test_a_deployed_checkpoint_is_tested_as_the_deployed_model(trained, tmp_path,
                                                               pristine_loader, ema):
    install_mmengine_loader()
    reference = _tester(tmp_path / 'a', trained / 'iter_3.pth')
    expected = reference.test()['acc']
    runner = _tester(tmp_path / 'b', trained / 'iter_3_deploy.pth', ema=ema)
    assert runner.test()['acc'] == expected
    assert runner.model.backbone.deploy
    saved = torch.load(trained / 'iter_3_deploy.pth', weights_only=True)['state_dict']
    for key, value in runner.model.state_dict().items():  # the checkpoint's weights, all
        torch.testing.assert_close(value, saved[key])


def test_mismatched_checkpoints_are_errors_not_random_weights(trained, tmp_path,
                                                               pristine_loader):
    install_mmengine_loader()
    wide = TinyClassifier()
    wide.backbone = type(wide.backbone)(dict(num_blocks=(1, 1, 1, 1),
                                             width_factors=(0.5, 0.5, 0.5, 0.5)))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        _tester(tmp_path / 'a', trained / 'iter_3.pth', model=wide).test()
    state = torch.load(trained / 'iter_3.pth', weights_only=False)
    del state['state_dict']['fc.bias']
    state['state_dict']['extra.weight'] = torch.zeros(1)
    torch.save(state, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match=r'missing \(1\): fc.bias.*\n.*unexpected'):
        _tester(tmp_path / 'b', tmp_path / 'partial.pth').test()


def test_training_from_a_deployed_checkpoint_is_refused(trained, tmp_path, pristine_loader):
    install_mmengine_loader()
    runner = _runner(tmp_path, ema=False, val=False, load_from=str(trained / 'iter_3_deploy.pth'))
    runner.register_hook(StrictLoadHook(deployed='error'))
    with pytest.raises(CheckpointError, match='iter_N.pth, not iter_N_deploy.pth'):
        runner.train()
    assert not list(tmp_path.glob('*.pth'))


def test_resume_is_left_to_mmengine(trained, tmp_path, pristine_loader):
    install_mmengine_loader()
    runner = _runner(tmp_path, ema=False, val=False, load_from=str(trained / 'iter_3.pth'),
                     resume=True, train_cfg=dict(by_epoch=False, max_iters=4))
    runner.register_hook(StrictLoadHook(deployed='error'))
    runner.train()
    assert runner.iter == 4


def test_resume_from_a_deployed_checkpoint_is_refused(trained, tmp_path, pristine_loader):
    install_mmengine_loader()
    runner = _runner(tmp_path, ema=False, val=False, load_from=str(trained / 'iter_3_deploy.pth'),
                     resume=True, train_cfg=dict(by_epoch=False, max_iters=4))
    runner.register_hook(StrictLoadHook(deployed='error'))
    with pytest.raises(CheckpointError, match='--resume .* holds a deployed .*iter_N_deploy.pth'):
        runner.train()


@pytest.mark.parametrize('ema', [False, True])
def test_without_the_hook_a_deployed_load_from_refuses_to_train(trained, tmp_path, ema):
    """Anyone's runner (import mmrepvgg only): the model itself refuses training mode."""
    runner = _runner(tmp_path, ema=ema, val=False, load_from=str(trained / 'iter_3_deploy.pth'))
    with pytest.raises(CheckpointError, match='no branches left to train') as info:
        runner.train()
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('hook', [True, False])
@pytest.mark.parametrize('ema', [False, True])
def test_fine_tuning_from_another_geometry_trains(trained, tmp_path, hook, ema):
    """Weights trained under plan None initialize a dilated ('full') model: the paper's
    protocol; the run trains, validates and writes its deployed checkpoint."""
    runner = _runner(tmp_path, ema=ema, val=True, model=TinyClassifier(plan='full'),
                     load_from=str(trained / 'iter_3.pth'))
    if hook:
        runner.register_hook(StrictLoadHook(deployed='error'))
    runner.train()
    assert runner.iter == 3
    saved = torch.load(tmp_path / 'iter_3_deploy.pth', weights_only=True)['state_dict']
    assert saved['backbone.stage_3.0.rep_geometry'].tolist() == [1, 1, 2, 1]  # the model's


@pytest.mark.parametrize('checkpoint', ['iter_3.pth', 'iter_3_deploy.pth'])
@pytest.mark.parametrize('hook', [True, False])
def test_testing_under_another_geometry_is_refused(trained, tmp_path, checkpoint, hook):
    runner = _runner(tmp_path, ema=False, val=False, model=TinyClassifier(plan='full'),
                     test_dataloader=_loader(), test_cfg=dict(),
                     test_evaluator=dict(type='_TinyAccuracy'),
                     load_from=str(trained / checkpoint))
    if hook:  # tools/test.py: refused while loading
        runner.register_hook(StrictLoadHook(deployed='fold'))
    with pytest.raises(CheckpointError, match="geometry") as info:
        runner.test()  # without the hook: a training-time file is refused at model.eval()
    assert '\n' not in str(info.value) and 'stage_3 s1 d2' in str(info.value)


def test_another_model_altogether_is_reported_by_its_keys(trained, tmp_path):
    """A wrong config (here: another head) under another geometry: the keys say more."""
    state = torch.load(trained / 'iter_3.pth', weights_only=False)
    state['state_dict']['head.weight'] = state['state_dict'].pop('fc.weight')
    torch.save(state, tmp_path / 'other.pth')
    runner = _tester(tmp_path / 'a', tmp_path / 'other.pth', model=TinyClassifier(plan='full'))
    with pytest.raises(CheckpointError, match=r'missing \(1\): fc.weight\n.*unexpected \(1\): '
                                              r'head.weight'):
        runner.test()


def test_resume_under_another_geometry_is_refused(trained, tmp_path, pristine_loader):
    """Issue 23 item 3: it logged one INFO line and trained on (the training-mode model
    accepts another geometry as initialization); a resume is all or nothing."""
    install_mmengine_loader()
    runner = _runner(tmp_path, ema=False, val=False, model=TinyClassifier(plan='full'),
                     load_from=str(trained / 'iter_3.pth'), resume=True,
                     train_cfg=dict(by_epoch=False, max_iters=4))
    runner.register_hook(StrictLoadHook(deployed='error'))
    with pytest.raises(CheckpointError, match='another geometry .*stage_3.0.*load_from') as info:
        runner.train()
    assert '\n' not in str(info.value) and runner.iter == 0
    assert not list(tmp_path.glob('*.pth'))
