"""Either form of a state loads into either form of the model, through every loader; the
geometry a state records is checked (mmrepvgg.models.loading)."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import load_state_dict as mmengine_load_state_dict
from torch import nn

from mmrepvgg.models import QARepVGGBlock, RepVGG, RepVGGBlock, prepare_state_dict
from mmrepvgg.utils.errors import CheckpointError, FoldError
from tests.helpers import randomize_bn_, rel_err

ARCH = dict(num_blocks=(1, 2, 2, 1), width_factors=(0.25, 0.25, 0.25, 0.5))
X = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


class Logs(logging.Handler):
    """The messages mmengine's current logger emits meanwhile."""

    def __enter__(self) -> list[str]:
        self.lines: list[str] = []
        MMLogger.get_current_instance().addHandler(self)
        return self.lines

    def __exit__(self, *exc) -> None:
        MMLogger.get_current_instance().removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def trained(plan=None, block='RepVGGBlock', seed=0) -> RepVGG:
    torch.manual_seed(seed)
    model = RepVGG(ARCH, out_indices=(2, 3), dilation_plan=plan, block_cfg=dict(type=block))
    return randomize_bn_(model, seed=seed).eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([o.flatten() for o in model.eval()(X)])


def deployed_state(model: RepVGG) -> dict:
    plain = copy.deepcopy(model).eval()
    plain.switch_to_deploy()
    return plain.state_dict()


LOADERS = {
    'torch strict': lambda m, s: m.load_state_dict(s, strict=True),
    'torch non-strict': lambda m, s: m.load_state_dict(s, strict=False),
    'mmengine strict': lambda m, s: mmengine_load_state_dict(m, s, strict=True),
}


@pytest.mark.parametrize('loader', LOADERS)
@pytest.mark.parametrize('block', ['RepVGGBlock', 'QARepVGGBlock'])
def test_a_deployed_state_switches_a_training_time_model(loader, block):
    source = trained(block=block)
    expected = outputs(source)
    model = RepVGG(ARCH, out_indices=(2, 3), block_cfg=dict(type=block))
    with Logs() as logs:
        result = LOADERS[loader](model, deployed_state(source))
    if result is not None:
        assert not result.missing_keys and not result.unexpected_keys
    assert model.deploy and model.deployed_by_load
    assert rel_err(outputs(model), expected) <= 1e-5
    line = [x for x in logs if 'RepVGG-custom' in x]
    assert line == ['RepVGG-custom: loaded a deployed (folded) state into a training-time '
                    'model: 7 blocks switched to the deployed form']
    with pytest.raises(CheckpointError, match='no branches left to train'):
        model.train()


@pytest.mark.parametrize('loader', LOADERS)
@pytest.mark.parametrize('source_block', ['RepVGGBlock', 'QARepVGGBlock'])
def test_a_training_time_state_is_folded_into_a_deployed_model(loader, source_block):
    source = trained(block=source_block)
    expected = outputs(source)
    model = RepVGG(ARCH, out_indices=(2, 3), deploy=True)  # RepVGGBlock: QA folds into it too
    with Logs() as logs:
        result = LOADERS[loader](model, source.state_dict())
    if result is not None:
        assert not result.missing_keys and not result.unexpected_keys
    assert rel_err(outputs(model), expected) <= 1e-5
    assert any('7 blocks folded on the way in' in x for x in logs)
    model.train()  # a deployed model by construction may be trained (it was built plain)


def test_the_same_form_loads_silently_and_the_state_is_not_changed():
    source = trained()
    state = source.state_dict()
    keys = list(state)
    model = RepVGG(ARCH, out_indices=(2, 3))
    with Logs() as logs:
        model.load_state_dict(state, strict=True)
    assert not [x for x in logs if 'RepVGG' in x]
    assert list(state) == keys  # the caller's dict is untouched
    assert rel_err(outputs(model), outputs(source)) <= 1e-6


