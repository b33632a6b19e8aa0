"""Hardware-aware mixed-precision quantization (HAQ, Wang et al. 2019) -- work in progress.

Present: the quantizers (`quantizers.py`: per-channel symmetric weights, affine activations
with min-max/percentile/KL calibration, k-means weights, straight-through estimators),
bit-packing of low-bit weights (`packing.py`), the resource constraint that lowers a proposed
policy's widths until the cost model says it fits (`budget.py`), the network quantized by a
policy in simulation (`model.py`, BatchNorm folded first) and the DDPG environment (`env.py`,
the paper's state embedding and reward, the agent shared with `amc`). Not yet: the `haq`
pass in the pipeline, quantization-aware fine-tuning, the bench and the integer lowering.
"""
