"""The backbone builds from mmseg and mmpretrain configs, as users write them."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

import mmrepvgg
from mmrepvgg.models import RepVGG


def _build(cfg_text: str, tmp_path, scope: str):
    path = tmp_path / 'cfg.py'
    path.write_text(textwrap.dedent(cfg_text))
    cfg = Config.fromfile(str(path))  # runs custom_imports
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg.model)


def test_pspnet_from_mmseg_config(tmp_path):
    model = _build('''
        custom_imports = dict(imports=['mmrepvgg'], allow_failed_imports=False)
        norm_cfg = dict(type='BN', requires_grad=True)
        model = dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
            backbone=dict(type='RepVGG', arch='A0', out_indices=(0, 1, 2, 3),
                          dilation_plan='fast', norm_cfg=norm_cfg),
            decode_head=dict(type='PSPHead', in_channels=1280, in_index=3, channels=32,
                             pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=19,
                             norm_cfg=norm_cfg, align_corners=False,
                             loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
            auxiliary_head=dict(type='FCNHead', in_channels=192, in_index=2, channels=16,
                                num_convs=1, num_classes=19, norm_cfg=norm_cfg,
                                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)))
        ''', tmp_path, 'mmseg')
    assert isinstance(model.backbone, RepVGG)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 19, 8, 8)  # output stride 8


def test_classifier_from_mmpretrain_config_keeps_mmpretrains_repvgg(tmp_path):
    model = _build('''
        custom_imports = dict(imports=['mmrepvgg'], allow_failed_imports=False)
        model = dict(
            type='ImageClassifier',
            backbone=dict(type='mmrepvgg.RepVGG', arch='B1g2'),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=2048))
        ''', tmp_path, 'mmpretrain')
    assert isinstance(model.backbone, RepVGG)
    from mmpretrain.registry import MODELS
    assert MODELS.get('RepVGG') is not RepVGG  # mmpretrain's own is not clobbered
    model.eval()
    assert model(torch.rand(2, 3, 32, 32), mode='tensor').shape == (2, 10)


def test_scoped_name_works_from_any_scope():
    from mmengine.registry import MODELS as ROOT
    from mmseg.registry import MODELS as SEG
    init_default_scope('mmseg')
    assert SEG.get('mmrepvgg.RepVGG') is RepVGG
    assert SEG.get('RepVGG') is RepVGG
    assert ROOT.get('mmrepvgg.RepVGGBlock') is mmrepvgg.RepVGGBlock
    assert ROOT.get('mmrepvgg.QARepVGGBlock') is mmrepvgg.QARepVGGBlock
    # block_cfg names resolve in mmrepvgg's registry whatever the default scope
    backbone = SEG.build(dict(type='RepVGG', arch='A0', block_cfg=dict(type='QARepVGGBlock')))
    assert backbone.block_type == 'QARepVGGBlock'


def test_unknown_arch_in_config_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match='Unknown RepVGG arch'):
        _build('''
            custom_imports = dict(imports=['mmrepvgg'], allow_failed_imports=False)
            model = dict(type='ImageClassifier', backbone=dict(type='mmrepvgg.RepVGG', arch='Z'),
                         neck=dict(type='GlobalAveragePooling'),
                         head=dict(type='LinearClsHead', num_classes=2, in_channels=8))
            ''', tmp_path, 'mmpretrain')
