# Runtime of the mmseg configs (as mmseg's default_runtime).
default_scope = 'mmseg'
custom_imports = dict(imports=['mmrepvgg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/train.py switches to gloo on CPUs
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
# After training, write the folded model as iter_N/epoch_N_deploy.pth, verified against
# the trained one. Testing folds only with tools/test.py --deploy (which sets fold_on_test).
custom_hooks = [dict(type='RepVGGDeployHook', fold_on_test=False)]
