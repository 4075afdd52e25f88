# RepVGG paper Table 8, row "RepVGG-B2-fast" (79.52 mIoU): dilation only in the last 5
# layers (the last 4 of paper stage 4 and the one of stage 5).
_base_ = './pspnet_repvgg-b2_cityscapes.py'
model = dict(backbone=dict(dilation_plan='fast'))
