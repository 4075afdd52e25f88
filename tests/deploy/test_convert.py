"""deploy_convert / convert_weights: every source layout round-trips; bad inputs fail clearly.

Each source model is built with the original implementation (mmpretrain's RepVGG, timm's
ByobNet; the official layout by renaming a reference model's keys with a hand-written table
independent of :mod:`mmrepvgg.deploy.keymaps`), given random weights and BN statistics,
saved, converted and folded; the deployed model must reproduce the original's outputs.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmrepvgg  # noqa: F401
from mmrepvgg.checkpoint import load_checkpoint_file
from mmrepvgg.deploy import build_model, convert_keys, detect_block_type, detect_source
from mmrepvgg.models import RepVGG
from mmrepvgg.utils.errors import CheckpointError
from tests.deploy.helpers import convert_backbone_weights, convert_checkpoint
from tests.helpers import load_tool, one_error_line, randomize_bn_, rel_err

ROOT = Path(__file__).resolve().parents[2]


deploy_convert = load_tool('deploy_convert')
convert_weights = load_tool('convert_weights')

NUM_BLOCKS = (2, 2, 2, 2)
WIDTHS = (0.25, 0.25, 0.25, 0.5)  # stem 16, stages 16/32/64/256
NUM_CLASSES = 10
SIZE = (40, 48)


def cls_config(groups: int = 1, use_se: bool = False, block: str = 'RepVGGBlock') -> Config:
    arch = dict(num_blocks=NUM_BLOCKS, width_factors=WIDTHS, groups=groups, use_se=use_se)
    return Config(dict(
        default_scope='mmpretrain',
        crop_size=SIZE,
        model=dict(type='ImageClassifier',
                   backbone=dict(type='mmrepvgg.RepVGG', arch=arch, out_indices=(3, ),
                                 norm_cfg=dict(type='SyncBN'), block_cfg=dict(type=block)),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=256))))


def seg_config() -> Config:
    arch = dict(num_blocks=(1, 1, 2, 1), width_factors=WIDTHS)
    norm = dict(type='SyncBN', requires_grad=True)
    return Config(dict(
        default_scope='mmseg',
        crop_size=(32, 48),
        model=dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 48)),
            backbone=dict(type='RepVGG', arch=arch, out_indices=(0, 1, 2, 3),
                          dilation_plan='full', norm_cfg=norm,
                          init_cfg=dict(type='Pretrained', checkpoint='missing.pth')),
            decode_head=dict(type='PSPHead', in_channels=256, in_index=3, channels=16,
                             pool_scales=(1, 2), num_classes=5, norm_cfg=norm),
            auxiliary_head=dict(type='FCNHead', in_channels=64, in_index=2, channels=8,
                                num_convs=1, num_classes=5, norm_cfg=norm),
            test_cfg=dict(mode='whole'))))


def logits(model, x):
    with torch.no_grad():
        return model(x, mode='tensor') if hasattr(model, 'data_preprocessor') else model(x)


# ---------------------------------------------------------------- original implementations

def mmpretrain_model(groups: int, use_se: bool):
    from mmpretrain.registry import MODELS
    arch = dict(num_blocks=list(NUM_BLOCKS), width_factor=list(WIDTHS),
                group_layer_map={i: groups for i in (2, 4, 6, 8)} if groups > 1 else None,
                se_cfg=dict(ratio=16, divisor=1) if use_se else None)
    return MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='RepVGG', arch=arch),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=256)))


def timm_model(groups: int, use_se: bool):
    pytest.importorskip('timm')
    from timm.models.byobnet import ByobNet, ByoModelCfg, _rep_vgg_bcfg
    cfg = ByoModelCfg(blocks=_rep_vgg_bcfg(d=NUM_BLOCKS, wf=WIDTHS, groups=groups if groups > 1
                                           else 0),
                      stem_type='rep', stem_chs=16,
                      **(dict(attn_layer='se', attn_kwargs=dict(rd_ratio=1 / 16, rd_divisor=1))
                         if use_se else {}))
    return ByobNet(cfg, num_classes=NUM_CLASSES)


#: ours -> official, written independently of mmrepvgg.deploy.keymaps (the reference layout
#: of DingXiaoH/RepVGG repvgg.py: stage0..4, rbr_dense/rbr_1x1/rbr_identity, bn, linear;
#: cxxgtxy/QARepVGG's QARepVGGBlockV2 adds a bare rbr_1x1 conv and the block's own bn).
OFFICIAL_NAMES = [('backbone.stem.', 'stage0.'), ('backbone.stage_1.', 'stage1.'),
                  ('backbone.stage_2.', 'stage2.'), ('backbone.stage_3.', 'stage3.'),
                  ('backbone.stage_4.', 'stage4.'), ('branch_3x3.', 'rbr_dense.'),
                  ('branch_1x1.', 'rbr_1x1.'), ('branch_norm.', 'rbr_identity.'),
                  ('post_norm.', 'bn.'), ('.norm.', '.bn.'), ('head.fc.', 'linear.')]


def official_state(model) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in OFFICIAL_NAMES:
            key = key.replace(ours, theirs)
        state[key] = value
    assert all(re.match(r'^(stage[0-4]\.|linear\.)', k) for k in state)
    return state


def source_model(source: str, groups: int, use_se: bool, block: str = 'RepVGGBlock'):
    torch.manual_seed(0)
    if source == 'mmpretrain':
        model = mmpretrain_model(groups, use_se)
    elif source == 'timm':
        model = timm_model(groups, use_se)
    else:  # official / mmrepvgg: our training-time model is the reference
        model = build_model(cls_config(groups, use_se, block))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.2)
    return randomize_bn_(model, seed=3).eval()


def saved_state(source: str, model) -> dict:
    if source == 'official':
        return official_state(model)  # a flat dict, as the released *-train.pth
    if source == 'timm':
        return model.state_dict()
    return {'state_dict': model.state_dict(), 'meta': {'epoch': 1}}


CASES = [(source, groups, use_se) for source in ('mmrepvgg', 'official', 'mmpretrain', 'timm')
         for groups, use_se in ((1, False), (2, True))]


@pytest.mark.parametrize('source,groups,use_se', CASES)
def test_each_source_round_trips(tmp_path, source, groups, use_se):
    original = source_model(source, groups, use_se)
    ckpt = tmp_path / 'train.pth'
    torch.save(saved_state(source, original), ckpt)
    out = tmp_path / 'deploy.pth'
    cfg = cls_config(groups, use_se)
    report = convert_checkpoint(cfg, ckpt, out, source=source, verify=True)
    assert report.folded == 9 and report.max_rel <= 1e-5
    loaded = torch.load(ckpt, weights_only=True)
    assert detect_source(loaded.get('state_dict', loaded)) == (
        'mmpretrain' if source == 'mmpretrain' and use_se else
        'mmrepvgg' if source == 'mmpretrain' else source)  # same keys without SE

    saved = torch.load(out, weights_only=True)  # plain types only
    assert saved['meta']['deploy'] is True and saved['meta']['source'] == source
    deployed = build_model(cfg, deploy=True)
    deployed.load_state_dict(saved['state_dict'], strict=True)
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        expected = original(x) if source == 'timm' else original(x, mode='tensor')
    assert rel_err(logits(deployed, x), expected) <= 1e-5


@pytest.mark.parametrize('source', ['mmrepvgg', 'official'])
@pytest.mark.parametrize('groups', [1, 2])
def test_qa_checkpoints_round_trip(tmp_path, source, groups):
    """Ours and QARepVGG's official layout (bare rbr_1x1, block-level bn) fold exactly."""
    block = 'QARepVGGBlock'
    original = source_model(source, groups, False, block)
    state = saved_state(source, original)
    flat = state.get('state_dict', state)
    assert detect_source(flat) == source
    if source == 'official':
        assert 'stage1.0.bn.weight' in flat and 'stage1.0.rbr_1x1.weight' in flat
    assert detect_block_type(convert_keys(flat, source)) == block
    torch.save(state, tmp_path / 'train.pth')
    cfg = cls_config(groups, block=block)
    report = convert_checkpoint(cfg, tmp_path / 'train.pth', tmp_path / 'deploy.pth',
                                verify=True)
    assert report.folded == 9 and report.max_rel <= 1e-5
    saved = torch.load(tmp_path / 'deploy.pth', weights_only=True)
    assert saved['meta']['block'] == block
    # the deployed QARepVGG is the plain RepVGG: it loads into either config
    for plain_block in ('RepVGGBlock', block):
        deployed = build_model(cls_config(groups, block=plain_block), deploy=True)
        deployed.load_state_dict(saved['state_dict'], strict=True)
    assert detect_block_type(saved['state_dict']) is None
    x = torch.randn(2, 3, *SIZE)
    assert rel_err(logits(deployed, x), logits(original, x)) <= 1e-5


