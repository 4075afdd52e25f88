# PSPNet with a dilated ResNet-50 (mmseg's ResNetV1c, as mmseg's PSPNet configs): the
# baseline rows of RepVGG paper Table 8, with the same heads and settings as the RepVGG ones.
_base_ = './pspnet_repvgg-b2.py'

# mmseg's ImageNet weights are `open-mmlab://resnet50_v1c` (a download); save them here.
# A missing file stops training with instructions.
pretrained = 'checkpoints/resnet50_v1c.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1c',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg={{_base_.norm_cfg}},
        norm_eval=False,
        style='pytorch',
        contract_dilation=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=1024))
