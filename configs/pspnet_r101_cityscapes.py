# RepVGG paper Table 8, row "ResNet-101" (78.51 mIoU): PSPNet-101, same settings.
_base_ = './pspnet_r50_cityscapes.py'
pretrained = 'checkpoints/resnet101_v1c.pth'  # mmseg's open-mmlab://resnet101_v1c
model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
