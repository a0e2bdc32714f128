"""``hypertransformer model-summary PRESET``: the generated layers and the parameter counts."""

from __future__ import annotations

import argparse
import json

from torch import nn

from hypertransformer import presets
from hypertransformer.model import build_model
from hypertransformer.model.continual import ContinualHyperTransformer
from hypertransformer.model.hypertransformer import HyperTransformer


def layer_table(model: HyperTransformer) -> list[dict[str, int | str]]:
    """One row per generated layer: token width E, block size B, weight and sample tokens."""
    cfg = model.config
    return [{"layer": name, "token_width": g.width, "block_size": g.block_size,
             "weight_tokens": g.num_tokens, "sample_tokens": cfg.samples_transformer,
             "features": g.num_features}
            for name, g in model.generators.items()]


def parameter_table(model: nn.Module) -> list[tuple[str, int]]:
    """Trainable parameters per top-level module (generators split per layer)."""
    rows: list[tuple[str, int]] = []

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    for name, child in model.named_children():
        if isinstance(child, nn.ModuleDict | nn.ModuleList):
            rows += [(f"{name}.{k}", count(m)) for k, m in child.named_children()]
        elif child is not None:
            rows.append((name, count(child)))
    return [r for r in rows if r[1] > 0]


def summary(preset: str, overrides: dict[str, object] | None = None) -> dict[str, object]:
    """The preset's model (``model_type``): its generated layers (none for the ProtoNet) and
    parameters; a Continual HT's are those of the HT it is built on."""
    model = build_model(presets.load(preset, **(overrides or {})))
    ht = model.ht if isinstance(model, ContinualHyperTransformer) else model
    params = parameter_table(ht)
    return {"preset": preset, "model": type(model).__name__,
            "layers": layer_table(ht) if isinstance(ht, HyperTransformer) else [],
            "parameters": dict(params), "total_parameters": sum(n for _, n in params)}


def _run(args: argparse.Namespace) -> int:
    s = summary(args.preset)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"{s['model']}, preset {args.preset}\n")
    if not s["layers"]:
        print("nothing generated: every weight is trained")
    else:
        print(f"{'generated layer':<16}{'token width':>12}{'block':>8}{'tokens':>14}"
              f"{'features':>10}")
    for r in s["layers"]:  # type: ignore[union-attr]
        tokens = f"{r['weight_tokens']}+{r['sample_tokens']}"
        print(f"{r['layer']:<16}{r['token_width']:>12}{r['block_size']:>8}{tokens:>14}"
              f"{r['features']:>10}")
    print(f"\n{'module':<32}{'parameters':>12}")
    for name, n in s["parameters"].items():  # type: ignore[union-attr]
        print(f"{name:<32}{n:>12,}")
    print(f"{'total':<32}{s['total_parameters']:>12,}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-summary", help="token widths, blocks and parameter counts")
    p.add_argument("preset", choices=presets.names())
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)
