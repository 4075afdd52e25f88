"""Safe checkpoint loading: mmengine checkpoints weights-only, code-running pickles refused."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_from_local
from torch import nn
from torch.utils.data import Dataset

from mmrepvgg.checkpoint import (
    install_mmengine_loader,
    load_checkpoint_file,
    mmengine_safe_globals,
    save_checkpoint_atomic,
)
from mmrepvgg.utils.errors import CheckpointError, SameFileError
from mmrepvgg.utils.fileio import (
    check_output_path,
    check_output_paths,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- atomic writes

def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.tmp'))


def test_output_that_is_the_input_is_refused_even_with_force(tmp_path):
    src = save_checkpoint_atomic({'x': torch.ones(3)}, tmp_path / 'in.pth')
    data = src.read_bytes()
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    for out in (src, tmp_path / 'link.pth', tmp_path / 'hard.pth', tmp_path / '.' / 'in.pth'):
        with pytest.raises(SameFileError, match='is the input'):
            save_checkpoint_atomic({'x': torch.zeros(1)}, out, force=True, inputs=[src])
    assert src.read_bytes() == data


def test_a_file_created_during_the_write_is_never_replaced(tmp_path, monkeypatch):
    """Another writer creates the destination between the check and the final step."""
    path = tmp_path / 'a.pth'
    real_save = torch.save

    def racing_save(obj, f, *args, **kwargs):
        path.write_text('written by another process')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', racing_save)
    with pytest.raises(FileExistsError, match='while this was written'):
        save_checkpoint_atomic({'x': torch.ones(1)}, path)
    assert path.read_text() == 'written by another process'
    assert _temp_files(tmp_path) == []
    path.unlink()
    save_checkpoint_atomic({'x': torch.ones(1)}, path, force=True)  # force: replaced
    assert torch.load(path, weights_only=True)['x'].item() == 1


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint_atomic({'x': torch.ones(1)}, tmp_path / 'a.pth')
        assert path.stat().st_mode & 0o777 == mode  # as mmengine's own checkpoints
        written = write_atomic(tmp_path / 'b.onnx', lambda tmp: tmp.write_bytes(b'onnx'))
        assert written.stat().st_mode & 0o777 == mode and written.read_bytes() == b'onnx'
    finally:
        os.umask(old)


def test_reports_are_strict_json(tmp_path):
    """A non-finite float (an exact SQNR is inf dB) is null: Python's Infinity is not JSON."""
    import json
    path = write_json_atomic(tmp_path / 'r.json',
                             dict(sqnr=[float('inf'), 3.5, -float('inf')], bad=float('nan'),
                                  rows=(dict(n=1, ok=True, name='x'), )))
    text = path.read_text()
    assert 'Infinity' not in text and 'NaN' not in text
    assert json.loads(text) == dict(sqnr=[None, 3.5, None], bad=None,
                                    rows=[dict(n=1, ok=True, name='x')])
    with pytest.raises(FileExistsError, match='--force'):
        write_json_atomic(path, {})


def test_bytes_and_text_go_through_the_same_writer(tmp_path):
    """ONNX models and reports (write_bytes_atomic): the checkpoint writer's guarantees."""
    src = save_checkpoint_atomic({'x': torch.ones(1)}, tmp_path / 'model.pth')
    data = src.read_bytes()
    onnx_file = write_bytes_atomic(tmp_path / 'model.onnx', b'\x08\x07', inputs=[src])
    report = write_bytes_atomic(tmp_path / 'model.md', 'résumé\n')
    assert onnx_file.read_bytes() == b'\x08\x07' and report.read_text() == 'résumé\n'
    with pytest.raises(FileExistsError, match='--force'):
        write_bytes_atomic(onnx_file, b'new')
    write_bytes_atomic(onnx_file, b'new', force=True)
    assert onnx_file.read_bytes() == b'new'
    (tmp_path / 'link.onnx').symlink_to(src)
    for out in (src, tmp_path / 'link.onnx'):  # an ONNX output never replaces its checkpoint
        with pytest.raises(SameFileError, match='is the input'):
            write_bytes_atomic(out, b'onnx', force=True, inputs=[src])
    assert src.read_bytes() == data and _temp_files(tmp_path) == []


def test_outputs_of_one_run_are_distinct_files(tmp_path):
    src = tmp_path / 'in.pth'
    src.write_bytes(b'ckpt')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'alias').symlink_to(tmp_path / 'sub')
    a, b = tmp_path / 'a.onnx', tmp_path / 'a.json'
    assert check_output_paths([a, None, b], inputs=[src]) == [a, b]
    for paths in ([a, b, a], [tmp_path / 'sub' / 'r.json', tmp_path / 'alias' / 'r.json'],
                  [a, tmp_path / '.' / 'a.onnx']):
        with pytest.raises(SameFileError, match='are the same file'):
            check_output_paths(paths, force=True)
    with pytest.raises(SameFileError, match='is the input'):
        check_output_paths([a, src], force=True, inputs=[src])
    b.write_text('keep')
    with pytest.raises(FileExistsError):
        check_output_paths([a, b], inputs=[src])
    assert not a.exists() and b.read_text() == 'keep'


