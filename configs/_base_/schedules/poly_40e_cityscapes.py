# RepVGG paper Sect. 4.3: poly learning rate (base 0.01, power 0.9), weight decay 1e-4,
# global batch 16 on 8 GPUs, 40 epochs over Cityscapes train, fp32 (no AMP).
#
# Iteration-based like mmseg's own schedules (InfiniteSampler, PolyLR per iteration):
# 40 epochs x 2975 images / 16 per iteration = 7437.5, rounded up to 7440 iterations
# (= 40.01 epochs). With fewer GPUs keep the global batch at 16 (e.g. 4 GPUs x 4 images)
# or scale the learning rate: --auto-scale-lr in tools/train.py (base batch 16).
epochs = 40
num_train_images = 2975
global_batch = 16
max_iters = 7440  # ceil(epochs * num_train_images / global_batch / 10) * 10
val_interval = 744  # every 4 epochs
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    # lr = 0.01 * (1 - iter / max_iters) ** 0.9, the poly policy of PSPNet (down to 0)
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=global_batch)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=val_interval,
                    max_keep_ckpts=3, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
