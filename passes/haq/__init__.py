"""Hardware-aware mixed-precision quantization (HAQ, Wang et al. 2019) -- work in progress.

Present: the quantizers (`quantizers.py`: per-channel symmetric weights, affine activations
with min-max/percentile/KL calibration, k-means weights, straight-through estimators) and
bit-packing of low-bit weights (`packing.py`), and the resource constraint that lowers a
proposed policy's widths until the cost model says it fits (`budget.py`). Not yet: the DDPG environment, the `haq` pass
and the integer lowering (issue 7).
"""
