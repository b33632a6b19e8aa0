"""Readable text dump of a module, written after each pass by `--dump-ir`."""

from __future__ import annotations

import json
from typing import Any

from adl.ir.module import Module


def dump_module(module: Module, p: Any, ctx: Any) -> str:
    lines = [
        f"# after pass: {p}",
        f"# checkpoint key: {ctx.current_key}",
        "",
        "## facts",
        ", ".join(sorted(module.provides())) or "(none)",
        "",
        "## model",
    ]
    if module.model is None:
        lines.append("(no model yet)")
    else:
        lines.append(str(module.model))
        try:
            import torch.fx

            traced = torch.fx.symbolic_trace(module.model)
            lines += ["", "## graph (torch.fx)", traced.graph.python_code("self").src.strip()]
        except Exception as err:  # a model fx cannot trace is still dumped as a module tree
            lines.append(f"(not traceable by torch.fx: {err})")
    lines += [
        "",
        "## metrics",
        json.dumps(dict(module.metrics), indent=2, default=str, sort_keys=True),
        "",
        "## files",
        json.dumps(dict(module.files), indent=2),
        "",
        "## pass log",
    ]
    lines += [f"{r.pipeline_text}  {r.seconds:.2f}s{'  (reused)' if r.reused else ''}" for r in module.log]
    return "\n".join(lines) + "\n"
