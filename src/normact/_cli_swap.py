"""The ``normact swap`` command (part of the command line, beside cli.py): swap layers of a Hugging Face model
folder and save the result.

Registered on the ``normact`` typer app by :func:`add_swap_command` (typer and rich are imported there, not at
module import). No ``from __future__ import annotations`` here: typer evaluates the annotations at run time.
"""

import json
from pathlib import Path
from typing import Annotated, Any


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["alpha_init=0.8", "affine=false", "name=x"]`` -> ``{"alpha_init": 0.8, "affine": False, "name": "x"}``:
    each value is read as JSON (numbers, ``true``/``false``, ``null``, quoted strings, lists) or else kept as
    text. Raises ``ValueError`` for an item without ``=`` or with an empty key."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--kw expects key=value with a Python identifier as key, got {item!r}")
        if text.strip().lower() in ("true", "false", "none", "null"):
            out[key] = {"true": True, "false": False}.get(text.strip().lower())
            continue
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def add_swap_command(app: Any, console: Any, err: Any) -> None:
    """Register ``normact swap MODEL --from NAME --to NAME --out DIR [--kw key=value ...]`` on ``app``."""
    import typer

    @app.command("swap")
    def swap_command(
        model: Annotated[
            str,
            typer.Argument(
                help="A Hugging Face model folder (config.json + weights, or a .gguf file), or minilm / smollm2."
            ),
        ],
        source: Annotated[
            str,
            typer.Option(
                "--from",
                help="What to replace: a registry name (layernorm, rmsnorm, batchnorm, gelu, silu...; also matches "
                "the Hugging Face / timm classes) or a module-name pattern (with '.' or '*', or prefixed 'name:').",
            ),
        ],
        target: Annotated[str, typer.Option("--to", help="The registry name of the new layer (normact list).")],
        out: Annotated[Path, typer.Option("--out", help="Folder to write the swapped model into.")],
        kw: Annotated[
            list[str] | None,
            typer.Option("--kw", help="Constructor argument of the new layer, key=value (repeatable)."),
        ] = None,
        copy_weights: Annotated[
            bool,
            typer.Option("--copy-weights/--no-copy-weights", help="Copy the old weights where they carry over."),
        ] = True,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    ) -> None:
        """Swap layers of a Hugging Face model and save it (safetensors) with swap_report.json and the recipe
        normact_swap.json. Reload it with normact.surgery.swap.load_swapped(DIR): transformers' from_pretrained
        cannot rebuild the new layers from the original config."""
        from rich.markup import escape

        from normact.registry import get_info
        from normact.surgery.swap import save_swapped, swap
        from normact.zoo import ModelUnavailableError, load_model

        def fail(message: str, e: BaseException | None = None) -> None:
            err.print(f"[bold red]error:[/] {escape(message)}")
            raise typer.Exit(2) from e

        try:
            kwargs = parse_kwargs(kw)
        except ValueError as e:
            fail(str(e), e)
        out_dir = Path(out)
        if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
            fail(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
        try:
            get_info(target)  # a bad --to fails before the model is loaded
            with console.status(f"loading {escape(model)}"):
                zm = load_model(model)
        except (ValueError, TypeError, OSError, ModelUnavailableError) as e:
            fail(str(e), e)
        if not callable(getattr(zm.model, "save_pretrained", None)):
            fail(f"{model} is not a Hugging Face model (normact swap saves with save_pretrained)")
        try:
            report = swap(zm.model, source, target, copy_weights=copy_weights, **kwargs)
        except (ValueError, TypeError) as e:
            fail(str(e), e)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            console.print(report.table())
        if not report.replaced:
            first = report.skipped[0]
            fail(f"nothing was replaced ({len(report.skipped)} skipped; {first.name}: {first.reason})")
        try:
            with console.status(f"saving to {escape(str(out_dir))}"):
                save_swapped(zm.model, out_dir, report=report, tokenizer=zm.tokenizer, overwrite=overwrite)
        except (ValueError, OSError) as e:
            fail(str(e), e)
        if not as_json:
            console.print(f"wrote {escape(str(out_dir))} (reload with normact.surgery.swap.load_swapped)")
