# The 200-epoch classifier: label smoothing 0.1 and mixup (alpha 0.2), as Bag of Tricks [13].
_base_ = './repvgg_in1k.py'
model = dict(
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothLoss',
            label_smooth_val=0.1,
            mode='original',
            num_classes=1000,
            loss_weight=1.0)),
    train_cfg=dict(augments=dict(type='Mixup', alpha=0.2)))
