# ImageNet classifier with mmrepvgg's RepVGG (mmpretrain's own RepVGG is `RepVGG`; ours is
# `mmrepvgg.RepVGG`). The leaf configs set `arch` and the head's in_channels (paper stage 5).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='mmrepvgg.RepVGG', arch='B1g2', out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=2048,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