def test_output_paths_are_checked_before_any_work(tmp_path):
    calls = []
    (tmp_path / 'file').write_text('x')
    for out, error in ((tmp_path, IsADirectoryError),
                       (tmp_path / 'file' / 'out.pth', NotADirectoryError)):
        with pytest.raises(error):
            check_output_path(out)
        with pytest.raises(error):
            write_atomic(out, calls.append)
    assert calls == []


_WRITER = '''
import os, signal, sys, time, torch
from mmrepvgg.checkpoint import save_checkpoint_atomic
real_save = torch.save
def slow_save(obj, f):
    out = open(f, 'wb') if isinstance(f, str) else f
    out.write(b'partial')
    out.flush()
    print('writing', flush=True)
    if sys.argv[2] == 'self-term':
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
torch.save = slow_save
save_checkpoint_atomic({'x': torch.ones(1)}, sys.argv[1])
'''


def _start_writer(path: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, '-c', _WRITER, str(path), mode],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.readline().strip() == 'writing'
    return proc


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    proc = _start_writer(tmp_path / 'a.pth', 'self-term')
    assert proc.wait(timeout=60) == -signal.SIGTERM  # still dies of the signal
    assert list(tmp_path.iterdir()) == []
    proc = _start_writer(tmp_path / 'a.pth', 'wait')
    proc.terminate()
    assert proc.wait(timeout=60) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    proc = _start_writer(tmp_path / 'a.pth', 'wait')
    proc.kill()  # SIGKILL: no cleanup possible
    proc.wait(timeout=60)
    left = _temp_files(tmp_path)
    assert len(left) == 1 and left[0].startswith('.a.pth.')
    # other files, and temporary files of writers that are alive, are never touched
    alive = f'.a.pth.{left[0].split(".")[-2].split("-")[0]}-{os.getppid()}-0123abcd.tmp'
    for name in (alive, '.a.pth.x.tmp', '.b.pth.' + left[0][len('.a.pth.'):], 'a.pth.tmp'):
        (tmp_path / name).write_text('keep')
    save_checkpoint_atomic({'x': torch.ones(1)}, tmp_path / 'a.pth')
    assert not (tmp_path / left[0]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['a.pth', alive, '.a.pth.x.tmp', '.b.pth.' + left[0][len('.a.pth.'):], 'a.pth.tmp'])


class _SigintOnWrite:
    """A file whose writes are interrupted by Ctrl-C, as when it arrives mid-write."""

    def __init__(self, f) -> None:
        self.f = open(f, 'wb') if isinstance(f, (str, os.PathLike)) else f
        self.calls = 0

    def write(self, data):
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return self.f.write(data)

    def flush(self):
        return self.f.flush()

    def close(self):
        return self.f.close()


def test_ctrl_c_during_a_write_is_reported_as_an_interruption(tmp_path, monkeypatch):
    real_save = torch.save
    monkeypatch.setattr(torch, 'save', lambda obj, f: real_save(obj, _SigintOnWrite(f)))
    with pytest.raises(KeyboardInterrupt):  # not torch's "enforce fail at inline_container"
        save_checkpoint_atomic({'x': torch.ones(1000)}, tmp_path / 'a.pth')
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- loading

def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('experiment notes: lr 0.1\n')
    with pytest.raises(CheckpointError, match='not a checkpoint'):
        load_checkpoint_file(path)


def test_trusted_full_unpickling_is_logged_and_a_plain_pickle_loads(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr('mmrepvgg.checkpoint.print_log',
                        lambda msg, *args, **kwargs: logged.append(msg))
    marker = tmp_path / 'MARKER'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': _RunsCode(marker)},
               tmp_path / 'obj.pth')
    assert load_checkpoint_file(tmp_path / 'obj.pth', trust=True)['state_dict']['w'].item() == 1
    assert marker.exists() and len(logged) == 1
    assert 'full unpickling' in logged[0] and str(tmp_path / 'obj.pth') in logged[0]
    # a plain pickle (not torch.save's format): trusted, it loads; it is not "corrupt"
    marker.unlink()
    (tmp_path / 'raw.pkl').write_bytes(pickle.dumps(
        {'state_dict': {'w': torch.full((1, ), 2.0)}, 'meta': _RunsCode(marker)}))
    assert load_checkpoint_file(tmp_path / 'raw.pkl', trust=True)['state_dict']['w'].item() == 2
    assert marker.exists() and len(logged) == 2 and 'raw.pkl' in logged[1]
    marker.unlink()
    with pytest.raises(CheckpointError, match='trust-checkpoint'):
        load_checkpoint_file(tmp_path / 'raw.pkl')
    assert not marker.exists()


