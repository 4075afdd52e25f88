import copy

import pytest
import torch
from mmengine.evaluator import BaseMetric
from torch import nn

from mmrepvgg import QARepVGGBlock, RepVGGBlock, reparameterize
from mmrepvgg.utils.errors import FoldError
from tests.helpers import randomize_bn_, rel_err


@pytest.mark.parametrize('in_ch,out_ch,stride,dilation,groups', [
    (8, 8, 1, 1, 1),   # identity branch
    (8, 16, 2, 1, 1),  # no identity branch
    (8, 8, 1, 2, 1),   # dilated, identity
    (8, 8, 1, 4, 4),   # dilated, grouped, identity
    (8, 16, 1, 2, 2),  # dilated, grouped, no identity
    (16, 16, 2, 1, 4), # strided, grouped
    (8, 8, 1, 3, 8),   # depthwise
])
def test_block_folds_exactly(in_ch, out_ch, stride, dilation, groups):
    torch.manual_seed(0)
    block = randomize_bn_(RepVGGBlock(in_ch, out_ch, stride, dilation, groups)).eval()
    assert (block.branch_norm is not None) == (in_ch == out_ch and stride == 1)
    x = torch.randn(2, in_ch, 13, 11)  # odd, non-square
    expected = block(x)
    kernel, bias = block.equivalent_kernel_bias()
    assert not block.deploy  # computing the kernel changes nothing
    block.switch_to_deploy()
    assert block.deploy and not hasattr(block, 'branch_3x3')
    assert block.branch_reparam.dilation == (dilation, dilation)
    assert block.branch_reparam.padding == (dilation, dilation)
    torch.testing.assert_close(block.branch_reparam.weight, kernel)
    assert rel_err(block(x), expected) <= 1e-5


def test_block_with_se_folds_and_handles_non_square():
    block = randomize_bn_(RepVGGBlock(8, 8, use_se=True)).eval()
    x = torch.randn(1, 8, 7, 12)
    expected = block(x)
    reparameterize(block)
    assert rel_err(block(x), expected) <= 1e-5


def test_deploy_block_has_the_folded_keys():
    block = RepVGGBlock(4, 4, stride=1, dilation=2, deploy=True)
    state = block.state_dict()
    assert set(state) == {'branch_reparam.weight', 'branch_reparam.bias', 'rep_geometry'}
    assert state['rep_geometry'].tolist() == [1, 1, 2, 1]  # RepVGGBlock, stride, dilation, groups
    assert 'rep_geometry' in dict(block.named_buffers())  # (a non-persistent buffer:
    assert 'rep_geometry' in block._non_persistent_buffers_set  # saved by the block)


def test_training_mode_is_refused_and_model_untouched():
    model = nn.Sequential(RepVGGBlock(4, 4), RepVGGBlock(4, 4))
    model[0].eval()
    with pytest.raises(RuntimeError, match='eval'):
        reparameterize(model)
    assert not model[0].deploy and not model[1].deploy


def test_reparameterize_is_idempotent_and_keeps_dtype():
    model = randomize_bn_(nn.Sequential(RepVGGBlock(4, 8, stride=2), RepVGGBlock(8, 8)))
    model = model.double().eval()
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    expected = model(x)
    reparameterize(model)
    once = copy.deepcopy(model.state_dict())
    reparameterize(model)
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items())
    assert model[0].branch_reparam.weight.dtype == torch.float64
    assert rel_err(model(x), expected) <= 1e-12


def test_bad_block_arguments():
    with pytest.raises(ValueError, match='groups'):
        RepVGGBlock(6, 8, groups=4)
    with pytest.raises(ValueError, match='dilation'):
        RepVGGBlock(4, 4, dilation=0)