@pytest.mark.parametrize('saved_block,config_block', [('QARepVGGBlock', 'RepVGGBlock'),
                                                      ('RepVGGBlock', 'QARepVGGBlock')])
def test_the_other_block_type_is_refused_by_name(tmp_path, saved_block, config_block):
    for source in ('mmrepvgg', 'official'):
        state = saved_state(source, source_model(source, 1, False, saved_block))
        torch.save(state, tmp_path / 'train.pth')
        with pytest.raises(CheckpointError, match=f'holds {saved_block} weights but the model '
                           f'is built with {config_block}'):
            convert_checkpoint(cls_config(block=config_block), tmp_path / 'train.pth',
                               tmp_path / 'out.pth')
        assert not (tmp_path / 'out.pth').exists()


def test_mixed_block_keys_are_refused():
    state = {'backbone.stem.post_norm.weight': torch.ones(1),
             'backbone.stem.branch_norm.weight': torch.ones(1)}
    with pytest.raises(CheckpointError, match='mixes'):
        detect_block_type(state)


def test_segmentor_config_through_the_tool(tmp_path):
    cfg = seg_config()
    cfg_file = tmp_path / 'seg_cfg.py'
    cfg.dump(str(cfg_file))
    model = randomize_bn_(build_model(cfg), seed=5)
    ckpt = tmp_path / 'iter_10.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 10}}, ckpt)
    out = tmp_path / 'deploy' / 'seg_deploy.pth'
    assert deploy_convert.main([str(cfg_file), str(ckpt), str(out), '--verify']) == 0
    deployed = build_model(Config.fromfile(cfg_file), deploy=True)
    deployed.load_state_dict(torch.load(out, weights_only=True)['state_dict'], strict=True)
    x = torch.randn(1, 3, 32, 48)
    assert rel_err(logits(deployed, x), logits(model, x)) <= 1e-5
    # existing output: refused without --force, replaced with it
    assert deploy_convert.main([str(cfg_file), str(ckpt), str(out)]) == 1
    assert deploy_convert.main([str(cfg_file), str(ckpt), str(out), '--force']) == 0


