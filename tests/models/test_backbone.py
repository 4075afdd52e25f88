import pytest
import torch
from torch import nn

from mmrepvgg import QARepVGGBlock, RepVGG, RepVGGBlock, reparameterize
from mmrepvgg.models import RepBlockBase
from mmrepvgg.models.arch import ARCH_ZOO, get_arch, layer_specs, resolve_dilation_plan
from mmrepvgg.utils.errors import CheckpointError
from projects.exactness.exactness import fold_errors
from tests.helpers import randomize_bn_

PLANS = [None, 'full', 'fast']

# Params (M) of the deployed classifier (1000 classes), paper Tables 4 and 5. The paper
# truncates to two decimals (A0 has 8,309,384 parameters: "8.30").
PAPER_PARAMS = {'A0': 8.30, 'A1': 12.78, 'A2': 25.49, 'B0': 14.33, 'B1': 51.82,
                'B1g2': 41.36, 'B1g4': 36.12, 'B2': 80.31, 'B2g4': 55.77, 'B3': 110.96,
                'B3g4': 75.62}


@pytest.mark.parametrize('plan', PLANS)
@pytest.mark.parametrize('arch', list(ARCH_ZOO))
def test_every_arch_and_plan_folds_exactly(arch, plan):
    """The folded model gives the training-time model's outputs (eval mode, BN running stats).

    fp64 checks the algebra (1e-10). fp32 is checked as deployed: within 1e-5 of the output
    scale on PyTorch's reference conv backend, and within 2e-5 on the default oneDNN backend,
    whose own rounding differs between the 3x3+1x1+BN path and the fused conv. The measured
    figures (``python tools/check_exactness.py``) are in docs/exactness_cpu.md.
    """
    errors = fold_errors(arch, plan)
    assert errors.fp64 <= 1e-10
    assert errors.fp32_reference <= 1e-5
    assert errors.fp32_default <= 2e-5


@pytest.mark.parametrize('plan', PLANS)
@pytest.mark.parametrize('arch', ['A0', 'B1g2', 'B2'])
def test_qa_folds_exactly(arch, plan):
    """QARepVGG blocks fold as exactly as RepVGG's (the measured figures for every arch,
    ``python tools/check_exactness.py --block QARepVGGBlock``, are in docs/exactness_cpu.md).
    """
    errors = fold_errors(arch, plan, block='QARepVGGBlock')
    assert errors.fp64 <= 1e-10
    assert errors.fp32_reference <= 2e-5
    assert errors.fp32_default <= 2e-5


@pytest.mark.parametrize('block', ['RepVGGBlock', 'QARepVGGBlock'])
@pytest.mark.parametrize('plan', PLANS)
def test_folded_keys_are_the_plain_models(plan, block):
    model = RepVGG('B1g2', dilation_plan=plan, block_cfg=dict(type=block))
    reparameterize(model.eval())
    plain = RepVGG('B1g2', dilation_plan=plan, deploy=True)
    plain.load_state_dict(model.state_dict(), strict=True)
    assert model.deploy and model.block_type == block


