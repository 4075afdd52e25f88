"""Conv-BN folding of the baselines (the paper's fairness protocol)."""
import pytest
import torch
from torch import nn

from projects.benchmark.conv_bn import fuse_conv_bn_pairs
from tests.helpers import randomize_bn_, rel_err


def test_folds_every_pair_of_a_resnet_exactly():
    from mmpretrain.models.backbones import ResNet
    torch.manual_seed(0)
    model = randomize_bn_(ResNet(depth=18))
    model.eval()  # mmpretrain's ResNet.train() returns None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[-1]
    pairs = fuse_conv_bn_pairs(model, x)
    assert len(pairs) == 20  # stem + 16 block convs + 3 downsample convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert rel_err(model(x)[-1], expected) < 1e-5


def test_folds_into_a_conv_with_bias():
    model = randomize_bn_(nn.Sequential(nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5),
                                        nn.ReLU())).eval()
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
    assert fuse_conv_bn_pairs(model, x) == [('0', '1')]
    assert isinstance(model[1], nn.Identity)
    with torch.no_grad():
        assert rel_err(model(x), expected) < 1e-6


class ReadsConvTwice(nn.Module):
    """The conv output feeds the BN *and* a shortcut: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_refuses_a_conv_read_twice_and_restores():
    model = randomize_bn_(ReadsConvTwice()).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(RuntimeError, match='changed the output'):
        fuse_conv_bn_pairs(model, x)
    assert isinstance(model.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_refuses_training_mode():
    with pytest.raises(RuntimeError, match='eval'):
        fuse_conv_bn_pairs(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)),
                           torch.zeros(1, 3, 4, 4))
