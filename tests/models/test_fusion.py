import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrepvgg.models.fusion import fuse_branches, fuse_conv_bn, identity_kernel, pad_to_3x3
from tests.helpers import randomize_bn_


def test_fuse_conv_bn_matches_eq3():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = randomize_bn_(nn.BatchNorm2d(6)).eval()
    x = torch.randn(2, 4, 8, 8)
    kernel, bias = fuse_conv_bn(conv.weight, bn)
    assert kernel.dtype == torch.float64
    out = F.conv2d(x.double(), kernel, bias, padding=1)
    torch.testing.assert_close(out.float(), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fuse_conv_bn_without_running_stats_is_refused():
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match='running statistics'):
        fuse_conv_bn(torch.ones(3, 3, 3, 3), bn)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_identity_kernel_is_identity(groups):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    out = F.conv2d(x, identity_kernel(8, groups), padding=1, groups=groups)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize('dilation', [1, 2, 4])
def test_padded_1x1_lands_on_dilated_centre_tap(dilation):
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    k1 = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    expected = F.conv2d(x, k1)
    out = F.conv2d(x, pad_to_3x3(k1), padding=dilation, dilation=dilation)
    torch.testing.assert_close(out, expected)


def test_pad_rejects_other_sizes():
    with pytest.raises(ValueError):
        pad_to_3x3(torch.zeros(2, 2, 5, 5))


def test_fuse_branches_keeps_dtype():
    k3 = torch.randn(4, 4, 3, 3, dtype=torch.float16)
    kernel, bias = fuse_branches((k3, nn.BatchNorm2d(4).eval()), None, None, groups=1)
    assert kernel.dtype == bias.dtype == torch.float16
