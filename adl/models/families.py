"""What each `model` family accepts: the option schema of every builder in `zoo`.

The spec checker (`adl.driver.check`) reads these, so ``adl check`` knows a family's settings,
their types, bounds and defaults without importing torch; `zoo.build_model` receives the
values they admit as the builders' keyword arguments. A family or a setting added to `zoo`
is added here too.
"""

from __future__ import annotations

from adl.ir.options import Option

# Upper bounds: generous, but a network within them can still be built and trained.
MAX_WIDTH = 65_536  # channels, hidden units
MAX_KERNEL = 31
MAX_EXPAND = 64

MLP: tuple[Option, ...] = (Option("hidden", "int_list", (64,), "widths of the hidden layers", low=1, high=MAX_WIDTH),)

CNN: tuple[Option, ...] = (
    Option(
        "channels",
        "int_list",
        None,
        "output channels of each conv-BN-ReLU-maxpool stage (default: "
        "16, 32, then 64, 128, ... while the final map is larger than 8x8)",
        low=1,
        high=MAX_WIDTH,
    ),
    Option("hidden", "int", 64, "width of the hidden fully connected layer (0: none)", low=0, high=MAX_WIDTH),
    Option("kernel", "int", 3, "convolution kernel size", low=1, high=MAX_KERNEL),
    Option(
        "head",
        "name",
        "auto",
        "what feeds the fully connected layers: flatten (the final C x H x W map), "
        "pool (global average pooling: C features) or auto (pool when every final position sees the "
        "whole image or the map is larger than 8x8, else flatten)",
        choices=("auto", "flatten", "pool"),
    ),
)

MOBILENET: tuple[Option, ...] = (
    Option(
        "kernels", "int_list", (3, 3, 3, 3), "depthwise kernel of each inverted-residual block", low=1, high=MAX_KERNEL
    ),
    Option("expand", "int_list", (1, 6, 6, 6), "expansion ratio of each block", low=1, high=MAX_EXPAND),
    Option(
        "channels",
        "int_list",
        None,
        "output channels of each block (default: 16, 24, 24, 32, 32, 48, ... for as many blocks as `kernels`)",
        low=1,
        high=MAX_WIDTH,
    ),
    Option(
        "strides",
        "int_list",
        None,
        "stride of each block (default: 1, 2, 1, 2, 1, 1, ...; for "
        "inputs larger than 16x16, further stride-2 blocks from the third on until the final map "
        "is at most 4x4)",
        low=1,
        high=2,
    ),
    Option("width", "float", 1.0, "width multiplier applied to all channels", low=0.05, high=64.0),
    Option("stem", "int", 16, "channels of the stem convolution", low=1, high=MAX_WIDTH),
    Option("head", "int", 64, "channels of the final 1x1 convolution", low=1, high=MAX_WIDTH),
)

RESNET: tuple[Option, ...] = (
    Option("blocks", "int_list", (2, 2, 2, 2), "basic blocks per stage (ResNet-18: [2, 2, 2, 2])", low=1, high=64),
    Option("widths", "int_list", (64, 128, 256, 512), "channels of each stage", low=1, high=MAX_WIDTH),
)

NORMALIZE = Option(
    "normalize",
    "bool",
    False,
    "put the data's per-channel normalisation ((x - mean) / std, compiled into the library) before the "
    "network; off by default, so an imported network keeps its own input contract",
)

ONNX: tuple[Option, ...] = (
    Option("path", "path", doc='the .onnx file, e.g. `path = "net.onnx"` (relative to the spec)'),
    NORMALIZE,
)

# torchvision architectures adl builds (torchvision's own builders, no download) and has tested
# with its passes; `adl.models.torchvision_import` builds them.
TORCHVISION_NAMES: tuple[str, ...] = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
    "mnasnet0_5",
    "mnasnet1_0",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
)

TORCHVISION: tuple[Option, ...] = (
    Option("name", "name", doc="the architecture, as torchvision names its builder", choices=TORCHVISION_NAMES),
    Option(
        "weights",
        "path",
        "",
        "trained weights: a state dict (.pt, loaded with weights_only) or .safetensors; default: "
        "torchvision's random initialisation",
    ),
    Option(
        "stem",
        "name",
        "keep",
        "the first convolution: keep it (its input channels must match the data's) or replace it "
        "(a new layer for the data's channels; from pretrained RGB filters, their sum over channels)",
        choices=("keep", "replace"),
    ),
    Option(
        "head",
        "name",
        "keep",
        "the last Linear layer: keep it (its outputs must match the task's classes) or replace it "
        "(a new, freshly initialised layer with one output per class)",
        choices=("keep", "replace"),
    ),
    NORMALIZE,
)

MODEL_FAMILIES: dict[str, tuple[Option, ...]] = {
    "mlp": MLP,
    "cnn": CNN,
    "mobilenet": MOBILENET,
    "resnet": RESNET,
    "onnx": ONNX,
    "torchvision": TORCHVISION,
}
IMPORTED_FAMILIES = ("onnx", "torchvision")  # networks the user brings: no Normalize unless asked


def arrives_trained(family: str, options: dict) -> bool:
    """Whether a `model` block's network arrives trained for the task, so passes that need a trained
    network (amc, haq) may run without `train`: an ONNX file always carries its weights; a torchvision
    network does when `weights` are given and its classifier is kept (a replaced head starts untrained).
    `adl.models.imported` decides the same at build time, when it also knows the data's channels."""
    if family == "onnx":
        return True
    if family == "torchvision":
        return bool(options.get("weights")) and options.get("head", "keep") == "keep"
    return False
