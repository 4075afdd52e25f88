"""fp16/bf16 of the folded model vs fp32 (tools/check_exactness.py --dtype)."""
from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmrepvgg.models import RepVGG
from projects.exactness.exactness import estimate_bn_stats_, precision_errors
from tests.helpers import run_script

ARCH = dict(num_blocks=(2, 2, 4, 1), width_factors=(0.25, 0.25, 0.25, 0.5))  # 10 blocks


def test_reduced_precision_errors_are_measured():
    rows = {r.dtype: r for r in precision_errors(ARCH, shape=(32, 32))}
    fp16, bf16 = rows['fp16'], rows['bf16']
    assert not fp16.skipped and not bf16.skipped  # both run on a CPU with torch 2.14
    # a real, finite loss that grows with fewer mantissa bits (fp16: 10, bf16: 7)
    assert 0 < fp16.deploy_max < 0.1 and 0 < fp16.deploy_l2 < fp16.deploy_max * 10
    assert bf16.deploy_max > fp16.deploy_max and bf16.deploy_l2 > fp16.deploy_l2
    assert 0 < fp16.train_max < 0.1


def test_estimated_bn_statistics_keep_activations_at_unit_scale():
    torch.manual_seed(0)
    model = RepVGG(ARCH, out_indices=(3, ))
    x = torch.randn(2, 3, 32, 32)
    estimate_bn_stats_(model, x)
    assert not model.training
    bn = next(m for m in model.modules() if isinstance(m, _BatchNorm))
    assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 1
    with torch.no_grad():
        assert model(x)[-1].abs().max() < 1e3


def test_check_exactness_dtype_table(monkeypatch, capsys):
    assert run_script(monkeypatch, 'tools/check_exactness.py', '--dtype', 'fp16', '--arch', 'A0',
                      '--shape', '32', '32') == 0
    out = capsys.readouterr().out
    assert '| model | dtype | deployed: max rel |' in out and '| A0 | fp16 |' in out


def test_a_trained_checkpoint_on_its_test_images(trained_digits, tmp_path):
    from projects.exactness.exactness import checkpoint_precision_errors
    cfg, ckpt = trained_digits
    cfg_file = tmp_path / 'digits.py'
    cfg.dump(str(cfg_file))
    rows, inputs = checkpoint_precision_errors(str(cfg_file), ckpt, batch=16)
    assert inputs == 'logits on 16 test images of (32, 32)'
    fp16, bf16 = rows
    assert fp16.dtype == 'fp16' and 0 < fp16.deploy_max < 1e-2 and fp16.train_max < 1e-2
    assert fp16.deploy_max < bf16.deploy_max < 0.1
