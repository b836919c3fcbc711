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
_FLAGS = (
    "batch_dependent",
    "smooth",
    "monotonic",
    "custom_backward",
    "stateful",
    "gated",
    "bounded_below",
    "self_gated",
)


def _paper(info: LayerInfo) -> str:
    arxiv = f" [arXiv:{info.paper.arxiv}](https://arxiv.org/abs/{info.paper.arxiv})" if info.paper.arxiv else ""
    return f"{info.paper.title} ({info.paper.year}){arxiv}"


def _flags(info: LayerInfo) -> str:
    flags = [f for f in _FLAGS if getattr(info.properties, f)]
    if info.kind == "act" and not info.properties.elementwise:
        flags.append("not elementwise")
    return ", ".join(flags) or "-"


def _verified(info: LayerInfo) -> str:
    return "paper formula (float64)" + "".join(f", `{v}`" for v in info.verified_against)


def _gaussian(info: LayerInfo) -> str:
    from normact.gaussian import gaussian_moments

    if not info.properties.elementwise:
        return "n/a (not elementwise)"
    m = gaussian_moments(info.name)
    centred = ", zero-centred" if m.zero_centred else ""
    mean = round(m.mean, 4) + 0.0  # + 0.0: no "-0.0000" from a mean of -1e-19 (summation order varies)
    return f"{m.gain:.4f} (E = {mean:.4f}{centred})"


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
        act = kind == "act"
        lines += ["", f"## {_KIND_TITLES[kind]} ({len(names)})", ""]
        if act:
            lines += [
                "gain: 1/sqrt(Var[g(z)]) for z ~ N(0, 1) by quadrature (`normact.activation_gain`), E: E[g(z)].",
                "",
            ]
        lines += [
            "| name | class | formula | paper | properties | " + ("gain | " if act else "") + "verified against |",
            "|---|---|---|---|---|" + ("---|" if act else "") + "---|",
        ]
        for name in names:
            info = get_info(name)
            formula = info.formula.replace("|", "\\|")
            gain = f" {_gaussian(info)} |" if act else ""
            lines.append(
                f"| `{name}` | `{info.cls.__name__}` | {formula} | {_paper(info)} | {_flags(info)} |{gain}"
                f" {_verified(info)} |"
            )
    return "\n".join(lines) + "\n"
