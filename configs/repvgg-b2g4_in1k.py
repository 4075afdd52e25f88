# RepVGG paper Table 4, row "RepVGG-B2g4" (78.5 top-1): 120 epochs, simple augmentation,
# batch 256 (8 GPUs x 32), SGD lr 0.1 cosine, wd 1e-4 on conv/fc kernels only.
#   bash tools/dist_train.sh configs/repvgg-b2g4_in1k.py 8
_base_ = [
    './_base_/models/repvgg_in1k.py', './_base_/datasets/imagenet_bs32.py',
    './_base_/schedules/imagenet_sgd_cos_120e.py', './_base_/cls_runtime.py'
]
model = dict(backbone=dict(arch='B2g4'), head=dict(in_channels=2560))
