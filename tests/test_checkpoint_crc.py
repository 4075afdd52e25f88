"""A corrupt zip checkpoint (one flipped bit inside a tensor) is refused wherever it is read.

``torch.load`` does not check the archive's CRC-32s; :func:`load_checkpoint_file` does
(issue 19, item 4), and every reader goes through it: the tools, mmengine's ``load_from`` /
``--resume`` (:func:`install_mmengine_loader`) and the backbone's ``init_cfg``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmrepvgg.checkpoint import CheckpointError, load_checkpoint_file

ROOT = Path(__file__).resolve().parents[1]


def flip_bit_in_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes inside the saved archive ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start >= 0 and data.find(raw, start + 1) < 0
    data[start + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupt(tmp_path) -> tuple[Path, torch.Tensor]:
    weight = torch.arange(4096, dtype=torch.float32) / 7
    path = tmp_path / 'ck.pth'
    torch.save({'state_dict': {'w': weight}, 'meta': {}}, path)
    flip_bit_in_tensor(path, weight)
    return path, weight


def test_torch_itself_loads_the_flipped_bit(corrupt):
    """Why the check is needed: torch reads the damaged tensor without a word."""
    path, weight = corrupt
    loaded = torch.load(path, weights_only=True)['state_dict']['w']
    assert not torch.equal(loaded, weight)


def test_a_flipped_bit_is_a_checkpoint_error_naming_the_entry(corrupt):
    from mmrepvgg.checkpoint import check_zip_crc
    path, _ = corrupt
    with pytest.raises(CheckpointError, match=r'entry ck/data/\d+ fails its CRC-32 check'):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match='CRC-32'):
        load_checkpoint_file(path, trust=True)  # trusting a file does not skip the check
    with pytest.raises(CheckpointError, match='CRC-32'):
        check_zip_crc(path)


def test_an_intact_checkpoint_passes(tmp_path):
    from mmrepvgg.checkpoint import check_zip_crc
    weight = torch.randn(8, 3)
    torch.save({'w': weight}, tmp_path / 'ok.pth')
    check_zip_crc(tmp_path / 'ok.pth')
    assert torch.equal(load_checkpoint_file(tmp_path / 'ok.pth')['w'], weight)


def test_mmengine_load_from_checks_the_crc(corrupt, pristine_loader):
    """mmengine's loading (``load_from``, ``--resume``, ``init_model``) goes through it."""
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmrepvgg.checkpoint import install_mmengine_loader
    install_mmengine_loader()
    with pytest.raises(CheckpointError, match='CRC-32'):
        _load_checkpoint(str(corrupt[0]), map_location='cpu')


def test_a_folder_or_fifo_is_not_a_checkpoint(tmp_path):
    """Issue 19 item 9: a folder or a FIFO was reported as "not found"."""
    with pytest.raises(CheckpointError, match='is a folder'):
        load_checkpoint_file(tmp_path)
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match='not a regular file'):
        load_checkpoint_file(fifo)
    with pytest.raises(FileNotFoundError, match='not found'):
        load_checkpoint_file(tmp_path / 'missing.pth')


def test_deploy_convert_verify_refuses_a_flipped_bit(tmp_path, qa_digits_checkpoint):
    """The probe of the issue: ``deploy_convert --verify`` wrote a "verified" file."""
    config, checkpoint = qa_digits_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / 'flipped.pth'
    torch.save(state, path)
    key = max(state['state_dict'], key=lambda k: state['state_dict'][k].numel())
    flip_bit_in_tensor(path, state['state_dict'][key])
    out = tmp_path / 'deployed.pth'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, 'tools/deploy_convert.py', str(config), str(path),
                           str(out), '--verify'], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'CRC-32' in lines[0], proc.stderr
    assert not out.exists()