@pytest.mark.parametrize('arch', [a for a in ARCH_ZOO if not ARCH_ZOO[a].use_se])
def test_deployed_qa_model_has_the_params_of_deployed_repvgg(arch):
    """Folded on the meta device (no memory, no arithmetic): same keys, shapes and count."""
    with torch.device('meta'):
        qa = reparameterize(RepVGG(arch, block_cfg=dict(type='QARepVGGBlock')).eval())
        plain = RepVGG(arch, deploy=True)
    shapes = {k: v.shape for k, v in qa.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    assert sum(p.numel() for p in qa.parameters()) == sum(p.numel() for p in plain.parameters())


def test_qa_training_model_matches_the_authors_parameter_count():
    """QARepVGG-B0 with a 1000-class fc has 15,808,616 parameters in the authors' training
    log (cxxgtxy/QARepVGG B0_log.txt, ``n_parameters``); RepVGG-B0 has more (BN on the 1x1 and
    identity branches)."""
    with torch.device('meta'):
        qa = RepVGG('B0', block_cfg=dict(type='QARepVGGBlock'))
        plain = RepVGG('B0')
    fc = 1280 * 1000 + 1000
    assert sum(p.numel() for p in qa.parameters()) + fc == 15_808_616
    assert sum(p.numel() for p in plain.parameters()) + fc > 15_808_616


def test_a_wrong_fold_is_caught(monkeypatch):
    """The exactness check can fail: drop the 1x1 branch from the fused kernel."""
    from mmrepvgg.models import block
    real = block.fuse_branches
    monkeypatch.setattr(block, 'fuse_branches',
                        lambda k3, k1, identity, groups: real(k3, None, identity, groups))
    assert fold_errors('A0').fp64 > 1e-3


def test_a_wrong_qa_fold_is_caught(monkeypatch):
    """The same check fails for QARepVGG when the post BN is left out of the fold."""
    from mmrepvgg.models import block
    real = block.fuse_branches
    monkeypatch.setattr(block, 'fuse_branches',
                        lambda k3, k1, identity, groups, post_norm=None:
                        real(k3, k1, identity, groups))
    assert fold_errors('A0', block='QARepVGGBlock').fp64 > 1e-3


def test_block_cfg_builds_qa_blocks_everywhere():
    model = RepVGG('B1g4', dilation_plan='fast', block_cfg=dict(type='QARepVGGBlock'))
    blocks = [m for m in model.modules() if isinstance(m, RepBlockBase)]
    assert len(blocks) == 28 and all(isinstance(b, QARepVGGBlock) for b in blocks)
    assert [b.dilation for b in blocks] == [1] * 23 + [2, 2, 2, 2, 4]
    assert [b.groups for b in blocks].count(4) == 13
    assert all(b.branch_1x1.dilation == (1, 1) and b.branch_1x1.padding == (0, 0)
               for b in blocks)
    assert model.block_type == 'QARepVGGBlock'
    assert RepVGG('A0').block_type == 'RepVGGBlock'


@pytest.mark.parametrize('block_cfg,match', [
    (dict(type='Conv2d'), 'not a RepVGG block type'),
    (dict(type='NoSuchBlock'), 'not a RepVGG block type'),
    (dict(type='QARepVGGBlock', groups=2), "may not set \\['groups'\\]"),
])
def test_bad_block_cfg_says_what_is_wrong(block_cfg, match):
    with pytest.raises(ValueError, match=match):
        RepVGG('A0', block_cfg=block_cfg)


def test_qa_with_se_is_refused():
    with pytest.raises(ValueError, match='does not support use_se'):
        RepVGG('D2se', block_cfg=dict(type='QARepVGGBlock'))


@pytest.mark.parametrize('arch', list(PAPER_PARAMS))
def test_params_match_paper(arch):
    backbone = RepVGG(arch, deploy=True)
    fc = nn.Linear(backbone.out_channels[0], 1000)
    n = sum(p.numel() for m in (backbone, fc) for p in m.parameters())
    assert n // 10_000 == round(PAPER_PARAMS[arch] * 100), n


@pytest.mark.parametrize('plan,strides', [(None, (4, 8, 16, 32)), ('full', (4, 8, 8, 8)),
                                          ('fast', (4, 8, 8, 8))])
def test_stage_shapes_and_strides(plan, strides):
    model = RepVGG('B1g2', out_indices=(0, 1, 2, 3), dilation_plan=plan).eval()
    out = model(torch.rand(1, 3, 64, 96))
    assert model.out_channels == (128, 256, 512, 2048)
    for o, c, s in zip(out, model.out_channels, strides):
        assert o.shape == (1, c, 64 // s, 96 // s)
    assert model.layout.output_strides == strides


def test_fast_plan_dilates_exactly_the_last_five_layers():
    model = RepVGG('B2', dilation_plan='fast')
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    dilations = [b.dilation for b in blocks]
    assert dilations == [1] * (len(blocks) - 5) + [2, 2, 2, 2, 4]
    assert [b.branch_3x3.conv.dilation[0] for b in blocks] == dilations
    assert [b.branch_3x3.conv.padding[0] for b in blocks] == dilations
    assert all(b.branch_1x1.conv.dilation == (1, 1) for b in blocks)
    stage3 = list(model.stage_3)
    assert [b.stride for b in stage3] == [1] * 16 and model.stage_4[0].stride == 1


def test_full_plan_dilates_last_two_stages():
    model = RepVGG('A0', dilation_plan='full')
    assert {b.dilation for b in model.stage_3} == {2}
    assert {b.dilation for b in model.stage_4} == {4}
    assert {b.dilation for s in (model.stem, *model.stage_1, *model.stage_2) for b in [s]} == {1}


def test_explicit_plans():
    plan = dict(strides=(2, 2, 1, 2), dilations=(1, 1, [1] * 10 + [2, 3, 4, 5], 1))
    layout = resolve_dilation_plan(plan, get_arch('A1').num_blocks)
    assert layout.dilations[2][-4:] == (2, 3, 4, 5) and layout.output_strides == (4, 8, 8, 16)
    model = RepVGG('A1', dilation_plan=plan, out_indices=(3, )).eval()
    assert model(torch.rand(1, 3, 32, 32))[0].shape[-1] == 2


@pytest.mark.parametrize('plan,match', [
    ('half', 'Unknown dilation plan'),
    (dict(strides=(2, 2, 1)), 'strides must be 4'),
    (dict(strides=(2, 2, 3, 1)), 'strides must be 4'),
    (dict(dilations=(1, 1, 2)), '4 entries'),
    (dict(dilations=(1, 1, [2, 2], 4)), 'stage_3 list 2 layers, but that stage has 14'),
    (dict(dilations=(1, 1, 0, 4)), 'positive ints'),
    (dict(dilation=(1, 1, 2, 4)), 'Unknown keys'),
])
def test_malformed_plans_say_what_is_wrong(plan, match):
    with pytest.raises(ValueError, match=match):
        RepVGG('A0', dilation_plan=plan)


def test_grouped_layers_follow_the_paper():
    # 3rd, 5th, ..., 27th layer of RepVGG-B (0-based 2, 4, ..., 26); 1x1 branch too
    blocks = [b for stage in layer_specs('B1g4') for b in stage]
    assert [i for i, b in enumerate(blocks) if b.groups == 4] == list(range(2, 27, 2))
    blocks = [b for stage in layer_specs('A0') for b in stage]
    assert len(blocks) == 22 and all(b.groups == 1 for b in blocks)
    model = RepVGG('B2g2')
    layer2 = model.stage_1[1]
    assert layer2.branch_3x3.conv.groups == layer2.branch_1x1.conv.groups == 2


def test_arch_names_and_specs():
    assert get_arch('RepVGG-B1g2') is ARCH_ZOO['B1g2'] and get_arch('b2') is ARCH_ZOO['B2']
    custom = RepVGG(dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, 0.25, 0.25, 0.5)))
    assert custom.arch_name == 'custom' and custom.out_channels == (256, )
    with pytest.raises(KeyError, match='Unknown RepVGG arch'):
        RepVGG('C9')
    with pytest.raises(ValueError, match='missing keys'):
        RepVGG(dict(num_blocks=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='out_indices'):
        RepVGG('A0', out_indices=(4, ))
    with pytest.raises(ValueError, match='frozen_stages'):
        RepVGG('A0', frozen_stages=5)


def test_frozen_stages_and_norm_eval():
    model = RepVGG('A0', frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stage_1.parameters())
    assert all(p.requires_grad for p in model.stage_2.parameters())
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = RepVGG('A0', out_indices=(0, ))
    b = RepVGG('A0', out_indices=(0, ), with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 32, 32)
    a(x)[0].sum().backward()
    b(x)[0].sum().backward()
    torch.testing.assert_close(a.stem.branch_3x3.conv.weight.grad,
                               b.stem.branch_3x3.conv.weight.grad)


def test_pretrained_init_is_strict(tmp_path):
    src = randomize_bn_(RepVGG('A0'))
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}}, path)
    model = RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                       prefix='backbone.'))
    model.init_weights()
    torch.testing.assert_close(model.stage_4[0].branch_3x3.norm.running_var,
                               src.stage_4[0].branch_3x3.norm.running_var)
    wrong = RepVGG('A1', init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                       prefix='backbone.'))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        wrong.init_weights()
    missing = RepVGG('A0', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no.pth')))
    with pytest.raises(FileNotFoundError, match='convert_weights'):
        missing.init_weights()


@pytest.mark.parametrize('kwargs,match', [
    (dict(out_indices=(3, 0)), r'increasing .* use \(0, 3\)'),
    (dict(out_indices=(3, 3)), r'without repeats .* use \(3,\)'),
    (dict(out_indices=(0, -1, 3)), r'use \(0, 3\)'),
    (dict(dilation_plan=dict(strides=(2, 2, 1, 1), dilations=(1, 1, 2.0, 4))),
     'stage_3 must be a positive int or a list'),
    (dict(dilation_plan=dict(strides=(2, 2, 1.0, 1))), 'strides must be 4 values'),
    (dict(arch=dict(num_blocks=(1, 1, 1, 1), width_factors=(0.001, 1, 1, 1))),
     'layers without channels'),
    (dict(arch=dict(num_blocks=(1, 1, 1, 1), width_factors=('1', 1, 1, 1))),
     'width_factors must be 4 positive numbers'),
    (dict(frozen_stages=2.5), 'frozen_stages must be an int'),
    (dict(in_channels=0), 'in_channels must be a positive int'),
    (dict(in_channels=3.0), 'in_channels must be a positive int'),
])
def test_bad_arguments_are_refused(kwargs, match):
    kwargs = dict(dict(arch='A0'), **kwargs)
    with pytest.raises(ValueError, match=match):
        RepVGG(**kwargs)


def test_out_channels_follow_the_maps():
    model = RepVGG('A0', out_indices=(-4, 2)).eval()
    outs = model(torch.rand(1, 3, 32, 32))
    assert model.out_indices == (0, 2)
    assert tuple(o.shape[1] for o in outs) == model.out_channels == (48, 192)
