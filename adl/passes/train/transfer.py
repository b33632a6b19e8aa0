"""Transfer-learning regularizers: fine-tune a pretrained network on a small target set without
forgetting what the source task taught it.

The weights a network has when a term's `attach` runs are the *starting point* (the source, or
pretrained, weights w0). The *head* is the final classifier, the layer that is new for the target
task: the weight and bias of the last `nn.Linear` in `named_modules()` order (the last `nn.Conv2d`
for a fully convolutional network), see `head_parameter_names`. The head has no source
counterpart, so both methods decay it towards 0 (plain weight decay) instead of towards w0.

- `L2SP` (Li, Grandvalet, Davoine, "Explicit inductive bias for transfer learning with
  convolutional networks", ICML 2018) pulls the weights back to the starting point:

      Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_head||^2

  w_S being every parameter but the head's.

- `Delta` (Li et al., "DELTA: Deep Learning Transfer using Feature Map with Attention for
  Convolutional Networks", ICLR 2019) constrains what the network computes rather than its
  weights: the feature maps of chosen layers stay close to those of the frozen source network on
  the same batch, each channel weighted by how much the target task relies on it:

      Omega = alpha * sum_j sum_c W_jc * D_jc + beta/2 * ||w_head||^2
      D_jc  = mean over the batch of sum over positions of (FM_jc(student, x) - FM_jc(source, x))^2

  The attention weights W come from `Delta.attention_weights` (the loss increase when channel c
  of layer j is switched off, after fitting the new head); None gives weight 1 to every channel.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from adl.passes.train.objective import InputTap, Term, frozen_copy


def _head_module(model: nn.Module) -> tuple[str, nn.Module]:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1]
    raise ValueError(
        f"{type(model).__name__} has neither an nn.Linear nor an nn.Conv2d: no final classifier (head) to "
        "tell apart from the transferred weights"
    )


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of the final classifier's weight and bias: the last
    `nn.Linear` in `named_modules()` order, else the last `nn.Conv2d`. The head is new for the target
    task, so transfer regularizers decay it to 0 rather than to its starting value."""
    _, head = _head_module(model)
    # by identity, not by "<module name>.weight": a parameter shared with another module is listed once
    owned = {id(p) for p in head.parameters(recurse=False)}
    return {name for name, p in model.named_parameters() if id(p) in owned}


def _split_head(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[nn.Parameter]]:
    """((name, parameter) for everything but the head, the head's parameters)."""
    head = head_parameter_names(model)
    params = list(model.named_parameters())
    return [(n, p) for n, p in params if n not in head], [p for n, p in params if n in head]


def _squared_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    if not tensors:
        return None
    return torch.stack([t.pow(2).sum() for t in tensors]).sum()


class L2SP(Term):
    """L2-SP: alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_head||^2 (Li, Grandvalet, Davoine, ICML 2018).

    Plain weight decay pulls the transferred weights to 0, i.e. away from what the source task
    learned; L2-SP pulls them to their starting value w0 instead (the weights at `attach`), so a
    small target set can only move them as far as its evidence warrants.
    """

    name = "l2sp"

    def __init__(self, alpha: float, beta: float) -> None:
        self.alpha = float(alpha)
        self.beta = float(beta)
        # (parameter, its value at attach); parameters keep their identity through `model.to(...)`
        # (the optimizer relies on that too), so references stay valid for the whole run
        self._source: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._head: list[nn.Parameter] = []
        self._attached = False

    def attach(self, model: nn.Module) -> None:
        source, self._head = _split_head(model)
        self._source = [(p, p.detach().clone()) for _, p in source]
        self._attached = True

    def penalty(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if not self._attached:
            raise RuntimeError("L2SP.penalty before attach: the starting weights are not known yet")
        parts = []
        drift = _squared_norm([p - p0 for p, p0 in self._source])
        if drift is not None and self.alpha:
            parts.append(0.5 * self.alpha * drift)
        head = _squared_norm(self._head)
        if head is not None and self.beta:
            parts.append(0.5 * self.beta * head)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def epoch_record(self) -> dict[str, float]:
        """{"l2sp_distance": ||w_S - w0_S||} at the time of the call."""
        if not self._attached:
            return {}
        with torch.no_grad():
            drift = _squared_norm([p - p0 for p, p0 in self._source])
        return {"l2sp_distance": float(drift.sqrt()) if drift is not None else 0.0}

    def detach(self) -> None:
        self._source, self._head = [], []
        self._attached = False


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))


def _feature_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"DELTA: the network has no layer named {name!r} to regularize")
    return modules[name]


def _check_4d(name: str, output: Any) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"DELTA regularizes feature maps (N, C, H, W), but layer {name!r} produced {shape}")
    return output


