# `make demo`: the real PSPNet RepVGG config (configs/pspnet_repvgg-b2_cityscapes.py) shrunk
# to run in about a minute on a CPU: a small RepVGG (the same blocks, 'full' dilation plan
# and heads; RepVGG-A's layout with 1-2-4-1 layers and A0's widths), from scratch (no
# download), the tiny synthetic Cityscapes of tools/make_tiny_cityscapes.py, 64x128 crops,
# 200 iterations.
_base_ = '../pspnet_repvgg-b2_cityscapes.py'

data_root = 'work_dirs/demo/tiny_cityscapes/'
crop_size = (64, 128)
max_iters = 200
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(
            _delete_=True, num_blocks=(1, 2, 4, 1), width_factors=(0.75, 0.75, 0.75, 1.0)),
        dilation_plan='full',
        init_cfg=None),
    decode_head=dict(in_channels=512, channels=64),  # paper stage 5: 512 channels
    auxiliary_head=dict(in_channels=192, channels=32),  # paper stage 4: 192 channels
    test_cfg=dict(_delete_=True, mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, save_best=None, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
