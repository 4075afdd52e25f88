"""Every config loads, builds its model and follows the paper's protocol (Sect. 4.1, 4.3)."""
from __future__ import annotations

import os.path as osp
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mmrepvgg  # noqa: F401
from mmrepvgg.models import RepVGG, get_arch
from mmrepvgg.runner import check_pretrained, prepare_train_config
from mmrepvgg.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
SEG = {  # paper Table 8 rows
    'pspnet_repvgg-b2_cityscapes.py': ('B2', 'full'),
    'pspnet_repvgg-b2-fast_cityscapes.py': ('B2', 'fast'),
    'pspnet_repvgg-b1g2_cityscapes.py': ('B1g2', 'full'),
    'pspnet_repvgg-b1g2-fast_cityscapes.py': ('B1g2', 'fast'),
    'pspnet_qarepvgg-b1g2-fast_cityscapes.py': ('B1g2', 'fast'),  # QARepVGG blocks
    'pspnet_r50_cityscapes.py': (50, None),
    'pspnet_r101_cityscapes.py': (101, None),
}
CLS_120E = ['A0', 'A1', 'B0', 'A2', 'B1g4', 'B1g2', 'B1', 'B2g4', 'B2']  # paper Table 4
CLS_200E = ['B2g4', 'B3g4', 'B3']  # paper Table 5
CLS_QA = ['A0', 'B0', 'B1g2', 'B1g4', 'B2']  # QARepVGG (B1g2: PSPNet's pretraining)
ALL = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob('*.py') if '_base_' not in p.parts)


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / name))


def build_model(cfg: Config) -> nn.Module:
    scope = cfg.default_scope
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg.model)


def test_every_paper_row_has_a_config():
    expected = set(SEG) | {f'repvgg-{a.lower()}_in1k.py' for a in CLS_120E} | {
        f'repvgg-{a.lower()}_200e_in1k.py' for a in CLS_200E}
    assert expected <= set(ALL), expected - set(ALL)


@pytest.mark.parametrize('name', ALL)
def test_config_loads_and_builds(name):
    cfg = load(name)
    assert 'mmrepvgg' in cfg.custom_imports['imports']
    assert cfg.default_scope in ('mmseg', 'mmpretrain')
    model = build_model(cfg)
    if cfg.model.backbone.type.endswith('RepVGG'):
        assert isinstance(model.backbone, RepVGG)
        qa = 'qarepvgg' in name
        assert model.backbone.block_type == ('QARepVGGBlock' if qa else 'RepVGGBlock')
    if name in ('pspnet_repvgg-b2_cityscapes.py', 'repvgg-a0_in1k.py',
                'qarepvgg-a0_in1k.py') or name.startswith('demo/'):
        model.eval()
        size = 64 if cfg.default_scope == 'mmseg' else 32
        with torch.no_grad():
            out = model(torch.rand(1, 3, size, size), mode='tensor')
        n = 19 if cfg.default_scope == 'mmseg' else cfg.model.head.num_classes
        assert out.shape[:2] == (1, n)


@pytest.mark.parametrize('name', sorted(SEG))
def test_pspnet_protocol(name):
    """Sect. 4.3: PSPNet (1, 2, 3, 6), poly 0.01 / 0.9, wd 1e-4, batch 16, 40 epochs, 713."""
    cfg = load(name)
    m = cfg.model
    arch, plan = SEG[name]
    assert m.type == 'EncoderDecoder'
    assert m.decode_head.type == 'PSPHead' and m.decode_head.pool_scales == (1, 2, 3, 6)
    assert m.auxiliary_head.type == 'FCNHead' and m.auxiliary_head.in_index == 2
    assert m.auxiliary_head.loss_decode.loss_weight == 0.4
    if isinstance(arch, str):
        assert m.backbone.arch == arch and m.backbone.dilation_plan == plan
        channels = get_arch(arch).stage_channels
        assert m.decode_head.in_channels == channels[3]
        assert m.auxiliary_head.in_channels == channels[2]  # paper stage 4
        init = m.backbone.init_cfg
        assert init.type == 'Pretrained' and init.prefix == 'backbone.'
        family = 'qarepvgg' if 'qarepvgg' in name else 'repvgg'
        assert init.checkpoint == f'checkpoints/{family}-{arch.lower()}_in1k.pth'
        assert osp.isfile(CONFIGS / f'{family}-{arch.lower()}_in1k.py')  # trains those weights
        block = m.backbone.get('block_cfg', dict(type='RepVGGBlock'))
        assert block['type'] == ('QARepVGGBlock' if family == 'qarepvgg' else 'RepVGGBlock')
    else:
        assert m.backbone.type == 'ResNetV1c' and m.backbone.depth == arch
        assert m.backbone.dilations == (1, 1, 2, 4) and m.backbone.strides == (1, 2, 1, 1)
        assert m.backbone.init_cfg.checkpoint == f'checkpoints/resnet{arch}_v1c.pth'
        assert (m.decode_head.in_channels, m.auxiliary_head.in_channels) == (2048, 1024)
    for norm in (m.backbone.norm_cfg, m.decode_head.norm_cfg, m.auxiliary_head.norm_cfg):
        assert norm.type == 'SyncBN'
    assert m.test_cfg.crop_size == (713, 713) and m.test_cfg.mode == 'slide'
    # batches padded to the crop (issue 22: no size stopped mmseg's stack_batch)
    assert m.data_preprocessor.size == (713, 713)
    crops = [t for t in cfg.train_pipeline if t.type == 'RandomCrop']
    assert crops[0].crop_size == (713, 713)
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    assert cfg.train_dataloader.batch_size * 8 == 16
    opt = cfg.optim_wrapper
    assert opt.type == 'OptimWrapper'  # fp32: no AMP
    assert opt.optimizer.type == 'SGD' and opt.optimizer.lr == 0.01
    assert opt.optimizer.weight_decay == 1e-4 and opt.optimizer.momentum == 0.9
    (sched, ) = cfg.param_scheduler
    assert sched.type == 'PolyLR' and sched.power == 0.9 and sched.eta_min == 0
    iters = cfg.train_cfg.max_iters
    assert sched.end == iters and cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert abs(iters * 16 / 2975 - 40) < 0.05  # 40 epochs of 2975 images at batch 16
    assert cfg.train_dataloader.dataset.data_prefix.img_path == 'leftImg8bit/train'


