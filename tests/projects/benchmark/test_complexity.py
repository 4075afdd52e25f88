"""FLOPs / Wino MULs / params in the paper's convention, checked by hand."""
from fractions import Fraction

import pytest
import torch
from torch import nn

from mmrepvgg import RepVGG, reparameterize
from projects.benchmark.complexity import count_complexity, winograd_factor
from mmrepvgg.models.arch import layer_specs


def tiny_model() -> nn.Module:
    """Every case of the Wino rule on an 8x8 input (batch 1)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),             # 3x3 s1: Winograd
        nn.BatchNorm2d(4),                                     # not a FLOP in the paper's count
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),               # 3x3 s2: full cost
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),   # grouped 3x3 s1: Winograd
        nn.Conv2d(8, 8, 1, bias=False),                        # 1x1: full cost
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),  # dilated 3x3: full cost
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),                              # FC: full cost
    )


def test_tiny_model_counts_by_hand():
    c = count_complexity(tiny_model(), torch.zeros(1, 3, 8, 8))
    # multiply-adds: out pixels * C_out * C_in / groups * k * k
    conv_s1 = 8 * 8 * 4 * 3 * 9            # 6912
    conv_s2 = 4 * 4 * 8 * 4 * 9            # 4608
    conv_grouped = 4 * 4 * 8 * (8 // 2) * 9  # 4608
    conv_1x1 = 4 * 4 * 8 * 8               # 1024
    conv_dilated = 4 * 4 * 8 * 8 * 9       # 9216
    fc = 128 * 10                          # 1280
    assert c.flops == conv_s1 + conv_s2 + conv_grouped + conv_1x1 + conv_dilated + fc
    wino = (Fraction(4, 9) * (conv_s1 + conv_grouped) + conv_s2 + conv_1x1 + conv_dilated
            + fc)
    assert c.wino_muls == pytest.approx(float(wino), abs=1e-6)
    assert c.wino_muls == 3072 + 4608 + 2048 + 1024 + 9216 + 1280
    params = (4 * 3 * 9) + 2 * 4 + (8 * 4 * 9 + 8) + 8 * 4 * 9 + 64 + 8 * 8 * 9 + (1280 + 10)
    assert c.params == params
    # BN is outside the paper's FLOPs but inside mmengine's total (eval, affine: 2 per element)
    assert c.by_operator['batch_norm'] == 2 * 4 * 8 * 8
    assert c.flops_all == c.flops + 2 * 4 * 8 * 8
    assert [layer.wino_muls / layer.macs for layer in c.layers] == pytest.approx(
        [4 / 9, 1, 4 / 9, 1, 1, 1])


def test_winograd_factor_rule():
    assert winograd_factor(nn.Conv2d(4, 4, 3)) == Fraction(4, 9)
    assert winograd_factor(nn.Conv2d(4, 4, 3, groups=4)) == Fraction(4, 9)
    assert winograd_factor(nn.Conv2d(4, 4, 3, stride=2)) == 1
    assert winograd_factor(nn.Conv2d(4, 4, 3, dilation=2)) == 1
    assert winograd_factor(nn.Conv2d(4, 4, 1)) == 1
    assert winograd_factor(nn.Conv2d(4, 4, 5)) == 1
    assert winograd_factor(nn.Linear(4, 4)) == 1


ARCH = dict(num_blocks=(2, 2, 2, 1), width_factors=(0.25, 0.25, 0.25, 0.5), groups=2)


@pytest.mark.parametrize('deploy', [True, False])
def test_repvgg_with_strided_and_grouped_layers(deploy):
    """Each block's count from the arch table: strided layers full cost, grouped stride-1
    3x3 at 4/9; the training-time 1x1 branch always at full cost."""
    size = 64
    model = RepVGG(ARCH).eval()
    if deploy:
        reparameterize(model)
    c = count_complexity(model, torch.zeros(1, 3, size, size))
    flops, wino, hw, grouped = 0, Fraction(0), size, 0
    for stage in layer_specs(ARCH):
        for spec in stage:
            hw //= spec.stride
            macs3 = hw * hw * spec.out_channels * spec.in_channels // spec.groups * 9
            macs1 = macs3 // 9
            flops += macs3 + (0 if deploy else macs1)
            wino += (Fraction(4, 9) if spec.stride == 1 else 1) * macs3 + (0 if deploy else macs1)
            grouped += spec.groups > 1
    assert grouped > 0 and hw == 2
    assert c.flops == flops
    assert c.wino_muls == pytest.approx(float(wino), abs=1e-6)
    assert c.params == sum(p.numel() for p in model.parameters())


def test_qarepvgg_names_build_and_count_as_the_plain_repvgg():
    """``QARepVGG-A0`` in complexity/benchmark: deployed, the same model as RepVGG-A0."""
    from projects.benchmark.models import build_from_spec as build_model
    from projects.benchmark.complexity import model_complexity
    from projects.benchmark.models import resolve_name
    assert resolve_name('QARepVGG-A0') == ('qarepvgg', 'A0')
    assert resolve_name('qarepvgg_b1g2') == ('qarepvgg', 'B1g2')
    assert resolve_name('RepVGG-A0') == ('repvgg', 'A0')
    with pytest.raises(KeyError, match='without SE'):
        resolve_name('QARepVGG-D2se')
    built = build_model('QARepVGG-A0', num_classes=10)
    assert built.name == 'QARepVGG-A0' and built.family == 'repvgg'
    assert built.model.backbone.block_type == 'QARepVGGBlock'
    qa = model_complexity('QARepVGG-A0', (32, 32), num_classes=10)
    plain = model_complexity('A0', (32, 32), num_classes=10)
    assert qa['deploy'] == plain['deploy']
    # training time: no BN on the 1x1 and identity branches, one post BN per block
    assert qa['train']['params_m'] < plain['train']['params_m']
    assert qa['train']['flops_b'] == plain['train']['flops_b']


def test_validate_specs_checks_names_and_config_paths():
    from projects.benchmark.models import validate_specs
    validate_specs(['A0', 'RepVGG-b1g2', 'QARepVGG-A0', 'resnet-50',
                    'configs/repvgg-a0_in1k.py'])
    with pytest.raises(KeyError, match="Unknown model 'Z9'"):
        validate_specs(['A0', 'Z9'])
    with pytest.raises(KeyError):  # peers are the benchmark's (benchmark.validate_specs)
        validate_specs(['timm:A0'])
    with pytest.raises(FileNotFoundError, match='Config not found: configs/no_such.py'):
        validate_specs(['configs/no_such.py'])


def test_a_config_is_counted_at_its_own_test_size():
    """A config without --shape is counted at its test size (issue 22), not 713x713."""
    from projects.benchmark.complexity import model_complexity
    from tests.helpers import ROOT
    config = ROOT / 'configs' / 'demo' / 'pspnet_repvgg-small_tiny-cityscapes.py'
    assert model_complexity(str(config))['input_shape'] == [128, 256]
    assert model_complexity(str(config), shape=(64, 64))['input_shape'] == [64, 64]
