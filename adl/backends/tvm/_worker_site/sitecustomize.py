# Loaded at start-up by TVM's tuning worker processes (adl puts this folder on PYTHONPATH
# only while tuning); see adl/backends/tvm/intrinsics.py for why.
import os

if os.environ.get("ADL_TVM_LIGHT_INTRINSICS"):
    from adl.backends.tvm.intrinsics import install

    install()