def test_a_state_that_cannot_be_folded_is_refused_naming_the_layer():
    state = trained().state_dict()
    state['stage_2.1.branch_norm.running_var'][0] = -5.0
    model = RepVGG(ARCH, out_indices=(2, 3), deploy=True).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(FoldError, match=r'stage_2\.1 cannot be folded on loading: '
                                        r'running_var \+ eps <= 0'):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():  # checked before anything changed
        torch.testing.assert_close(value, before[key])
    state['stage_2.1.branch_norm.running_var'][0] = float('nan')
    with pytest.raises(FoldError, match='non-finite'):
        model.load_state_dict(state)


def test_partial_states_are_left_to_the_loader():
    state = deployed_state(trained())
    del state['stage_1.0.branch_reparam.bias']
    model = RepVGG(ARCH, out_indices=(2, 3))
    with pytest.raises(RuntimeError, match=r'Missing key.*stage_1\.0\.branch_3x3'):
        model.load_state_dict(state)


# ---------------------------------------------------------------------------- geometry

def test_every_block_records_its_geometry():
    state = RepVGG(ARCH, dilation_plan='full', block_cfg=dict(type='QARepVGGBlock')).state_dict()
    assert state['stem.rep_geometry'].tolist() == [2, 2, 1, 1]  # QARepVGG, stride 2
    assert state['stage_3.0.rep_geometry'].tolist() == [2, 1, 2, 1]
    assert state['stage_4.0.rep_geometry'].tolist() == [2, 1, 4, 1]


@pytest.mark.parametrize('model_deploy', [False, True])
def test_a_deployed_state_under_another_geometry_is_refused(model_deploy):
    state = deployed_state(trained(plan='full'))
    for mode in (True, False):
        model = RepVGG(ARCH, out_indices=(2, 3), deploy=model_deploy).train(mode)
        with pytest.raises(CheckpointError) as info:
            model.load_state_dict(state)
        message = str(info.value)
        assert '\n' not in message
        assert ('3 layer(s) differ, first stage_3.0: checkpoint stride 1, dilation 2, groups '
                '1, model stride 2, dilation 1, groups 1') in message
        assert ('checkpoint: stem s2, stage_1 s2, stage_2 s2, stage_3 s1 d2, stage_4 s1 d4; '
                'model: stem s2, stage_1 s2, stage_2 s2, stage_3 s2, stage_4 s2') in message
        assert model.deploy == model_deploy  # nothing switched


def test_a_training_time_state_under_another_geometry():
    state = trained(plan=None).state_dict()
    # evaluating (eval mode) or folding it (a deployed model): refused
    for model in (RepVGG(ARCH, dilation_plan='fast').eval(),
                  RepVGG(ARCH, dilation_plan='fast', deploy=True).train()):
        with pytest.raises(CheckpointError, match='evaluated .*under another geometry'):
            model.load_state_dict(state)
    # training-mode model: initialization for training, logged with both geometries
    model = RepVGG(ARCH, dilation_plan='full')
    with Logs() as logs:
        model.load_state_dict(state, strict=True)
    line = [x for x in logs if 'another geometry' in x]
    assert len(line) == 1 and 'checkpoint: stem s2, stage_1 s2, stage_2 s2, stage_3 s2' in \
        line[0] and 'model: stem s2, stage_1 s2, stage_2 s2, stage_3 s1 d2' in line[0]
    with pytest.raises(CheckpointError, match='has not been trained since'):
        model.eval()  # e.g. init_model: evaluating the untrained weights is refused
    model.train()  # trained from here on: evaluating is the user's choice
    model.eval()
    assert model.state_dict()['stage_3.0.rep_geometry'].tolist() == [1, 1, 2, 1]


def test_init_cfg_initialization_from_another_geometry(tmp_path):
    source = trained(plan=None)
    path = tmp_path / 'imagenet.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}},
               path)
    model = RepVGG(ARCH, out_indices=(2, 3), dilation_plan='full',
                   init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with Logs() as logs:
        model.init_weights()
    assert any('initialization for training' in x and 'stage_3 s2' in x and 'stage_3 s1 d2'
               in x for x in logs)
    model.eval()  # (initialization is no evaluation: nothing pending)
    torch.testing.assert_close(model.stage_3[0].branch_3x3.conv.weight,
                               source.stage_3[0].branch_3x3.conv.weight)
    plain = tmp_path / 'deployed.pth'
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in deployed_state(source).items()}}, plain)
    model = RepVGG(ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(plain),
                                       prefix='backbone.'))
    with pytest.raises(CheckpointError, match='initialization for training needs the '
                                              'training-time'):
        model.init_weights()


