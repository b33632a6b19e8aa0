"""Reinforcement learning shared by the compression passes (`amc` now, `haq` next).

`ddpg.py` holds a DDPG agent (Lillicrap et al. 2016) in the form AMC and HAQ use it: one
continuous action per step, the episode's reward given to every step of it, a moving-average
baseline subtracted from the rewards, truncated-normal exploration decayed over episodes and a
warm-up of random episodes. It knows nothing about pruning or quantization: a pass supplies an
`Environment` (reset -> state, step(action) -> state, reward, done) and calls `search`.

Importing this package imports nothing heavy; `adl.passes.rl.ddpg` imports torch.
"""

from __future__ import annotations