@pytest.mark.parametrize('arch', CLS_120E)
def test_imagenet_120e_protocol(arch):
    cfg = load(f'repvgg-{arch.lower()}_in1k.py')
    assert cfg.model.backbone.type == 'mmrepvgg.RepVGG' and cfg.model.backbone.arch == arch
    assert cfg.model.head.in_channels == get_arch(arch).stage_channels[3]
    assert cfg.model.head.loss.type == 'CrossEntropyLoss' and 'train_cfg' not in cfg.model
    assert [t.type for t in cfg.train_pipeline] == [
        'LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'PackInputs']
    assert cfg.train_dataloader.batch_size * 8 == 256
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.1, 0.9, 1e-4)
    assert cfg.param_scheduler.type == 'CosineAnnealingLR'
    assert cfg.param_scheduler.T_max == cfg.train_cfg.max_epochs == 120


@pytest.mark.parametrize('arch', CLS_200E)
def test_imagenet_200e_protocol(arch):
    cfg = load(f'repvgg-{arch.lower()}_200e_in1k.py')
    assert cfg.model.backbone.arch == arch
    assert cfg.model.head.loss.type == 'LabelSmoothLoss'
    assert cfg.model.head.loss.label_smooth_val == 0.1
    assert cfg.model.train_cfg.augments.type == 'Mixup'
    assert 'AutoAugment' in [t.type for t in cfg.train_pipeline]
    assert cfg.train_dataloader.dataset.pipeline == cfg.train_pipeline
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.begin, warmup.end) == ('LinearLR', 0, 5)
    assert (cosine.type, cosine.begin, cosine.end) == ('CosineAnnealingLR', 5, 200)
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.optim_wrapper.optimizer.lr == 0.1 and cfg.train_dataloader.batch_size == 32


@pytest.mark.parametrize('arch', CLS_QA)
def test_qarepvgg_imagenet_protocol(arch):
    """RepVGG's 120-epoch recipe (same data, batch, lr, schedule) with QARepVGG's wd 4e-5."""
    cfg, ref = load(f'qarepvgg-{arch.lower()}_in1k.py'), load('repvgg-a0_in1k.py')
    assert cfg.model.backbone.type == 'mmrepvgg.RepVGG' and cfg.model.backbone.arch == arch
    assert cfg.model.backbone.block_cfg == dict(type='QARepVGGBlock')
    assert cfg.model.head.in_channels == get_arch(arch).stage_channels[3]
    for key in ('train_pipeline', 'test_pipeline', 'param_scheduler', 'train_cfg',
                'auto_scale_lr', 'custom_hooks'):
        assert cfg[key] == ref[key], key
    assert cfg.train_dataloader.batch_size == ref.train_dataloader.batch_size == 32
    assert cfg.model.head.loss == ref.model.head.loss
    opt, ref_opt = cfg.optim_wrapper, ref.optim_wrapper
    assert opt.optimizer.weight_decay == 4e-5
    assert {**opt.optimizer, 'weight_decay': 1e-4} == ref_opt.optimizer
    assert opt.paramwise_cfg == ref_opt.paramwise_cfg


