# RepVGG paper Sect. 4.1: SGD momentum 0.9, lr 0.1 with cosine annealing over 120 epochs,
# global batch 256 (8 GPUs x 32), weight decay 1e-4 on the conv and fc kernels only.
# norm_decay_mult=0 covers every BN, the identity branches' BNs (`branch_norm`) included;
# bias_decay_mult=0 the fc bias (the training-time convs have no bias).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
max_epochs = 120
param_scheduler = dict(
    type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, begin=0, end=max_epochs,
    convert_to_iter_based=True)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256)
