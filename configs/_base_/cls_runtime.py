# Runtime of the mmpretrain configs (as mmpretrain's default_runtime).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmrepvgg'], allow_failed_imports=False)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/train.py switches to gloo on CPUs
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
# After training, write the folded model as iter_N/epoch_N_deploy.pth, verified against
# the trained one. Testing folds only with tools/test.py --deploy (which sets fold_on_test).
custom_hooks = [dict(type='RepVGGDeployHook', fold_on_test=False)]
