# `make demo-cls`: the ImageNet recipe of configs/repvgg-a0_in1k.py (SGD 0.9, cosine,
# no weight decay on BN and biases) on real data that scikit-learn ships: its 1797
# handwritten 8x8 digits, upscaled to 32x32 and written as an image folder by
# demo.datasets.make_digits_folder (1347 train / 450 test). A small RepVGG
# (RepVGG-A's layout with 1-2-4-1 layers and A0's widths), from scratch, a few CPU minutes.
_base_ = '../repvgg-a0_in1k.py'

data_root = 'work_dirs/demo_cls/digits'
max_epochs = 8
model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True, num_blocks=(1, 2, 4, 1), width_factors=(0.75, 0.75, 0.75, 1.0))),
    head=dict(num_classes=10, in_channels=512, topk=(1, )))
data_preprocessor = dict(
    _delete_=True, num_classes=10, mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0],
    to_rgb=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=2),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    _delete_=True, batch_size=32, num_workers=0,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    _delete_=True, batch_size=64, num_workers=0,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='test',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(T_max=max_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
