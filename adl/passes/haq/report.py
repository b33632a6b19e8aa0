"""The `haq` section of the artifact's reports: the search against its budget, the bit widths
per layer (a plot), and how each layer was lowered (a table)."""

from __future__ import annotations

from typing import Any

from adl.ir.report import Figure, Section, Table


def sections(haq: dict[str, Any]) -> list[Section]:
    rows = [(d["name"], d["weight_bits"], d["act_bits"], d["arithmetic"], d["reason"] or "-") for d in haq["lowering"]]
    return [
        Section(
            "Mixed precision (`haq`)",
            [
                _summary(haq),
                _bits_plot(haq),
                Table(["layer", "weight bits", "activation bits", "arithmetic", "why not integer"], rows),
            ],
        )
    ]


def _summary(haq: dict[str, Any]) -> str:
    sizes, cost = haq["weight_bytes"], haq["cost"]
    return (
        f"Search `{haq['search']}` ({haq['episodes']} episodes) over {haq['bits'][0]}..{haq['bits'][1]} bits "
        f"under {haq['resource']} <= {haq['budget']:.4g} ({haq['budget_source']}): "
        f"{cost['chosen'] / cost['highest_bits']:.1%} of the {haq['bits'][1]}-bit "
        f"{haq['resource']} ({'budget met' if haq['budget_met'] else 'budget NOT met'}); "
        f"validation accuracy {haq['val_accuracy_full_precision']:.4f} -> {haq['val_accuracy_quantized']:.4f} "
        f"before fine-tuning; {haq['integer_layers']} of {len(haq['lowering'])} layers in integer arithmetic, "
        f"{len(haq.get('integer_handoffs', []))} handing uint8 codes straight to the next; "
        f"weights {sizes['packed']} B packed ({sizes['float32']} B in float32); deployed and simulated "
        f"networks agree on {haq['test_agreement_deployed_vs_simulated']:.2%} of the test split."
    )


def _bits_plot(haq: dict[str, Any]) -> Figure:
    policy = haq["policy"]
    layers = [row["layer"] for row in policy]

    def draw(ax: Any) -> None:
        x = range(len(layers))
        ax.bar([i - 0.2 for i in x], [row["weight_bits"] for row in policy], width=0.4, label="weights")
        ax.bar([i + 0.2 for i in x], [row["act_bits"] for row in policy], width=0.4, label="activations")
        ax.set_xticks(list(x), layers, rotation=60, fontsize=7)
        ax.set_ylabel("bits")
        ax.legend(fontsize=8)

    return Figure("Bit widths per layer chosen by the HAQ policy", draw)