# ---------------------------------------------------------------- convert_weights

@pytest.mark.parametrize('source', ['timm', 'official'])
def test_convert_weights_feeds_init_cfg(tmp_path, source):
    original = source_model(source, 1, False)
    ckpt = tmp_path / 'in1k.pth'
    torch.save(saved_state(source, original), ckpt)
    out = tmp_path / 'backbone.pth'
    arch = dict(num_blocks=NUM_BLOCKS, width_factors=WIDTHS)
    meta = convert_backbone_weights(ckpt, out, source=source, arch=arch)
    assert meta['dropped_keys'] == ['head.fc.bias', 'head.fc.weight']
    backbone = RepVGG(arch, out_indices=(3, ),
                      init_cfg=dict(type='Pretrained', checkpoint=str(out), prefix='backbone.'))
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        feats = original.forward_features(x) if source == 'timm' else \
            original.backbone(x)[0]
    assert rel_err(backbone(x)[0], feats) <= 1e-6


def test_convert_weights_infers_arch_and_block_of_qarepvgg_weights(tmp_path):
    """QARepVGG's official ImageNet layout -> a QARepVGGBlock backbone, arch inferred."""
    torch.manual_seed(0)
    original = randomize_bn_(RepVGG('A0', block_cfg=dict(type='QARepVGGBlock'))).eval()
    state = official_state(torch.nn.ModuleDict(dict(backbone=original)))
    state.update({'linear.weight': torch.zeros(1000, 1280), 'linear.bias': torch.zeros(1000)})
    torch.save(state, tmp_path / 'qa.pth')
    meta = convert_backbone_weights(tmp_path / 'qa.pth', tmp_path / 'out.pth')
    assert (meta['arch'], meta['block'], meta['source']) == ('A0', 'QARepVGGBlock', 'official')
    backbone = RepVGG('A0', block_cfg=dict(type='QARepVGGBlock'),
                      init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'out.pth'),
                                    prefix='backbone.'))
    backbone.init_weights()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(backbone.eval()(x)[0], original(x)[0]) == 0


def test_convert_weights_infers_a_zoo_arch(tmp_path):
    from mmpretrain.registry import MODELS
    original = MODELS.build(dict(type='ImageClassifier', backbone=dict(type='RepVGG', arch='A0'),
                                 neck=dict(type='GlobalAveragePooling'),
                                 head=dict(type='LinearClsHead', num_classes=1000,
                                           in_channels=1280)))
    ckpt = tmp_path / 'a0.pth'
    torch.save({'state_dict': original.state_dict()}, ckpt)
    out = tmp_path / 'out.pth'
    assert convert_weights.main([str(ckpt), str(out), '--source', 'mmpretrain']) == 0
    assert load_checkpoint_file(out)['meta']['arch'] == 'A0'
    assert convert_weights.main([str(ckpt), str(out)]) == 1  # exists


