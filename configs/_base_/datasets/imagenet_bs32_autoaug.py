# ImageNet for the 200-epoch models (RepVGG paper Sect. 4.1): AutoAugment (its ImageNet
# policy, mmpretrain's `policies='imagenet'`), random resized crop and flip.
_base_ = './imagenet_bs32.py'
bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='AutoAugment', policies='imagenet',
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
