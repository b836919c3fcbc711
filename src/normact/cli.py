"""The ``normact`` command line: a thin layer over the library (nothing imports it).

Needs the ``cli`` extra (typer and rich): ``pip install 'normact[cli]'``.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any


def _build_app() -> Any:
    import typer
    from rich.console import Console
    from rich.table import Table

    import normact
    from normact.catalog import catalog_markdown
    from normact.registry import KINDS, UnknownLayerError

    app = typer.Typer(
        name="normact",
        help="normact: the PyTorch lab for normalization layers and activation functions.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    console = Console()
    err = Console(stderr=True)

    def version_callback(value: bool) -> None:
        if value:
            console.print(f"normact {normact.__version__}")
            raise typer.Exit()

    @app.callback()
    def main_options(
        version: Annotated[
            bool,
            typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit."),
        ] = False,
    ) -> None:
        """normact: the PyTorch lab for normalization layers and activation functions."""

    @app.command("list")
    def list_command(
        kind: Annotated[str | None, typer.Option("--kind", "-k", help=f"Only one kind: {', '.join(KINDS)}.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List the registered layers: name, kind, paper and year."""
        try:
            names = normact.list_layers(kind)
        except ValueError as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from e
        infos = [normact.info(n) for n in names]
        if as_json:
            print(json.dumps([i.as_dict() for i in infos], indent=2))
            return
        table = Table(title=f"normact layers ({len(names)})", header_style="bold")
        for column in ("name", "kind", "paper", "year", "arXiv"):
            table.add_column(column, overflow="fold")
        for i in infos:
            table.add_row(i.name, i.kind, i.paper.title, str(i.paper.year), i.paper.arxiv or "-")
        console.print(table)

    @app.command("info")
    def info_command(
        name: Annotated[str, typer.Argument(help="A registry name (case- and underscore-insensitive).")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a report.")] = False,
    ) -> None:
        """Show a layer's formula, paper, parameters and properties."""
        try:
            info = normact.info(name)
        except UnknownLayerError as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from e
        if as_json:
            print(json.dumps(info.as_dict(), indent=2))
            return
        console.print(f"[bold]{info.name}[/]  ({info.kind})  {info.summary}")
        console.print(f"[bold]formula[/]     {info.formula}")
        console.print(f"[bold]paper[/]       {info.paper.cite()}")
        console.print(f"[bold]class[/]       {info.cls.__module__}.{info.cls.__qualname__}")
        console.print(f"[bold]functional[/]  normact.functional.{info.functional.__name__}")
        if info.defaults:
            console.print(f"[bold]defaults[/]    {dict(info.defaults)}")
        if info.aliases:
            console.print(f"[bold]aliases[/]     {', '.join(info.aliases)}")
        if info.params:
            table = Table("parameter", "shape", "initial value", "kind", header_style="bold")
            for p in info.params:
                table.add_row(p.name, p.shape, p.init, "buffer" if p.buffer else "parameter")
            console.print(table)
        else:
            console.print("[bold]parameters[/]  none")
        props = info.as_dict()["properties"]
        console.print("[bold]properties[/]  " + ", ".join(f"{k}={v}" for k, v in props.items()))

    @app.command("catalog")
    def catalog_command(
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Write the Markdown here instead of printing.")
        ] = None,
    ) -> None:
        """Print (or write) the Markdown catalog of every registered layer."""
        text = catalog_markdown()
        if out is None:
            print(text, end="")
            return
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        console.print(f"wrote {out}")

    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``normact`` script."""
    try:
        app = _build_app()
    except ImportError as e:
        print(
            f"normact's command line needs the 'cli' extra ({e.name or e}): pip install 'normact[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from e
    app(args=argv, prog_name="normact")


if __name__ == "__main__":
    main()
