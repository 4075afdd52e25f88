"""Safe checkpoint loading: mmengine checkpoints weights-only, code-running pickles refused."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_from_local
from torch import nn
from torch.utils.data import Dataset

from mmrepvgg.checkpoint import (CheckpointError, install_mmengine_loader, load_checkpoint_file,
                                 mmengine_safe_globals, save_checkpoint_atomic)


class _Linear(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return out


class _Data(Dataset):

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=gen), labels=torch.randn(2, generator=gen))


def _runner(work_dir: Path, max_iters: int, **kwargs) -> Runner:
    return Runner(
        model=_Linear(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Data(), batch_size=2, num_workers=0,
                              collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='EMAHook')],
        randomness=dict(seed=0),
        **kwargs)


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture
def pristine_loader():
    """Undo install_mmengine_loader() and the process-wide safe globals after a test."""
    schemes = dict(CheckpointLoader._schemes)
    safe = torch.serialization.get_safe_globals()
    yield
    CheckpointLoader._schemes = type(CheckpointLoader._schemes)(schemes)
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(safe)


@pytest.fixture(scope='module')
def mmengine_ckpt(tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp('runner')
    _runner(work_dir / 'a', max_iters=2).train()
    return work_dir / 'a' / 'iter_2.pth'


def test_mmengine_checkpoint_loads_weights_only_and_resumes(mmengine_ckpt, tmp_path,
                                                            pristine_loader):
    torch.serialization.clear_safe_globals()
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    # The bug this works around: mmengine's own loader cannot read its own checkpoints.
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(str(mmengine_ckpt), map_location='cpu')

    obj = load_checkpoint_file(mmengine_ckpt)  # weights-only, no trust needed
    assert {'state_dict', 'message_hub', 'optimizer', 'ema_state_dict'} <= set(obj)
    assert obj['meta']['iter'] == 2

    install_mmengine_loader()
    assert _load_checkpoint(str(mmengine_ckpt), map_location='cpu')['meta']['iter'] == 2
    runner = _runner(tmp_path / 'b', max_iters=4, resume=True, load_from=str(mmengine_ckpt))
    runner.train()
    assert runner.iter == 4
    trained = torch.load(tmp_path / 'b' / 'iter_4.pth', weights_only=True)
    assert trained['meta']['iter'] == 4


def test_allow_list_is_small_and_data_only():
    names = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
             for g in mmengine_safe_globals()}
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert not any(n.startswith(('os.', 'posix.', 'subprocess.')) for n in names)
    restricted_getattr = dict((n, g) for g in mmengine_safe_globals() if isinstance(g, tuple)
                              for g, n in [g])['builtins.getattr']
    with pytest.raises(pickle.UnpicklingError, match='only HistoryBuffer'):
        restricted_getattr(os, 'system')


@pytest.mark.parametrize('writer', ['torch', 'pickle'])
@pytest.mark.parametrize('via_mmengine', [False, True])
def test_code_running_pickle_never_runs(tmp_path, writer, via_mmengine, pristine_loader):
    marker = tmp_path / 'MARKER'
    path = tmp_path / 'evil.pth'
    payload = {'state_dict': {'w': torch.zeros(1)}, 'meta': _RunsCode(marker)}
    if writer == 'torch':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match='trust-checkpoint') as info:
        if via_mmengine:
            install_mmengine_loader(trust=False)
            _load_checkpoint(str(path), map_location='cpu')
        else:
            load_checkpoint_file(path)
    if writer == 'torch':
        assert 'system' in str(info.value)  # names the refused global
    assert not marker.exists()


def test_truncated_and_empty_files(tmp_path):
    path = save_checkpoint_atomic({'state_dict': {'w': torch.randn(64, 64)}}, tmp_path / 'a.pth')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint_file(path)
    path.write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        load_checkpoint_file(path)
    path.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_checkpoint_file(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(tmp_path / 'missing.pth')


def test_atomic_save_refuses_overwrite(tmp_path):
    path = save_checkpoint_atomic({'x': torch.ones(1)}, tmp_path / 'a.pth')
    with pytest.raises(FileExistsError, match='--force'):
        save_checkpoint_atomic({'x': torch.zeros(1)}, path)
    assert torch.load(path, weights_only=True)['x'].item() == 1
    save_checkpoint_atomic({'x': torch.zeros(1)}, path, force=True)
    assert torch.load(path, weights_only=True)['x'].item() == 0
    assert [p.name for p in tmp_path.iterdir()] == ['a.pth']  # no temporary left behind
