# RepVGG paper Table 8, row "RepVGG-B2" (80.57 mIoU): PSPNet, RepVGG-B2 with all 3x3 convs
# of the last two stages dilated, Cityscapes 713x713, 40 epochs, batch 16 on 8 GPUs.
#   python tools/train.py configs/pspnet_repvgg-b2_cityscapes.py
#   bash tools/dist_train.sh configs/pspnet_repvgg-b2_cityscapes.py 8
_base_ = [
    './_base_/models/pspnet_repvgg-b2.py', './_base_/datasets/cityscapes_713x713.py',
    './_base_/seg_runtime.py', './_base_/schedules/poly_40e_cityscapes.py'
]
