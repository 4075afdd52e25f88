# The `make demo-cls` classifier (./repvgg-small_digits.py) with QARepVGG blocks and the very
# same recipe (data, epochs, SGD lr 0.05, weight decay 1e-4 on the conv/fc kernels, seed):
# tools/compare_qa_digits.py trains both and compares them, so only the block differs.
_base_ = './repvgg-small_digits.py'
model = dict(backbone=dict(block_cfg=dict(type='QARepVGGBlock')))
