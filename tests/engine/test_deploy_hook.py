"""RepVGGDeployHook on a tiny mmengine runner: deploy checkpoint after training, fold at test."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import METRICS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from mmrepvgg.checkpoint import install_mmengine_loader
from mmrepvgg.deploy import count_blocks
from mmrepvgg.engine import RepVGGDeployHook
from mmrepvgg.models import RepVGG
from tests.helpers import rel_err

ARCH = dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, 0.25, 0.25, 0.5))


class TinyClassifier(BaseModel):

    def __init__(self, with_repvgg: bool = True, deploy: bool = False,
                 block: str = 'RepVGGBlock', plan: str | None = None) -> None:
        super().__init__()
        self.backbone = (RepVGG(ARCH, deploy=deploy, block_cfg=dict(type=block),
                                dilation_plan=plan)
                         if with_repvgg else
                         nn.Sequential(nn.Conv2d(3, 256, 3, 2, 1), nn.BatchNorm2d(256)))
        self.fc = nn.Linear(256, 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        feats = self.backbone(inputs)
        feats = feats[-1] if isinstance(feats, tuple) else feats
        out = self.fc(feats.mean((2, 3)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(out, labels))
        if mode == 'predict':
            return [dict(pred=o.argmax(), label=l) for o, l in zip(out, labels)]
        return out


class _Data(Dataset):

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 24, 32, generator=gen), labels=i % 3)


@METRICS.register_module(force=True)
class _TinyAccuracy(BaseMetric):

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(float(d['pred'] == d['label']) for d in data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(acc=sum(results) / max(len(results), 1))


def _loader() -> dict:
    return dict(dataset=_Data(), batch_size=4, num_workers=0,
                collate_fn=dict(type='default_collate'),
                sampler=dict(type='DefaultSampler', shuffle=False))


def _runner(work_dir: Path, *, ema: bool, val: bool, model=None, **kwargs) -> Runner:
    hooks = [dict(type='mmrepvgg.RepVGGDeployHook', input_shape=(24, 32))]
    if ema:
        hooks.insert(0, dict(type='EMAHook', momentum=0.5))
    evaluation = dict(val_dataloader=_loader(), val_cfg=dict(),
                      val_evaluator=dict(type='_TinyAccuracy')) if val else {}
    return Runner(
        model=model or TinyClassifier(), work_dir=str(work_dir),
        train_dataloader=_loader(),
        optim_wrapper=kwargs.pop('optim_wrapper',
                                 dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))),
        train_cfg=kwargs.pop('train_cfg', dict(by_epoch=False, max_iters=3, val_interval=3)),
        default_hooks=dict(checkpoint=kwargs.pop(
            'checkpoint', dict(type='CheckpointHook', interval=3, by_epoch=False))),
        custom_hooks=hooks, randomness=dict(seed=0), **evaluation, **kwargs)


@pytest.fixture(scope='module')
def trained_ema(tmp_path_factory) -> tuple[Runner, Path]:
    work_dir = tmp_path_factory.mktemp('ema')
    runner = _runner(work_dir, ema=True, val=True)
    runner.train()
    return runner, work_dir


def test_after_train_writes_verified_deploy_checkpoint_with_ema_weights(trained_ema):
    runner, work_dir = trained_ema
    path = work_dir / 'iter_3_deploy.pth'
    assert path.is_file() and (work_dir / 'iter_3.pth').is_file()
    hook = next(h for h in runner.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.deploy_checkpoint == path
    assert hook.report.folded == 5 and hook.report.max_rel <= 1e-5
    assert hook.report.input_shape == (1, 3, 24, 32)  # a real val batch
    # the live model was never folded, during training or validation
    assert count_blocks(runner.model, deployed=True) == 0

    saved = torch.load(path, weights_only=True)
    assert saved['meta']['deploy'] is True and saved['meta']['ema'] is True
    assert saved['meta']['arch'] == 'custom' and saved['meta']['iter'] == 3
    plain = TinyClassifier(deploy=True).eval()
    plain.load_state_dict(saved['state_dict'], strict=True)
    ema_model = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model.module
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        expected = ema_model.eval()(x)
        live = runner.model.eval()(x)
        out = plain(x)
    assert rel_err(out, expected) <= 1e-5
    assert rel_err(out, live) > 1e-3  # EMA weights, not the live ones
    # mmengine's checkpoint holds the same (EMA) weights as the deploy checkpoint's source
    trained = torch.load(work_dir / 'iter_3.pth', weights_only=False)
    unfolded = TinyClassifier().eval()
    unfolded.load_state_dict(trained['state_dict'])
    with torch.no_grad():
        assert rel_err(out, unfolded(x)) <= 1e-5


def test_test_time_folds_after_loading_the_checkpoint(trained_ema, tmp_path, pristine_loader):
    _, work_dir = trained_ema
    install_mmengine_loader()
    runner = _runner(tmp_path, ema=True, val=False, test_dataloader=_loader(), test_cfg=dict(),
                     test_evaluator=dict(type='_TinyAccuracy'),
                     load_from=str(work_dir / 'iter_3.pth'))
    metrics = runner.test()
    assert 'acc' in metrics
    assert runner.model.backbone.deploy
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    assert ema.ema_model.module.backbone.deploy  # folded too: EMA's swaps stay consistent
    assert not (tmp_path / 'iter_3_deploy.pth').exists()  # nothing written at test time


def test_synthetic_input_without_val_loader(tmp_path):
    runner = _runner(tmp_path, ema=False, val=False)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.report.input_shape == (1, 3, 24, 32) and hook.report.max_rel <= 1e-5
    saved = torch.load(tmp_path / 'iter_3_deploy.pth', weights_only=True)
    plain = TinyClassifier(deploy=True)
    plain.load_state_dict(saved['state_dict'], strict=True)


def test_qa_model_deploys_to_the_plain_repvgg(tmp_path):
    model = TinyClassifier(block='QARepVGGBlock')
    runner = _runner(tmp_path, ema=False, val=False, model=model)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.report.folded == 5 and hook.report.max_rel <= 1e-5
    assert not model.backbone.deploy  # the live model is never folded
    saved = torch.load(tmp_path / 'iter_3_deploy.pth', weights_only=True)
    assert saved['meta']['block'] == 'QARepVGGBlock'
    TinyClassifier(deploy=True).load_state_dict(saved['state_dict'], strict=True)
    hook.before_test(SimpleNamespace(model=model, hooks=[]))
    assert model.backbone.deploy and count_blocks(model, deployed=True) == 5


def test_model_without_repvgg_blocks_is_a_noop(tmp_path, caplog):
    runner = _runner(tmp_path, ema=False, val=False, model=TinyClassifier(with_repvgg=False))
    runner.train()
    assert not list(tmp_path.glob('*_deploy.pth'))
    hook = next(h for h in runner.hooks if isinstance(h, RepVGGDeployHook))
    hook.before_test(runner)  # warns, does not fail
    assert hook.report is None


def test_wrapped_model_is_unwrapped(tmp_path):
    from mmengine.model import MMDistributedDataParallel
    if not torch.distributed.is_available():
        pytest.skip('no torch.distributed')
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}',
                                         rank=0, world_size=1)
    try:
        wrapped = MMDistributedDataParallel(module=TinyClassifier())
        RepVGGDeployHook().before_test(SimpleNamespace(model=wrapped, hooks=[]))
        assert wrapped.module.backbone.deploy
    finally:
        torch.distributed.destroy_process_group()


def test_a_diverged_run_writes_no_deploy_checkpoint(tmp_path):
    """lr 1e8: the weights go non-finite; the hook fails clearly and overwrites nothing."""
    old = tmp_path / 'iter_3_deploy.pth'
    old.write_bytes(b'an earlier deployed checkpoint')
    runner = _runner(tmp_path, ema=False, val=False,
                     optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e8, momentum=0.9)))
    # (the earlier file is another run's: moved aside when this run saves iter_3.pth)
    with pytest.raises(RuntimeError,
                       match=r'iter_3_deploy.pth not written: .*non-finite') as info:
        runner.train()
    from mmrepvgg.utils.errors import VerificationError
    assert isinstance(info.value, VerificationError)
    state = torch.load(tmp_path / 'iter_3.pth', weights_only=False)['state_dict']
    assert any(not torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    kept = tmp_path / 'iter_3_earlier_deploy.pth'
    assert kept.read_bytes() == b'an earlier deployed checkpoint'
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_3.pth', kept.name]


def _saved_outputs(path: Path, model: nn.Module, x: torch.Tensor) -> tuple:
    saved = torch.load(path, weights_only=True)
    plain = TinyClassifier(deploy=True).eval()
    plain.load_state_dict(saved['state_dict'], strict=True)
    with torch.no_grad():
        return saved['meta'], plain(x), model.eval()(x)


def test_the_file_is_named_after_the_iteration_it_holds(tmp_path):
    """interval 2, save_last=False, 3 iterations: the last regular checkpoint is iter_2.pth;
    the deployed file holds iteration 3 and is named so."""
    runner = _runner(tmp_path, ema=False, val=False, checkpoint=dict(
        type='CheckpointHook', interval=2, by_epoch=False, save_last=False))
    runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth', 'iter_3_deploy.pth']
    hook = next(h for h in runner.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.deploy_checkpoint == tmp_path / 'iter_3_deploy.pth'
    meta, out, live = _saved_outputs(tmp_path / 'iter_3_deploy.pth', runner.model,
                                     torch.randn(2, 3, 24, 32))
    assert meta['iter'] == 3 and meta['run'] == runner.timestamp
    assert rel_err(out, live) <= 1e-5  # the live model at iteration 3


def test_an_iteration_based_run_without_checkpoints_is_named_by_iteration(tmp_path):
    runner = _runner(tmp_path, ema=False, val=False, checkpoint=dict(
        type='CheckpointHook', interval=100, by_epoch=False, save_last=False))
    runner.train()
    assert [p.name for p in tmp_path.glob('*.pth')] == ['iter_3_deploy.pth']  # not epoch_0


def test_an_epoch_based_run_is_named_by_epoch(tmp_path):
    runner = _runner(tmp_path, ema=False, val=False, train_cfg=dict(by_epoch=True, max_epochs=2),
                     checkpoint=dict(type='CheckpointHook', interval=5, save_last=False))
    runner.train()
    assert [p.name for p in tmp_path.glob('*.pth')] == ['epoch_2_deploy.pth']
    assert torch.load(tmp_path / 'epoch_2_deploy.pth', weights_only=True)['meta']['epoch'] == 2


def _second_run(tmp_path: Path, **kwargs) -> tuple[Runner, Runner, bytes]:
    first = _runner(tmp_path, ema=False, val=False)
    first.train()
    before = (tmp_path / 'iter_3_deploy.pth').read_bytes()
    import time
    time.sleep(1.1)  # another run: another timestamp
    second = _runner(tmp_path, ema=False, val=False,
                     optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)), **kwargs)
    second.train()
    return first, second, before


def _same_model(trained: Path, deployed: Path) -> float:
    """rel error between the outputs of a training-time file and a deployed file."""
    x = torch.randn(2, 3, 24, 32)
    unfolded = TinyClassifier().eval()
    unfolded.load_state_dict(torch.load(trained, weights_only=False)['state_dict'])
    plain = TinyClassifier(deploy=True).eval()
    plain.load_state_dict(torch.load(deployed, weights_only=True)['state_dict'])
    with torch.no_grad():
        return rel_err(plain(x), unfolded(x))


def test_a_second_run_keeps_iter_n_and_its_deploy_file_one_model(tmp_path):
    """Issue 23 item 4: two runs in one work dir; mmengine replaces iter_3.pth with run 2's
    weights, so iter_3_deploy.pth must be run 2's too (it was run 1's); run 1's deployed
    file is kept under its run's name, unchanged."""
    first, second, before = _second_run(tmp_path)
    hook = next(h for h in second.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.deploy_checkpoint == tmp_path / 'iter_3_deploy.pth'
    assert _same_model(tmp_path / 'iter_3.pth', tmp_path / 'iter_3_deploy.pth') <= 1e-5
    kept = tmp_path / f'iter_3_{first.timestamp}_deploy.pth'
    assert kept.read_bytes() == before
    assert torch.load(tmp_path / 'iter_3_deploy.pth', weights_only=True)['meta']['run'] \
        == second.timestamp


def test_a_longer_second_run_moves_the_stale_deploy_file_when_it_saves(tmp_path):
    """Run 2 goes on to iteration 6: iter_3.pth is replaced on the way; no iter_3_deploy.pth
    of run 1 may stay beside it."""
    first, second, before = _second_run(
        tmp_path, train_cfg=dict(by_epoch=False, max_iters=6, val_interval=6))
    assert not (tmp_path / 'iter_3_deploy.pth').exists()
    assert (tmp_path / f'iter_3_{first.timestamp}_deploy.pth').read_bytes() == before
    assert _same_model(tmp_path / 'iter_6.pth', tmp_path / 'iter_6_deploy.pth') <= 1e-5


def test_a_deploy_file_beside_another_runs_training_file_keeps_its_name(tmp_path):
    """Run 2 saves no iter_3.pth: run 1's pair stays; run 2's file gets its timestamp."""
    first, second, before = _second_run(tmp_path, checkpoint=dict(
        type='CheckpointHook', interval=100, by_epoch=False, save_last=False))
    assert (tmp_path / 'iter_3_deploy.pth').read_bytes() == before
    hook = next(h for h in second.hooks if isinstance(h, RepVGGDeployHook))
    assert hook.deploy_checkpoint == tmp_path / f'iter_3_{second.timestamp}_deploy.pth'
    meta, out, live = _saved_outputs(hook.deploy_checkpoint, second.model,
                                     torch.randn(2, 3, 24, 32))
    assert meta['run'] == second.timestamp and rel_err(out, live) <= 1e-5