# ---------------------------------------------------------------- bad inputs

@pytest.fixture
def trained(tmp_path) -> tuple[Config, Path, dict]:
    cfg = cls_config()
    state = randomize_bn_(build_model(cfg)).state_dict()
    return cfg, tmp_path, state


def test_missing_and_unexpected_keys_are_all_reported(trained):
    cfg, tmp, state = trained
    state = dict(state)
    del state['backbone.stage_2.1.branch_norm.running_var']
    del state['head.fc.bias']
    state['backbone.extra.weight'] = torch.zeros(1)
    torch.save(state, tmp / 'bad.pth')
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(cfg, tmp / 'bad.pth', tmp / 'out.pth', source='mmrepvgg')
    msg = str(info.value)
    assert 'missing (2)' in msg and 'branch_norm.running_var' in msg and 'head.fc.bias' in msg
    assert 'unexpected (1)' in msg and 'backbone.extra.weight' in msg
    assert not (tmp / 'out.pth').exists()


def test_wrong_arch_is_a_shape_mismatch(trained):
    _, tmp, state = trained
    torch.save(state, tmp / 'tiny.pth')
    cfg = cls_config()
    cfg.model.backbone.arch = dict(num_blocks=NUM_BLOCKS, width_factors=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        convert_checkpoint(cfg, tmp / 'tiny.pth', tmp / 'out.pth', source='mmrepvgg')


def test_truncated_checkpoint(trained):
    cfg, tmp, state = trained
    torch.save(state, tmp / 'a.pth')
    data = (tmp / 'a.pth').read_bytes()
    (tmp / 'a.pth').write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        convert_checkpoint(cfg, tmp / 'a.pth', tmp / 'out.pth')


def test_deployed_checkpoint_is_refused_as_input(trained):
    cfg, tmp, state = trained
    torch.save(state, tmp / 'train.pth')
    convert_checkpoint(cfg, tmp / 'train.pth', tmp / 'deploy.pth', verify=False)
    with pytest.raises(CheckpointError, match='already deployed'):
        convert_checkpoint(cfg, tmp / 'deploy.pth', tmp / 'again.pth')


class _RunsCode:

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def test_code_running_pickle_is_refused_by_the_tools(trained, capsys):
    cfg, tmp, state = trained
    marker = tmp / 'MARKER'
    torch.save({'state_dict': state, 'meta': _RunsCode(marker)}, tmp / 'evil.pth')
    cfg_file = tmp / 'cfg.py'
    cfg.dump(str(cfg_file))
    assert deploy_convert.main([str(cfg_file), str(tmp / 'evil.pth'), str(tmp / 'o.pth')]) == 1
    assert convert_weights.main([str(tmp / 'evil.pth'), str(tmp / 'o2.pth')]) == 1
    assert not marker.exists()
    assert not (tmp / 'o.pth').exists()


# ---------------------------------------------------------------- no wrong numbers

def test_nan_is_never_a_match():
    from mmrepvgg.deploy import compare_outputs
    with pytest.raises(RuntimeError, match='1 of 2 output values after folding') as info:
        compare_outputs([torch.tensor([1., 2.])], [torch.tensor([1., float('nan')])])
    from mmrepvgg.utils.errors import VerificationError
    assert isinstance(info.value, VerificationError)
    with pytest.raises(VerificationError, match='before folding'):
        compare_outputs([torch.tensor([float('inf'), 2.])], [torch.tensor([1., 2.])])
    assert compare_outputs([torch.tensor([1., 2.])], [torch.tensor([1., 2.5])]) == (0.5, 0.25)


def _one_line_error(capsys) -> str:
    """:func:`one_error_line`, and that one line is no traceback or mmengine error log."""
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert 'Traceback' not in err and 'mmengine - ERROR' not in err
    return line


@pytest.mark.parametrize('verify', [True, False])
def test_broken_bn_statistics_are_refused_naming_the_layer(trained, capsys, verify):
    cfg, tmp, state = trained
    key = 'backbone.stage_2.1.branch_norm.running_var'
    state = dict(state, **{key: state[key].clone()})
    state[key][3] = -1.0
    torch.save(state, tmp / 'bad.pth')
    cfg_file = tmp / 'cfg.py'
    cfg.dump(str(cfg_file))
    args = [str(cfg_file), str(tmp / 'bad.pth'), str(tmp / 'out.pth')]
    assert deploy_convert.main(args + (['--verify'] if verify else [])) == 1
    line = _one_line_error(capsys)
    assert 'backbone.stage_2.1.branch_norm: running_var + eps <= 0 in 1 of 32' in line
    assert not (tmp / 'out.pth').exists()


def test_non_finite_head_weights_are_never_written(trained):
    cfg, tmp, state = trained
    nan_fc = torch.full_like(state['head.fc.weight'], float('nan'))
    state = dict(state, **{'head.fc.weight': nan_fc})
    torch.save(state, tmp / 'nan_head.pth')
    for verify in (True, False):  # without --verify too: the written tensors are checked
        with pytest.raises(RuntimeError, match='NaN or Inf'):  # VerificationError
            convert_checkpoint(cfg, tmp / 'nan_head.pth', tmp / 'out.pth', verify=verify)
    assert not (tmp / 'out.pth').exists()


def test_output_equal_to_input_is_refused_even_with_force(trained, capsys):
    cfg, tmp, state = trained
    torch.save(state, tmp / 'train.pth')
    before = (tmp / 'train.pth').read_bytes()
    cfg_file = tmp / 'cfg.py'
    cfg.dump(str(cfg_file))
    (tmp / 'alias.pth').symlink_to(tmp / 'train.pth')
    for out in ('train.pth', 'alias.pth'):
        assert deploy_convert.main([str(cfg_file), str(tmp / 'train.pth'), str(tmp / out),
                                    '--force']) == 1
        assert 'is the input' in _one_line_error(capsys)
        assert convert_weights.main([str(tmp / 'train.pth'), str(tmp / out), '--force']) == 1
        assert 'is the input' in _one_line_error(capsys)
    assert deploy_convert.main([str(cfg_file), str(tmp / 'train.pth'), str(cfg_file),
                                '--force']) == 1  # nor the config
    assert 'is the input' in _one_line_error(capsys)
    assert (tmp / 'train.pth').read_bytes() == before


def test_bad_inputs_are_one_line_errors(trained, capsys, monkeypatch):
    cfg, tmp, state = trained
    torch.save(state, tmp / 'train.pth')
    cfg_file = tmp / 'cfg.py'
    cfg.dump(str(cfg_file))
    (tmp / 'notes.pth').write_text('epoch 3: loss 0.1\n')
    (tmp / 'a_file').write_text('x')
    plain_cfg = tmp / 'plain.py'
    Config(dict(default_scope='mmpretrain', model=dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=2, in_channels=512)))).dump(str(plain_cfg))
    ckpt, out = str(tmp / 'train.pth'), str(tmp / 'out.pth')
    cases = [
        ([str(cfg_file), str(tmp / 'notes.pth'), out], 'not a checkpoint'),
        ([str(plain_cfg), ckpt, out], 'has no RepVGG blocks'),
        ([str(cfg_file), ckpt, out, '--cfg-options', 'model.backbone.arch=C9'],
         'Unknown RepVGG arch'),
        ([str(cfg_file), ckpt, out, '--cfg-options', 'model.backbone.dilation_plan=half'],
         'Unknown dilation plan'),
        ([str(tmp / 'missing.py'), ckpt, out], 'missing.py'),
    ]
    for args, match in cases:
        assert deploy_convert.main(args) == 1, args
        assert match in _one_line_error(capsys)
    # an output that cannot be written fails before any work is done
    monkeypatch.setattr(deploy_convert, 'load_model',
                        lambda *a, **k: pytest.fail('the conversion ran'))
    for bad_out, match in ((str(tmp), 'is a directory'), (str(tmp / 'a_file' / 'o.pth'),
                                                           'is a file, not a directory')):
        assert deploy_convert.main([str(cfg_file), ckpt, bad_out]) == 1
        assert match in _one_line_error(capsys)
    assert not (tmp / 'out.pth').exists()


def test_verify_uses_the_test_crop_of_imagenet_configs():
    from mmrepvgg.deploy import input_shape_from_config
    cfg = Config.fromfile(str(ROOT / 'configs' / 'repvgg-a0_in1k.py'))
    assert input_shape_from_config(cfg) == (224, 224)  # CenterCrop 224 after ResizeEdge 256
    seg = Config.fromfile(str(ROOT / 'configs' / 'pspnet_repvgg-b2_cityscapes.py'))
    assert input_shape_from_config(seg) == (713, 713)
