# RepVGG paper Table 8, row "RepVGG-B1g2" (78.70 mIoU): RepVGG-B1g2, last two stages dilated.
_base_ = './pspnet_repvgg-b2_cityscapes.py'
pretrained = 'checkpoints/repvgg-b1g2_in1k.pth'
model = dict(
    backbone=dict(
        arch='B1g2',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=2048),  # RepVGG-B1g2 paper stage 5
    auxiliary_head=dict(in_channels=512))  # paper stage 4
