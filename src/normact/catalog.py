"""The registry as a document: docs/catalog.md is generated from it (``normact catalog --out docs/catalog.md``)."""

from __future__ import annotations

from normact.registry import KINDS, LayerInfo, get_info, list_layers

_KIND_TITLES = {
    "norm": "Normalization layers",
    "act": "Activation functions",
    "attention": "Attention variants",
    "weight": "Weight normalizations and reparametrizations",
    "block": "Blocks",
}
_FLAGS = ("batch_dependent", "smooth", "monotonic", "custom_backward", "stateful", "gated")


def _paper(info: LayerInfo) -> str:
    arxiv = f" [arXiv:{info.paper.arxiv}](https://arxiv.org/abs/{info.paper.arxiv})" if info.paper.arxiv else ""
    return f"{info.paper.title} ({info.paper.year}){arxiv}"


def _flags(info: LayerInfo) -> str:
    return ", ".join(f for f in _FLAGS if getattr(info.properties, f)) or "-"


def catalog_markdown() -> str:
    """Markdown tables of every registered layer, by kind, with formula, paper and properties."""
    lines = [
        "# normact catalog",
        "",
        "Generated from the registry by `normact catalog --out docs/catalog.md`; do not edit by hand",
        "(tests/test_docs.py fails when it is out of date). `normact info NAME` prints one entry in full.",
        "",
        f"{len(list_layers())} layers registered.",
    ]
    for kind in KINDS:
        names = list_layers(kind)
        if not names:
            continue
        lines += [
            "",
            f"## {_KIND_TITLES[kind]} ({len(names)})",
            "",
            "| name | class | formula | paper | properties |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            info = get_info(name)
            formula = info.formula.replace("|", "\\|")
            lines.append(f"| `{name}` | `{info.cls.__name__}` | {formula} | {_paper(info)} | {_flags(info)} |")
    return "\n".join(lines) + "\n"