def test_states_without_geometry_load_as_before():
    state = {k: v for k, v in deployed_state(trained(plan='full')).items()
             if not k.endswith('rep_geometry')}
    model = RepVGG(ARCH, out_indices=(2, 3), deploy=True).eval()  # other plan: not known
    assert not model.load_state_dict(state, strict=True).missing_keys


def test_qa_folded_state_loads_into_plain_repvgg_of_the_same_geometry():
    source = trained(block='QARepVGGBlock')
    model = RepVGG(ARCH, out_indices=(2, 3), deploy=True).eval()
    model.load_state_dict(deployed_state(source), strict=True)  # block type is no geometry
    assert rel_err(outputs(model), outputs(source)) <= 1e-5


def test_a_block_on_its_own_takes_either_form():
    source = randomize_bn_(RepVGGBlock(8, 8, dilation=2, groups=2)).eval()
    x = torch.randn(1, 8, 9, 9)
    expected = source(x)
    plain = copy.deepcopy(source)
    plain.switch_to_deploy()
    block = RepVGGBlock(8, 8, dilation=2, groups=2)
    block.load_state_dict(plain.state_dict(), strict=True)
    assert block.deploy and rel_err(block.eval()(x), expected) <= 1e-5
    with pytest.raises(CheckpointError, match='no branches left'):
        block.train()
    qa = randomize_bn_(QARepVGGBlock(8, 8, dilation=2, groups=2)).eval()
    into = RepVGGBlock(8, 8, dilation=2, groups=2, deploy=True).eval()
    into.load_state_dict(qa.state_dict(), strict=True)
    assert rel_err(into(x), qa(x)) <= 1e-5
    with pytest.raises(CheckpointError, match='geometry'):
        RepVGGBlock(8, 8, dilation=1, groups=2, deploy=True).eval().load_state_dict(
            plain.state_dict())


def test_prepare_state_dict_adapts_before_a_strict_key_check():
    from mmrepvgg.checkpoint import check_state_dict
    source = trained()
    wrapper = nn.Module()
    wrapper.backbone = RepVGG(ARCH, out_indices=(2, 3), deploy=True).eval()
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    adapted = prepare_state_dict(wrapper, state)
    assert not any(k.endswith(('rep_geometry', 'branch_3x3.conv.weight')) for k in adapted)
    check_state_dict(wrapper, adapted)  # geometry keys are never required
    wrapper.load_state_dict(adapted, strict=True)
    assert rel_err(outputs(wrapper.backbone), outputs(source)) <= 1e-5


@pytest.mark.parametrize('dynamo', [False, True])
def test_onnx_export_holds_no_geometry(tmp_path, dynamo):
    onnx = pytest.importorskip('onnx')
    if dynamo:
        pytest.importorskip('onnxscript')
    model = RepVGG(ARCH, out_indices=(3, ), deploy=True).eval()
    path = tmp_path / 'm.onnx'
    torch.onnx.export(model, (X[:1], ), str(path), dynamo=dynamo)
    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.initializer] + [i.name for i in graph.input]
    assert names and not [n for n in names if 'geometry' in n]


def test_loading_the_right_weights_after_the_wrong_ones_clears_the_refusal():
    model = RepVGG(ARCH, dilation_plan='full')
    model.load_state_dict(trained(plan=None).state_dict())  # another geometry: pending
    model.load_state_dict(trained(plan='full').state_dict())  # its own geometry
    model.eval()  # not refused: the weights are the right ones now


