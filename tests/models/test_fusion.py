import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrepvgg.models.fusion import (
    fold_problem,
    fuse_branches,
    fuse_conv_bn,
    identity_kernel,
    pad_to_3x3,
)
from mmrepvgg.utils.errors import FoldError
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


def _reference_fusion(k3, bn3, k1, bn1, bn0, groups, post=None):
    """Eq. 1-4 written out with the padded 1x1 and the full identity kernel.

    ``bn1=None`` is a bare 1x1 conv, ``bn0=True`` a bare identity (QARepVGG); ``post`` a BN
    on the sum, folded as QARepVGG's code does: its running mean shifted by the bias.
    """
    kernel, bias = fuse_conv_bn(k3, bn3)
    if k1 is not None:
        if bn1 is None:
            kk, bb = pad_to_3x3(k1).double(), 0
        else:
            kk, bb = fuse_conv_bn(pad_to_3x3(k1), bn1)
        kernel, bias = kernel + kk, bias + bb
    if bn0 is True:
        kernel = kernel + identity_kernel(k3.shape[0], groups)
    elif bn0 is not None:
        kk, bb = fuse_conv_bn(identity_kernel(k3.shape[0], groups), bn0)
        kernel, bias = kernel + kk, bias + bb
    if post is not None:
        std = (post.running_var.double() + post.eps).sqrt()
        gamma, beta = post.weight.double(), post.bias.double()
        kernel = kernel * (gamma / std).reshape(-1, 1, 1, 1)
        bias = beta - (post.running_mean.double() - bias) * gamma / std
    return kernel.float(), bias.float()