class Delta(Term):
    """DELTA: alpha * sum_j sum_c W_jc * D_jc + beta/2 * ||w_head||^2 (Li et al., ICLR 2019).

    D_jc is the batch mean of the spatially summed squared difference between channel c of layer
    j's output in the network being trained and in the frozen source network (a copy taken at
    `attach`, run on the same batch through an `InputTap` under no_grad). Constraining feature maps
    rather than weights leaves the network free to reach the same features with other weights, and
    the attention weights W relax the constraint on channels the target task does not use.

    The source's BatchNorm layers normalize with the batch's statistics, as the student's do in
    training (the rest of the source runs in eval mode): the distance then measures how far the
    weights have moved the features, and is exactly 0 at the starting point. With the pretrained
    running statistics instead, a target set whose statistics differ from the source data's
    (Fashion-MNIST -> upsampled digits) would pull the student toward features it never computed,
    a penalty no weight change can remove.
    """

    name = "delta"

    def __init__(
        self,
        alpha: float,
        beta: float,
        layers: Sequence[str] | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """`layers`: module names whose outputs are regularized (None: `default_layers` at attach);
        `weights[layer]`: a 1-D tensor of channel weights (None: 1 for every channel, the plain
        feature-map distance without attention)."""
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.layers = list(layers) if layers is not None else None
        self._layers: list[str] = []  # the layers hooked by the last attach
        self.weights = {k: torch.as_tensor(v).detach() for k, v in weights.items()} if weights is not None else None
        self._handles: list[Any] = []
        self._tap: InputTap | None = None
        self._source: nn.Module | None = None
        self._head: list[nn.Parameter] = []
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._last_distance: torch.Tensor | None = None

    @staticmethod
    def default_layers(model: nn.Module) -> list[str]:
        """The ends of the network's stages: every MaxPool2d/AvgPool2d/AdaptiveAvgPool2d (every Conv2d
        if there is no pooling). The paper regularizes the outputs of the stages, not every layer:
        they are the features later layers build on, and few enough to keep the cost low."""
        pools = [name for name, m in model.named_modules() if isinstance(m, _POOLS)]
        if pools:
            return pools
        return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]

    def attach(self, model: nn.Module) -> None:
        layers = self.layers if self.layers is not None else self.default_layers(model)
        if not layers:
            raise ValueError("DELTA: no layer to regularize (the network has no pooling or Conv2d layer)")
        if self.weights is not None:
            missing = [name for name in layers if name not in self.weights]
            if missing:
                raise ValueError(f"DELTA: no channel weights for layer(s) {missing}")
            for name in layers:
                if self.weights[name].dim() != 1:
                    raise ValueError(
                        f"DELTA: channel weights of {name!r} must be 1-D, got {tuple(self.weights[name].shape)}"
                    )
        self._layers = list(layers)
        student_layers = [_feature_layer(model, name) for name in layers]
        _, self._head = _split_head(model)
        self._source = frozen_copy(model)  # before any hook lands on `model`: the copy must carry none
        for module in self._source.modules():  # batch statistics, as the student's (see the class docstring)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        self._student, self._teacher, self._last_distance = {}, {}, None

        source = self._source

        def run_source(x: torch.Tensor) -> None:
            self._student.clear()  # a new batch: last batch's features must not be paired with this one's
            self._teacher.clear()
            with torch.no_grad():
                source(x)

        def store(into: dict[str, torch.Tensor], name: str, student: bool):
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if student and not module.training:
                    return
                into[name] = _check_4d(name, output)

            return hook

        for name, layer in zip(layers, student_layers):
            self._handles.append(layer.register_forward_hook(store(self._student, name, True)))
            # the source copy is in eval mode and runs only from the tap, i.e. for training batches
            self._handles.append(_feature_layer(source, name).register_forward_hook(store(self._teacher, name, False)))
        self._tap = InputTap(run_source)
        self._tap.attach(model)

    def penalty(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if self._source is None or not self._layers:
            raise RuntimeError("Delta.penalty before attach: there is no source network yet")
        distance: torch.Tensor | None = None
        for name in self._layers:
            student = self._student.get(name)
            if student is None:
                continue
            teacher = self._teacher.get(name)
            if teacher is None or teacher.shape != student.shape:
                raise RuntimeError(
                    f"DELTA: layer {name!r} ran in training mode without the source network seeing the same "
                    "batch (call the network itself, not a submodule, during training)"
                )
            per_channel = (student - teacher).pow(2).sum(dim=(2, 3)).mean(dim=0)  # D_jc, shape (C,)
            if self.weights is not None:
                w = self.weights[name]
                if w.numel() != per_channel.numel():
                    raise ValueError(
                        f"DELTA: {w.numel()} channel weights for layer {name!r}, whose output has "
                        f"{per_channel.numel()} channels"
                    )
                layer_distance = (w.to(per_channel) * per_channel).sum()
            else:
                layer_distance = per_channel.sum()
            distance = layer_distance if distance is None else distance + layer_distance
        parts = []
        if distance is not None:
            self._last_distance = distance.detach()
            if self.alpha:
                parts.append(self.alpha * distance)
        head = _squared_norm(self._head)
        if head is not None and self.beta:
            parts.append(0.5 * self.beta * head)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def epoch_record(self) -> dict[str, float]:
        """{"delta_feature_distance": sum_j sum_c W_jc * D_jc} of the last training batch (without alpha)."""
        if self._last_distance is None:
            return {}
        return {"delta_feature_distance": float(self._last_distance)}

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._tap is not None:
            self._tap.detach()
            self._tap = None
        self._source = None
        self._head = []
        self._student, self._teacher = {}, {}

    @staticmethod
    def attention_weights(
        model: nn.Module,
        layers: Sequence[str],
        x: Any,
        y: Any,
        *,
        probe_epochs: int = 10,
        batch_size: int = 64,
        seed: int = 0,
        samples: int = 1000,
    ) -> dict[str, torch.Tensor]:
        """DELTA's supervised attention: {layer: 1-D float32 tensor of channel weights, mean 1}.

        A channel matters to the target task as much as the loss rises when it is switched off. The
        target head is new (its starting weights mean nothing for the target classes), so first it is
        fitted: on a copy of `model`, everything but the head (`head_parameter_names`) frozen, Adam
        (lr 1e-2) for `probe_epochs` epochs over (x, y), the copy in eval mode so that BatchNorm
        statistics stay the source's, shuffling and torch seeded from `seed`. Then, with that copy:
        L the cross-entropy on (up to) `samples` images of (x, y) (a seeded random subset), L_jc the
        same with channel c of layer j's output set to 0, dL_jc = L_jc - L, and

            W_j = C_j * softmax_c(dL_jc / (mean_c |dL_jc| + 1e-12)).

        The paper takes a softmax of the loss increase; dividing by its mean magnitude is ours: it
        makes the weights independent of the loss's scale (a well-fitted head has small losses, and a
        softmax of tiny numbers would be uniform), and C_j makes uniform weights 1, as `weights=None`.
        A channel whose removal changes nothing (a dead one, dL = 0) weighs less than every channel
        whose removal hurts (dL > 0).

        Cost: the probe, then 1 + sum_j C_j forward passes over `samples` images (in chunks of 256).
        `model` itself is not modified.
        """
        xs, ys = _as_tensor(x), _as_tensor(y).long()
        if len(xs) != len(ys) or len(xs) == 0:
            raise ValueError(f"attention_weights: {len(xs)} inputs and {len(ys)} labels")
        probe = copy.deepcopy(model).eval()
        reference = next(probe.parameters())
        xs = xs.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
        ys = ys.to(reference.device)
        head = head_parameter_names(probe)
        for name, param in probe.named_parameters():
            param.requires_grad_(name in head)
        head_params = [p for n, p in probe.named_parameters() if n in head]
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.Adam(head_params, lr=1e-2)
            for _ in range(probe_epochs):
                order = torch.randperm(len(xs), generator=generator).to(xs.device)
                for start in range(0, len(xs), batch_size):
                    index = order[start : start + batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(probe(xs[index]), ys[index]).backward()
                    optimizer.step()
        for param in probe.parameters():
            param.requires_grad_(False)

        if len(xs) > samples:
            keep = torch.randperm(len(xs), generator=generator)[:samples].to(xs.device)
            xs, ys = xs[keep], ys[keep]

        def loss() -> float:
            total = 0.0
            with torch.no_grad():
                for start in range(0, len(xs), 256):
                    logits = probe(xs[start : start + 256])
                    total += float(
                        nn.functional.cross_entropy(logits.double(), ys[start : start + 256], reduction="sum")
                    )
            return total / len(xs)

        channels: dict[str, int] = {}

        def count(name: str):
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                channels[name] = _check_4d(name, output).shape[1]

            return hook

        handles = [_feature_layer(probe, name).register_forward_hook(count(name)) for name in layers]
        try:
            base = loss()
        finally:
            for handle in handles:
                handle.remove()

        weights: dict[str, torch.Tensor] = {}
        ablated = [0]  # the channel the hook switches off

        def zero_channel(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, ablated[0]] = 0
            return output

        for name in layers:
            handle = _feature_layer(probe, name).register_forward_hook(zero_channel)
            increase = torch.zeros(channels[name], dtype=torch.float64)
            try:
                for c in range(channels[name]):
                    ablated[0] = c
                    increase[c] = loss() - base
            finally:
                handle.remove()
            scaled = increase / (increase.abs().mean() + 1e-12)
            weights[name] = (channels[name] * torch.softmax(scaled, dim=0)).float()
        return weights