# ------------------------------------------------------------- hardening (issue 23)

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('block', ['RepVGGBlock', 'QARepVGGBlock'])
def test_a_low_precision_state_folds_in_float64_into_the_models_dtype(dtype, block):
    from mmrepvgg.models import reparameterize
    source = trained(block=block)
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in source.state_dict().items()}
    reference = RepVGG(ARCH, out_indices=(2, 3), block_cfg=dict(type=block)).eval()
    reference.load_state_dict(state)  # load, then reparameterize: the float32 answer
    reparameterize(reference)
    model = RepVGG(ARCH, out_indices=(2, 3), deploy=True).eval()
    model.load_state_dict(state)  # folded on the way in
    assert model.stage_3[0].branch_reparam.weight.dtype == torch.float32
    assert rel_err(outputs(model), outputs(reference)) <= 1e-4


def test_torch_distributed_checkpoint_maps_and_round_trips_every_key():
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         set_model_state_dict)
    source = trained(plan='full')
    state = get_model_state_dict(source)
    assert state['stage_3.0.rep_geometry'].tolist() == [1, 1, 2, 1]
    model = RepVGG(ARCH, out_indices=(2, 3), dilation_plan='full').eval()
    set_model_state_dict(model, state)
    assert rel_err(outputs(model), outputs(source)) <= 1e-6
    plain = RepVGG(ARCH, out_indices=(2, 3), dilation_plan='full', deploy=True).eval()
    set_model_state_dict(plain, get_model_state_dict(source))  # folded on the way in
    assert rel_err(outputs(plain), outputs(source)) <= 1e-5
    with pytest.raises(CheckpointError, match='geometry'):  # the geometry is still checked
        set_model_state_dict(RepVGG(ARCH, out_indices=(2, 3)).eval(), state)


@pytest.mark.parametrize('value', [torch.tensor([1, 2, 1, 1], dtype=torch.complex64),
                                   torch.tensor([True, True, True, True])])
def test_a_geometry_of_another_dtype_is_refused_in_one_line(value):
    state = trained().state_dict()
    state['stem.rep_geometry'] = value
    with pytest.raises(CheckpointError, match='stem.rep_geometry is not a RepVGG block '
                                              'geometry') as info:
        RepVGG(ARCH, out_indices=(2, 3)).load_state_dict(state)
    assert '\n' not in str(info.value)


def test_a_partial_load_keeps_the_refusal_of_weights_of_another_geometry():
    model = RepVGG(ARCH, dilation_plan='full')
    model.load_state_dict(trained(plan=None).state_dict())  # stages 3-4 of another geometry
    own = trained(plan='full').state_dict()
    model.load_state_dict({k: v for k, v in own.items() if k.startswith('stem.')},
                          strict=False)  # the stem's own weights: stages 3-4 unchanged
    with pytest.raises(CheckpointError, match='has not been trained since'):
        model.eval()
    model.load_state_dict({k: v for k, v in own.items() if k.startswith('stage_')},
                          strict=False)  # now every block holds weights of its geometry
    model.eval()


def test_a_block_on_its_own_refuses_eval_after_another_geometry_as_its_log_says():
    source = randomize_bn_(RepVGGBlock(8, 8, dilation=1))
    block = RepVGGBlock(8, 8, dilation=2)  # training mode: accepted as initialization
    with Logs() as logs:
        block.load_state_dict(source.state_dict())
    assert any('evaluating them before training is refused' in x for x in logs)
    with pytest.raises(CheckpointError, match='has not been trained since'):
        block.eval()
    block.train()  # trained from here on
    block.eval()


def test_ddp_training_model_given_a_deployed_state_works_in_eval_or_says_why_not(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)
    try:
        source = trained()
        model = DistributedDataParallel(RepVGG(ARCH, out_indices=(2, 3)))
        model.load_state_dict({f'module.{k}': v for k, v in deployed_state(source).items()})
        with torch.no_grad():
            out = torch.cat([o.flatten() for o in model.eval()(X)])
        assert rel_err(out, outputs(source)) <= 1e-5
        model.module.stem.training = True  # (as a model left in training mode)
        with pytest.raises(CheckpointError, match='no branches left to train'):
            model(X)
    finally:
        dist.destroy_process_group()
