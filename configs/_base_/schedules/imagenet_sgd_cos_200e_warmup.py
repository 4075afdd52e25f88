# RepVGG paper Sect. 4.1, heavyweight setting: 5-epoch warmup, then cosine annealing to
# epoch 200; otherwise as the 120-epoch schedule (SGD 0.9, lr 0.1, batch 256, wd 1e-4 on
# conv/fc kernels only). The warmup's start factor is not in the paper (0.01 here).
_base_ = './imagenet_sgd_cos_120e.py'
max_epochs = 200
warmup_epochs = 5
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