@pytest.mark.parametrize('groups', [1, 2, 8])
@pytest.mark.parametrize('with_1x1,with_identity', [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize('slice_elements', [1, 50, 2**17])
def test_fuse_branches_is_bit_identical_to_the_padded_sum(monkeypatch, groups, with_1x1,
                                                          with_identity, slice_elements):
    # the centre-tap shortcut and the slicing over output channels change no bit
    import mmrepvgg.models.fusion as fusion
    monkeypatch.setattr(fusion, '_SLICE_ELEMENTS', slice_elements)
    torch.manual_seed(groups)
    k3 = torch.randn(16, 16 // groups, 3, 3)
    k1 = torch.randn(16, 16 // groups, 1, 1) if with_1x1 else None
    bn3, bn1, bn0 = (randomize_bn_(nn.BatchNorm2d(16)).eval() for _ in range(3))
    kernel, bias = fuse_branches((k3, bn3), (k1, bn1) if with_1x1 else None,
                                 bn0 if with_identity else None, groups)
    ref_kernel, ref_bias = _reference_fusion(k3, bn3, k1, bn1, bn0 if with_identity else None,
                                             groups)
    assert torch.equal(kernel, ref_kernel) and torch.equal(bias, ref_bias)


@pytest.mark.parametrize('groups', [1, 2, 8])
@pytest.mark.parametrize('with_identity', [True, False])
@pytest.mark.parametrize('slice_elements', [1, 50, 2**17])
def test_qa_fold_is_bit_identical_to_the_padded_sum(monkeypatch, groups, with_identity,
                                                     slice_elements):
    # QARepVGG: bare 1x1, bare identity, post BN; same shortcut and slicing, same bits
    import mmrepvgg.models.fusion as fusion
    monkeypatch.setattr(fusion, '_SLICE_ELEMENTS', slice_elements)
    torch.manual_seed(10 + groups)
    k3, k1 = torch.randn(16, 16 // groups, 3, 3), torch.randn(16, 16 // groups, 1, 1)
    bn3, post = (randomize_bn_(nn.BatchNorm2d(16)).eval() for _ in range(2))
    kernel, bias = fuse_branches((k3, bn3), (k1, None), with_identity, groups, post_norm=post)
    ref_kernel, ref_bias = _reference_fusion(k3, bn3, k1, None, True if with_identity else None,
                                             groups, post)
    assert torch.equal(kernel, ref_kernel) and torch.equal(bias, ref_bias)


def test_post_norm_fold_matches_the_modules():
    torch.manual_seed(0)
    conv3 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False)
    conv1 = nn.Conv2d(8, 8, 1, groups=2, bias=False)
    bn3, post = (randomize_bn_(nn.BatchNorm2d(8)).eval() for _ in range(2))
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    conv3, conv1, bn3, post = (m.double() for m in (conv3, conv1, bn3, post))
    expected = post(bn3(conv3(x)) + conv1(x) + x)
    kernel, bias = fuse_branches((conv3.weight, bn3), (conv1.weight, None), True, 2, post)
    out = F.conv2d(x, kernel, bias, padding=2, dilation=2, groups=2)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_fuse_branches_rejects_wrong_kernel_sizes():
    bn = nn.BatchNorm2d(4).eval()
    with pytest.raises(ValueError, match='3x3'):
        fuse_branches((torch.zeros(4, 4, 5, 5), bn), None, None, groups=1)
    with pytest.raises(ValueError, match='1x1'):
        fuse_branches((torch.zeros(4, 4, 3, 3), bn), (torch.zeros(4, 4, 3, 3), bn), None, 1)
    # an identity needs in == out channels: groups that do not match the kernel are refused
    with pytest.raises(ValueError, match='identity branch needs a square kernel'):
        fuse_branches((torch.zeros(4, 4, 3, 3), bn), None, True, groups=2)
    with pytest.raises(ValueError, match='identity branch needs a square kernel'):
        fuse_branches((torch.zeros(4, 2, 3, 3), bn), None, bn, groups=1)


@pytest.mark.parametrize('field,value,match', [
    ('running_var', -1.0, r'running_var \+ eps <= 0 in 1 of 6'),
    ('running_var', -0.5, r'running_var \+ eps <= 0'),  # with eps 0.5 below: 0, 1 / sqrt(0)
    ('running_var', float('nan'), 'running_var has 1 non-finite'),
    ('running_mean', float('inf'), 'running_mean has 1 non-finite'),
    ('weight', float('nan'), 'BN weight has 1 non-finite'),
    ('bias', float('-inf'), 'BN bias has 1 non-finite'),
])
def test_broken_bn_is_refused_not_folded_into_nan(field, value, match):
    bn = randomize_bn_(nn.BatchNorm2d(6, eps=0.5)).eval()
    with torch.no_grad():
        getattr(bn, field)[2] = value
    with pytest.raises(FoldError, match=match):
        fuse_conv_bn(torch.ones(6, 4, 3, 3), bn)
    assert fold_problem(None, bn) is not None


def test_non_finite_kernel_is_refused():
    bn = randomize_bn_(nn.BatchNorm2d(6)).eval()
    kernel = torch.ones(6, 4, 3, 3)
    assert fold_problem(kernel, bn) is None
    kernel[0, 0, 1, 1] = float('nan')
    with pytest.raises(FoldError, match='conv kernel has 1 non-finite values'):
        fuse_conv_bn(kernel, bn)


def test_the_fold_runs_on_one_thread_and_restores_the_callers_threads():
    """The fold's small operations run on one thread (no barrier waits on a busy machine);
    the caller's thread count is back afterwards, also after a refusal."""
    from mmrepvgg.models import RepVGG, reparameterize
    from mmrepvgg.models.fusion import on_one_thread
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert on_one_thread(torch.get_num_threads)() == 1
        arch = dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, ) * 4)
        reparameterize(RepVGG(arch).eval())
        assert torch.get_num_threads() == 2
        model = RepVGG(arch).eval()
        model.stage_1[0].branch_3x3.norm.running_var.fill_(float('nan'))
        with pytest.raises(FoldError):
            reparameterize(model)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
