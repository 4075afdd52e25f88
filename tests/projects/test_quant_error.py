"""int8 weight-quantization error of folded kernels: checked by hand and on blocks."""
import math

import pytest
import torch
from torch import nn

from mmrepvgg import QARepVGGBlock, RepVGG, RepVGGBlock, reparameterize
from projects.qa_digits.quant_error import (folded_kernel_errors, quantize_symmetric, sqnr_db,
                               summarize_errors)
from tests.helpers import randomize_bn_


def test_sqnr_by_hand():
    w = torch.tensor([[1.0], [0.3]], dtype=torch.float64)
    # per tensor: scale 1/127; 0.3 * 127 = 38.1 -> 38
    err = 0.3 - 38 / 127
    assert sqnr_db(w, per_channel=False) == pytest.approx(10 * math.log10(1.09 / err**2))
    # per channel: each channel is its own max, so exact
    assert sqnr_db(w, per_channel=True) == math.inf
    q = quantize_symmetric(w, per_channel=False)
    assert q.dtype == torch.float64 and q[1, 0].item() == pytest.approx(38 / 127)


def test_values_on_the_grid_are_exact_and_zero_channels_are_safe():
    scale = 0.01
    w = torch.tensor([[-127, 5, 0], [0, 0, 0], [3, -1, 2]], dtype=torch.float64) * scale
    assert sqnr_db(w, per_channel=False) == math.inf
    assert torch.isfinite(quantize_symmetric(w, per_channel=True)).all()


def test_an_outlier_costs_per_tensor_more_than_per_channel():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    clean = sqnr_db(w, per_channel=False)
    w[3, 0, 1, 1] = 40 * w.std()  # one large centre tap, as a folded identity can make
    per_tensor, per_channel = sqnr_db(w, per_channel=False), sqnr_db(w, per_channel=True)
    assert per_tensor < clean - 10
    assert per_channel > per_tensor + 10
    # ~6 dB per bit: int8 on a Gaussian is around 40 dB
    assert 30 < clean < 45


@pytest.mark.parametrize('block', ['RepVGGBlock', 'QARepVGGBlock'])
def test_folded_kernel_errors_per_block_without_changing_the_model(block):
    torch.manual_seed(0)
    arch = dict(num_blocks=(1, 1, 2, 1), width_factors=(0.25, 0.25, 0.25, 0.5))
    model = randomize_bn_(RepVGG(arch, block_cfg=dict(type=block))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = folded_kernel_errors(model)
    assert [layer.name for layer in layers] == ['stem', 'stage_1.0', 'stage_2.0', 'stage_3.0',
                                                'stage_3.1', 'stage_4.0']
    assert not model.deploy and all(torch.equal(before[k], v)
                                    for k, v in model.state_dict().items())
    kernel = model.stage_3[1].equivalent_kernel_bias()[0]
    assert layers[4].per_tensor_db == sqnr_db(kernel, per_channel=False)
    assert layers[4].shape == tuple(kernel.shape)
    # the same numbers from the folded model
    folded = folded_kernel_errors(reparameterize(model))
    assert [f.per_channel_db for f in folded] == pytest.approx([e.per_channel_db for e in layers])
    summary = summarize_errors(layers)
    values = sorted(e.per_tensor_db for e in layers)
    assert summary['layers'] == 6 and summary['per_tensor']['min_db'] == values[0]
    assert summary['per_tensor']['median_db'] == pytest.approx((values[2] + values[3]) / 2)
    assert summary['per_channel']['min_db'] >= summary['per_tensor']['min_db'] - 1e-9


def test_an_identity_heavy_block_shows_up():
    """A RepVGG block whose identity BN is large in one channel folds to a centre-tap outlier
    that costs a per-tensor scale (and not a per-channel one) precision."""
    block = randomize_bn_(RepVGGBlock(8, 8)).eval()
    qa = randomize_bn_(QARepVGGBlock(8, 8)).eval()
    base = folded_kernel_errors(nn.Sequential(block))[0]
    with torch.no_grad():
        block.branch_norm.weight[0] = 50.0
    heavy = folded_kernel_errors(nn.Sequential(block))[0]
    assert heavy.max_over_std > base.max_over_std
    gap = heavy.per_channel_db - heavy.per_tensor_db
    assert gap > 8 and gap > base.per_channel_db - base.per_tensor_db
    assert folded_kernel_errors(nn.Sequential(qa))[0].per_channel_db > 0


def test_a_model_without_blocks_is_an_error():
    with pytest.raises(ValueError, match='no RepVGG blocks'):
        folded_kernel_errors(nn.Conv2d(3, 3, 3))