def test_init_cfg_follows_the_tools_trust_checkpoint(tmp_path, pristine_loader):
    from mmrepvgg.models import RepVGG
    arch = dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, 0.25, 0.25, 0.25))
    marker = tmp_path / 'MARKER'
    state = {f'backbone.{k}': v for k, v in RepVGG(arch).state_dict().items()}
    torch.save({'state_dict': state, 'meta': _RunsCode(marker)}, tmp_path / 'w.pth')
    init = dict(type='Pretrained', checkpoint=str(tmp_path / 'w.pth'), prefix='backbone.')
    install_mmengine_loader(trust=False)
    with pytest.raises(CheckpointError, match='trust-checkpoint'):
        RepVGG(arch, init_cfg=init).init_weights()
    assert not marker.exists()
    install_mmengine_loader(trust=True)  # what tools/train.py --trust-checkpoint does
    RepVGG(arch, init_cfg=init).init_weights()
    assert marker.exists()


# -- issue 23 item 1: config text in a checkpoint is code that mmengine runs -----------------

def _with_config_code(ckpt: Path, out: Path, marker: Path) -> Path:
    """``ckpt`` with Python in every place mmengine parses a config from (weights-only safe:
    plain strings)."""
    obj = torch.load(ckpt, weights_only=False)
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')\n"
    obj['meta']['config'] = obj['meta']['cfg'] = code
    obj['message_hub']['runtime_info']['cfg'] = code
    torch.save(obj, out)
    return out


def test_resume_never_runs_config_code_from_the_checkpoint(mmengine_ckpt, tmp_path,
                                                           pristine_loader):
    """mmengine's ``Runner.resume`` parses ``meta['config']`` as a .py config: it ran."""
    marker = tmp_path / 'MARKER'
    evil = _with_config_code(mmengine_ckpt, tmp_path / 'evil.pth', marker)
    install_mmengine_loader()  # what ``import mmrepvgg`` does
    runner = _runner(tmp_path / 'b', max_iters=3, resume=True, load_from=str(evil))
    runner.train()
    assert runner.iter == 3 and not marker.exists()
    # an inferencer given weights without a config parses message_hub's / meta's 'cfg'
    loaded = _load_checkpoint(str(evil), map_location='cpu')
    assert 'cfg' not in loaded['meta'] and 'config' not in loaded['meta']
    assert 'cfg' not in loaded['message_hub']['runtime_info']
    # trusted (--trust-checkpoint, MMREPVGG_TRUST_CHECKPOINTS=1): mmengine's behaviour
    install_mmengine_loader(trust=True)
    _runner(tmp_path / 'c', max_iters=3, resume=True, load_from=str(evil)).train()
    assert marker.read_text() == 'ran'


def test_the_strict_load_hook_drops_config_code_from_any_loader(mmengine_ckpt, tmp_path,
                                                                 pristine_loader):
    """A file mmengine fetches itself (a URL: not through our local loader) is resumed by
    tools/train.py with StrictLoadHook, which removes the code before Runner.resume."""
    from mmrepvgg.engine import StrictLoadHook
    marker = tmp_path / 'MARKER'
    evil = _with_config_code(mmengine_ckpt, tmp_path / 'evil.pth', marker)
    torch.serialization.add_safe_globals(mmengine_safe_globals())
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    runner = _runner(tmp_path / 'b', max_iters=3, resume=True, load_from=str(evil))
    runner.register_hook(StrictLoadHook(deployed='error'))
    runner.train()
    assert runner.iter == 3 and not marker.exists()


# -- issue 23 item 6: numpy 1.x checkpoints, torch's own opt-out ------------------------------

def _as_numpy1(ckpt: Path, out: Path) -> Path:
    """``ckpt`` as numpy 1.x pickles it: ``numpy.core.multiarray`` for ``numpy._core``'s."""
    import zipfile
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            dst.writestr(info.filename, data)
    return out


def test_a_checkpoint_written_under_numpy1_loads(mmengine_ckpt, tmp_path, pristine_loader):
    old = _as_numpy1(mmengine_ckpt, tmp_path / 'np1.pth')
    expected = load_checkpoint_file(mmengine_ckpt)
    loaded = load_checkpoint_file(old)
    hub, ref = loaded['message_hub']['log_scalars'], expected['message_hub']['log_scalars']
    assert sorted(hub) == sorted(ref) and loaded['meta']['iter'] == 2
    for key, buf in ref.items():
        assert (hub[key].data[0] == buf.data[0]).all()
    install_mmengine_loader()
    assert _load_checkpoint(str(old), map_location='cpu')['meta']['iter'] == 2
    _runner(tmp_path / 'b', max_iters=3, resume=True, load_from=str(old)).train()


def test_torch_force_no_weights_only_load_still_applies_to_mmengine(tmp_path, monkeypatch,
                                                                   pristine_loader):
    """torch's documented opt-out for calls that do not pass ``weights_only`` (mmengine's):
    with it set, mmengine unpickles in full as it would without mmrepvgg."""
    marker = tmp_path / 'MARKER'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': _RunsCode(marker)},
               tmp_path / 'full.pth')
    install_mmengine_loader()
    with pytest.raises(CheckpointError, match='trust-checkpoint'):
        _load_checkpoint(str(tmp_path / 'full.pth'), map_location='cpu')
    assert not marker.exists()
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    _load_checkpoint(str(tmp_path / 'full.pth'), map_location='cpu')
    assert marker.exists()
