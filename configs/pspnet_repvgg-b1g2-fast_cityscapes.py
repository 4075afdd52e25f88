# RepVGG paper Table 8, row "RepVGG-B1g2-fast" (78.88 mIoU): dilation only in the last 5 layers.
_base_ = './pspnet_repvgg-b1g2_cityscapes.py'
model = dict(backbone=dict(dilation_plan='fast'))
