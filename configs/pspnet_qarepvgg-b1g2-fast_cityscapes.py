# PSPNet with a QARepVGG-B1g2 backbone and the 'fast' dilation plan: the RepVGG paper's
# Table 8 row "RepVGG-B1g2-fast" (configs/pspnet_repvgg-b1g2-fast_cityscapes.py) with
# QARepVGG blocks (Chu et al. 2022). The segmentation recipe is unchanged (paper Sect. 4.3:
# PSPNet, SGD lr 0.01 poly 0.9, wd 1e-4, batch 16, 40 epochs, 713x713); only the ImageNet
# weights differ: a QARepVGG-B1g2 backbone, trained with configs/qarepvgg-b1g2_in1k.py and
# written to the path below with tools/convert_weights.py. Not yet trained here.
_base_ = './pspnet_repvgg-b1g2-fast_cityscapes.py'
pretrained = 'checkpoints/qarepvgg-b1g2_in1k.pth'
model = dict(
    backbone=dict(
        block_cfg=dict(type='QARepVGGBlock'),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
