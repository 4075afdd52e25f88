# RepVGG paper Table 8, row "RepVGG-B2" (80.57 mIoU): PSPNet, RepVGG-B2 with all 3x3 convs
# of the last two stages dilated, Cityscapes 713x713, 40 epochs, batch 16 on 8 GPUs.
#   python tools/train.py configs/pspnet_repvgg-b2_cityscapes.py
#   bash tools/dist_train.sh configs/pspnet_repvgg-b2_cityscapes.py 8
_base_ = [
    './_base_/models/pspnet_repvgg-b2.py', './_base_/datasets/cityscapes_713x713.py',
    './_base_/seg_runtime.py', './_base_/schedules/poly_40e_cityscapes.py'
]

# One crop size (the dataset's 713x713, paper Sect. 4.3) for the training crops, the batches
# the preprocessor pads them into and the sliding test windows, as mmseg's configs do.
crop_size = {{_base_.crop_size}}
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, test_cfg=dict(crop_size=crop_size))
