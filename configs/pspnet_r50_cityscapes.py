# RepVGG paper Table 8, row "ResNet-50" (77.17 mIoU): PSPNet-50 (dilated ResNet-50, mmseg's
# ResNetV1c) with the same heads, data, crop and schedule as the RepVGG rows.
_base_ = [
    './_base_/models/pspnet_r50-d8.py', './_base_/datasets/cityscapes_713x713.py',
    './_base_/seg_runtime.py', './_base_/schedules/poly_40e_cityscapes.py'
]

# One crop size (the dataset's 713x713, paper Sect. 4.3) for the training crops, the batches
# the preprocessor pads them into and the sliding test windows, as mmseg's configs do.
crop_size = {{_base_.crop_size}}
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, test_cfg=dict(crop_size=crop_size))