@pytest.mark.parametrize('use_se,with_cp', [(False, False), (True, False), (False, True)])
def test_inplace_activation_gives_the_same_outputs_and_gradients(use_se, with_cp):
    torch.manual_seed(0)
    block = RepVGGBlock(8, 8, use_se=use_se, with_cp=with_cp)
    assert block.act.inplace  # the default: as timm's and mmcv ConvModule's
    plain = copy.deepcopy(block)
    plain.act = nn.ReLU(inplace=False)
    x = torch.randn(2, 8, 9, 9)
    for model in (block, plain):
        xx = x.clone().requires_grad_()
        out = model(xx)
        out.square().sum().backward()
        model.result = out.detach(), xx.grad
    torch.testing.assert_close(block.result[0], plain.result[0], rtol=0, atol=0)
    torch.testing.assert_close(block.result[1], plain.result[1], rtol=0, atol=0)
    for (name, p), q in zip(block.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_activation_config_is_respected():
    assert not RepVGGBlock(4, 4, act_cfg=dict(type='ReLU', inplace=False)).act.inplace
    assert isinstance(RepVGGBlock(4, 4, act_cfg=dict(type='GELU')).act, nn.GELU)
    assert isinstance(RepVGGBlock(4, 4, act_cfg=None).act, nn.Identity)


def test_deployed_conv_keeps_frozen_weights_frozen():
    block = randomize_bn_(RepVGGBlock(4, 4)).eval()
    for p in block.parameters():
        p.requires_grad = False
    block.switch_to_deploy()
    assert not any(p.requires_grad for p in block.parameters())
    assert all(p.device.type == 'cpu' for p in block.parameters())  # not left on 'meta'


# ------------------------------------------------------------------------------ QARepVGG

BLOCK_CASES = [
    (8, 8, 1, 1, 1),   # identity branch
    (8, 16, 2, 1, 1),  # no identity branch
    (8, 8, 1, 4, 4),   # dilated, grouped, identity
    (8, 16, 1, 2, 2),  # dilated, grouped, no identity
    (16, 16, 2, 1, 4), # strided, grouped
    (8, 8, 1, 3, 8),   # depthwise, dilated
]


@pytest.mark.parametrize('in_ch,out_ch,stride,dilation,groups', BLOCK_CASES)
def test_qa_block_folds_exactly(in_ch, out_ch, stride, dilation, groups):
    torch.manual_seed(0)
    block = randomize_bn_(QARepVGGBlock(in_ch, out_ch, stride, dilation, groups)).eval()
    assert block.has_identity == (in_ch == out_ch and stride == 1)
    x = torch.randn(2, in_ch, 13, 11)
    expected = block(x)
    block64 = copy.deepcopy(block).double()
    expected64 = block64(x.double())
    kernel, bias = block.equivalent_kernel_bias()
    assert not block.deploy
    reparameterize(block)
    reparameterize(block64)
    assert block.deploy and not hasattr(block, 'post_norm') and not hasattr(block, 'branch_1x1')
    assert block.branch_reparam.dilation == block.branch_reparam.padding == (dilation, dilation)
    assert block.branch_reparam.groups == groups and block.branch_reparam.stride == (stride, ) * 2
    torch.testing.assert_close(block.branch_reparam.weight, kernel)
    torch.testing.assert_close(block.branch_reparam.bias, bias)
    assert rel_err(block64(x.double()), expected64) <= 1e-12
    assert rel_err(block(x), expected) <= 1e-5


def test_qa_block_layout_and_keys():
    block = QARepVGGBlock(8, 8)
    bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2  # the 3x3 branch's and the post BN (RepVGG: 3)
    assert len([m for m in RepVGGBlock(8, 8).modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]) == 3
    assert block.norms() == [block.branch_3x3.norm, block.post_norm]
    keys = set(block.state_dict())
    assert 'branch_1x1.weight' in keys and 'post_norm.running_var' in keys
    assert not any(k.startswith(('branch_norm', 'branch_1x1.norm', 'branch_1x1.conv'))
                   for k in keys)
    assert len([m for m in QARepVGGBlock(8, 16, stride=2).modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]) == 2


def test_qa_block_deploys_as_the_repvgg_block():
    qa = reparameterize(randomize_bn_(QARepVGGBlock(8, 8, dilation=2, groups=2)).eval())
    plain = RepVGGBlock(8, 8, dilation=2, groups=2, deploy=True)
    plain.load_state_dict(qa.state_dict(), strict=True)
    assert set(qa.state_dict()) == {'branch_reparam.weight', 'branch_reparam.bias',
                                    'rep_geometry'}
    assert set(QARepVGGBlock(4, 4, deploy=True).state_dict()) == set(plain.state_dict())


def test_qa_training_mode_is_refused_and_model_untouched():
    model = nn.Sequential(QARepVGGBlock(4, 4), RepVGGBlock(4, 4), QARepVGGBlock(4, 4))
    model.eval()
    model[2].post_norm.train()  # only the post BN trains: still refused
    with pytest.raises(RuntimeError, match='eval'):
        reparameterize(model)
    assert not any(b.deploy for b in model)
    model.eval()
    reparameterize(model)
    assert all(b.deploy for b in model)


def test_qa_block_refuses_se():
    with pytest.raises(ValueError, match='QARepVGGBlock does not support use_se'):
        QARepVGGBlock(8, 8, use_se=True)


def test_qa_block_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    a = QARepVGGBlock(8, 8)
    b = QARepVGGBlock(8, 8, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    torch.testing.assert_close(a.branch_1x1.weight.grad, b.branch_1x1.weight.grad)
    torch.testing.assert_close(a.post_norm.weight.grad, b.post_norm.weight.grad)


@pytest.mark.parametrize('where,value', [
    ('stage.1.branch_1x1.norm.running_var', -1.0),
    ('stage.1.branch_norm.running_mean', float('nan')),
    ('stage.1.branch_3x3.conv.weight', float('inf')),
    ('stage.1.se.up.weight', float('nan')),
])
def test_broken_block_is_refused_naming_the_layer_and_nothing_is_folded(where, value):
    model = nn.Module()
    model.stage = nn.Sequential(RepVGGBlock(4, 4), RepVGGBlock(4, 4, use_se=True))
    randomize_bn_(model).eval()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        tensors[where].view(-1)[0] = value
    before = copy.deepcopy(model.state_dict())
    layer = where.rsplit('.', 1)[0]
    with pytest.raises(FoldError, match=f'Cannot fold: {layer}: '):
        reparameterize(model)
    assert not model.stage[0].deploy and not model.stage[1].deploy  # checked before folding
    assert model.state_dict().keys() == before.keys()


def test_broken_qa_block_is_refused_naming_the_layer():
    model = nn.Sequential(randomize_bn_(QARepVGGBlock(4, 4)).eval())
    with torch.no_grad():
        model[0].branch_1x1.weight.view(-1)[0] = float('nan')
    with pytest.raises(FoldError, match='Cannot fold: 0.branch_1x1: '):
        reparameterize(model)
    assert not model[0].deploy


# ------------------------------------------- the duck-typed entry points (issue 23 item 10)

def test_switch_to_deploy_gives_the_eval_mode_model_in_any_mode():
    torch.manual_seed(0)
    model = randomize_bn_(nn.Sequential(RepVGGBlock(4, 4), QARepVGGBlock(4, 4)))
    x = torch.randn(2, 4, 9, 9)
    expected = copy.deepcopy(model).eval()(x)  # what eval mode computes
    assert model.training
    for block in model:  # as mmyolo's switch_to_deploy walks the modules
        block.switch_to_deploy()
    assert all(b.deploy for b in model)
    assert rel_err(model.eval()(x), expected) <= 1e-5
    with pytest.raises(RuntimeError, match='eval'):  # the checked entry point still refuses
        reparameterize(randomize_bn_(RepVGGBlock(4, 4)))


def test_mmyolo_style_switch_to_deploy_hook_in_runner_test(tmp_path):
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from mmrepvgg.models import RepVGG

    class SwitchToDeployHook(Hook):  # mmyolo's hook, duck-typed
        def before_test_epoch(self, runner) -> None:
            for module in runner.model.modules():
                if hasattr(module, 'switch_to_deploy'):
                    module.switch_to_deploy()

    class Model(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = RepVGG(dict(num_blocks=(1, 1, 1, 1),
                                        width_factors=(0.25, 0.25, 0.25, 0.5)))

        def forward(self, inputs, labels=None, mode='tensor'):
            return [dict(out=o) for o in self.backbone(inputs)[-1]]

    class Keep(BaseMetric):
        def process(self, data_batch, data_samples) -> None:
            self.results.extend(d['out'] for d in data_samples)

        def compute_metrics(self, results) -> dict:
            self.outs = torch.stack(results)
            return dict(n=len(results))

    model = Model()
    randomize_bn_(model)
    x = [torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = torch.stack([o['out'] for o in copy.deepcopy(model).eval()(torch.stack(x))])
    metric = Keep()
    runner = Runner(model=model, work_dir=str(tmp_path),
                    test_dataloader=dict(dataset=[dict(inputs=t) for t in x], batch_size=2,
                                         sampler=dict(type='DefaultSampler', shuffle=False),
                                         collate_fn=dict(type='default_collate')),
                    test_cfg=dict(), test_evaluator=metric,
                    custom_hooks=[SwitchToDeployHook()])
    runner.test()
    assert model.backbone.deploy
    assert rel_err(metric.outs, expected) <= 1e-5


# --------------------------------------------------- one declaration per block type

def test_a_block_type_is_one_class_and_must_declare_its_code():
    from mmrepvgg.models import BLOCK_TYPES, RepBlockBase, RepVGG
    from mmrepvgg.registry import MODELS
    with pytest.raises(TypeError, match='declare its geometry code'):
        class Forgetful(RepBlockBase):  # noqa: F841
            def _fuse(self):
                return None
    with pytest.raises(TypeError, match='not used by another block type.*RepVGGBlock'):
        class Clash(RepVGGBlock, code=1):  # noqa: F841
            pass

    class PlainRepVGGBlock(RepVGGBlock, code=9):  # a new type: one class, nothing else
        pass

    try:
        assert BLOCK_TYPES['PlainRepVGGBlock'] is PlainRepVGGBlock
        assert MODELS.get('PlainRepVGGBlock') is PlainRepVGGBlock
        model = RepVGG(dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, 0.25, 0.25, 0.5)),
                       block_cfg=dict(type='PlainRepVGGBlock'))
        state = randomize_bn_(model).eval().state_dict()
        assert state['stem.rep_geometry'].tolist() == [9, 2, 1, 1]
        plain = RepVGG(dict(num_blocks=(1, 1, 1, 1), width_factors=(0.25, 0.25, 0.25, 0.5)),
                       deploy=True).eval()
        plain.load_state_dict(state)  # folded on the way in
        x = torch.randn(1, 3, 32, 32)
        assert rel_err(plain(x)[-1], model(x)[-1]) <= 1e-5
    finally:
        del BLOCK_TYPES['PlainRepVGGBlock']
        MODELS.module_dict.pop('PlainRepVGGBlock')