def _decay_by_param(name: str) -> tuple[nn.Module, dict]:
    from mmengine.optim import build_optim_wrapper
    cfg = load(name)
    model = build_model(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    return model, {name: decay[id(p)] for name, p in model.named_parameters()}


def test_qarepvgg_weight_decay_on_kernels_and_the_bare_1x1_not_on_bns():
    """QARepVGG's rule: 4e-5 on every conv/fc kernel, the bare 1x1 included; 0 on the
    post BN, the 3x3 branch's BN and the biases."""
    model, decay = _decay_by_param('qarepvgg-a0_in1k.py')
    modules = dict(model.named_modules())
    for name, value in decay.items():
        module = modules[name.rsplit('.', 1)[0]]
        if isinstance(module, _BatchNorm) or name.endswith('bias'):
            assert value == 0, name
        else:
            assert isinstance(module, (nn.Conv2d, nn.Linear)) and value == 4e-5, name
    assert decay['backbone.stage_1.0.branch_1x1.weight'] == 4e-5
    assert decay['backbone.stage_1.0.post_norm.weight'] == 0


def test_weight_decay_only_on_conv_and_fc_kernels():
    """No decay on any BN (the identity branches' included) or bias; 1e-4 on kernels."""
    from mmengine.optim import build_optim_wrapper
    cfg = load('repvgg-b1g2_in1k.py')
    model = build_model(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups
             for p in g['params']}
    names = dict(model.named_modules())
    seen_identity_bn = False
    for name, param in model.named_parameters():
        module = names[name.rsplit('.', 1)[0]]
        if isinstance(module, _BatchNorm) or name.endswith('bias'):
            assert decay[id(param)] == 0, name
            seen_identity_bn |= 'branch_norm' in name
        else:
            assert isinstance(module, (nn.Conv2d, nn.Linear)), name
            assert decay[id(param)] == 1e-4, name
    assert seen_identity_bn


def test_single_process_keeps_syncbn_for_mmengine_to_revert():
    cfg = prepare_train_config(str(CONFIGS / 'pspnet_repvgg-b2_cityscapes.py'))
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'  # mmengine's runner reverts it
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    small = prepare_train_config(str(CONFIGS / 'demo/pspnet_repvgg-small_tiny-cityscapes.py'))
    model = revert_sync_batchnorm(build_model(small))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_cpu_distributed_uses_gloo_and_bn(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = prepare_train_config(str(CONFIGS / 'pspnet_repvgg-b2_cityscapes.py'),
                               launcher='pytorch')
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    for norm in (cfg.model.backbone.norm_cfg, cfg.model.decode_head.norm_cfg,
                 cfg.model.auxiliary_head.norm_cfg):
        assert norm.type == 'BN'


def test_amp_and_resume_options(tmp_path, monkeypatch):
    import mmrepvgg.runner.prepare as prepare
    monkeypatch.setattr(prepare, 'amp_device', lambda: True)  # as on a GPU machine
    cfg = prepare_train_config(str(CONFIGS / 'repvgg-a0_in1k.py'), work_dir=str(tmp_path),
                               amp=True, resume='x.pth')
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.work_dir == str(tmp_path)
    assert cfg.resume and cfg.load_from == 'x.pth'
    monkeypatch.setattr(prepare, 'amp_device', lambda: False)  # the CPU: refused (issue 19)
    with pytest.raises(ConfigError, match='--amp needs a GPU'):
        prepare_train_config(str(CONFIGS / 'repvgg-a0_in1k.py'), work_dir=str(tmp_path),
                             amp=True)


def test_missing_pretrained_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative checkpoints/ paths: never the checkout's files
    cfg = load('pspnet_repvgg-b1g2_cityscapes.py')
    with pytest.raises(FileNotFoundError, match='tools/convert_weights.py') as err:
        check_pretrained(cfg)
    assert 'checkpoints/repvgg-b1g2_in1k.pth' in str(err.value)
    with pytest.raises(FileNotFoundError, match='resnet101_v1c'):
        check_pretrained(load('pspnet_r101_cityscapes.py'))
    cfg.model.backbone.init_cfg = None
    check_pretrained(cfg)  # from scratch: nothing to check


def test_deploy_hook_writes_after_training_and_folds_only_with_deploy(tmp_path):
    from mmrepvgg.runner import prepare_test_config
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'0')
    for name in ('pspnet_repvgg-b2_cityscapes.py', 'repvgg-a0_in1k.py'):
        cfg = load(name)
        (hook, ) = [h for h in cfg.custom_hooks if h.type == 'RepVGGDeployHook']
        assert hook.fold_on_test is False
        cfg = prepare_test_config(str(CONFIGS / name), str(ckpt), deploy=True)
        (hook, ) = [h for h in cfg.custom_hooks if h.type == 'RepVGGDeployHook']
        assert hook.fold_on_test is True
