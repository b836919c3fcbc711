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
    from rich.markup import escape
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
        console.print(f"[bold]{info.name}[/]  ({info.kind})  {escape(info.summary)}")
        console.print(f"[bold]formula[/]     {escape(info.formula)}")
        console.print(f"[bold]paper[/]       {escape(info.paper.cite())}")
        console.print(f"[bold]class[/]       {info.cls.__module__}.{info.cls.__qualname__}")
        console.print(f"[bold]functional[/]  normact.functional.{info.functional.__name__}")
        if info.defaults:
            console.print(f"[bold]defaults[/]    {dict(info.defaults)}")
        if info.aliases:
            console.print(f"[bold]aliases[/]     {', '.join(info.aliases)}")
        if info.params:
            table = Table("parameter", "shape", "initial value", "kind", header_style="bold")
            for p in info.params:
                table.add_row(escape(p.name), escape(p.shape), escape(p.init), "buffer" if p.buffer else "parameter")
            console.print(table)
        else:
            console.print("[bold]parameters[/]  none")
        props = info.as_dict()["properties"]
        console.print("[bold]properties[/]  " + ", ".join(f"{k}={v}" for k, v in props.items()))
        if info.kind == "act" and not info.properties.elementwise:
            console.print("[bold]gaussian[/]    n/a (not elementwise: the moments depend on the width)")
        elif info.kind == "act":
            m = normact.gaussian_moments(info.name)
            text = (
                f"gain 1/sqrt(Var[g(z)]) = {m.gain:.6f}, E[g(z)] = {m.mean:.6f}, zero_centred={m.zero_centred}"
                "  (z ~ N(0, 1), by quadrature)"
            )
            console.print("[bold]gaussian[/]    " + escape(text))
        console.print("[bold]verified[/]    " + escape("; ".join(info.as_dict()["verified_against"])))

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

    @app.command("plot-act")
    def plot_act_command(
        names: Annotated[list[str], typer.Argument(help="Activation names (normact list --kind act).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")] = Path("activations.png"),
        x_min: Annotated[float, typer.Option(help="Left end of the x range.")] = -5.0,
        x_max: Annotated[float, typer.Option(help="Right end of the x range.")] = 5.0,
    ) -> None:
        """Draw activation functions and their derivatives on one figure."""
        from normact.plot import plot_activations

        try:
            path = plot_activations(names, out, x_min, x_max)
        except (UnknownLayerError, ValueError) as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from e
        except ImportError as e:
            err.print(f"[bold red]error:[/] {e}; install the plot extra: pip install 'normact[plot]'")
            raise typer.Exit(2) from e
        console.print(f"wrote {path}")

    _add_bench_commands(app, console, err)
    _add_probe_command(app, console, err)
    from normact._cli_swap import add_swap_command

    add_swap_command(app, console, err)
    return app


def _print_leaderboard(console: Any, title: str, rows: list[Any]) -> None:
    """Rank, the configuration columns that vary, mean ± std over seeds, the test against the best."""
    from rich.table import Table

    if not rows:
        return
    from normact.bench.report import variant_of

    columns = ("norm", "act", "variant", "lr")

    def value(row: Any, k: str) -> str:
        return variant_of(row.spec) if k == "variant" else f"{row.spec[k]:g}" if k == "lr" else str(row.spec[k])

    varying = [k for k in columns if len({value(r, k) for r in rows}) > 1] or ["norm"]
    fixed = ", ".join(value(rows[0], k) if k == "variant" else f"{k}={value(rows[0], k)}"
                      for k in columns if k not in varying and value(rows[0], k))  # fmt: skip
    metric = rows[0].metric
    table = Table(title=f"{title}" + (f" ({fixed})" if fixed else ""), header_style="bold")
    table.add_column("#", justify="right")
    for k in varying:
        table.add_column("model" if k == "variant" else k)
    table.add_column(f"{metric}\nmean ± std", justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("vs best", justify="left")
    table.add_column(rows[0].unit or "throughput", justify="right")
    table.add_column("peak RSS\nMB", justify="right")
    table.add_column("time\ns", justify="right")
    for row in rows:
        mean = "-" if row.mean is None else f"{row.mean:.4f} ± {row.std or 0:.4f}"
        versus = row.versus_best + (f" p={row.p_value:.2f}" if row.p_value is not None else "")
        cells = [value(row, k) for k in varying]
        table.add_row(
            str(row.rank),
            *cells,
            mean,
            str(row.seeds),
            versus,
            "-" if row.throughput is None else f"{row.throughput:,.0f}",
            "-" if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f}",
            f"{row.wall_time_s:.1f}",
        )
    console.print(table)


def _print_stability(console: Any, records: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not records:
        return
    table = Table(title="learning-rate stability: largest lr at which every seed trained", header_style="bold")
    for column in ("task/model", "norm", "act", "optimizer", "max stable lr", "seeds trained per lr"):
        table.add_column(column)
    for r in records:
        per_lr = ", ".join(f"{lr:g}: {n}/{r['seeds'][lr]}" for lr, n in r["trained"].items())
        best = "none" if r["max_stable_lr"] is None else f"{r['max_stable_lr']:g}"
        model = f"{r['task']}/{r['model']}" + (f" {r['variant']}" if r.get("variant") else "")
        table.add_row(model, r["norm"], r["act"], r["optimizer"], best, per_lr)
    console.print(table)


def _print_init_signal(console: Any, records: list[dict[str, Any]], when: str = "at initialisation") -> None:
    from rich.table import Table

    if not records:
        return
    table = Table(title=f"signal propagation {when} (mean over seeds)", header_style="bold")
    for column in ("task/model", "norm", "act", "depth", "var first", "var last", "last/first", "branch/var"):
        table.add_column(column, justify="left" if column in ("task/model", "norm", "act") else "right")
    for r in records:
        table.add_row(
            f"{r['task']}/{r['model']}" + (f" {r['variant']}" if r.get("variant") else ""),
            r["norm"],
            r["act"],
            f"{r['depth']} {r['layers']}s",
            f"{r['first_var']:.3g}",
            f"{r['last_var']:.3g}",
            "-" if r["var_growth"] is None else f"{r['var_growth']:.3g}",
            "-" if r["branch_ratio"] is None else f"{r['branch_ratio']:.3g}",
        )
    console.print(table)


def _study_groups(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        s = r["spec"]
        groups.setdefault(f"{s['task']} / {s['model']} ({s['steps']} steps, {s['optimizer']})", []).append(r)
    return groups


def _add_bench_commands(app: Any, console: Any, err: Any) -> None:
    import typer

    def csv_list(value: str | None, cast: Any = str) -> tuple[Any, ...] | None:
        if value is None:
            return None
        items = tuple(cast(v.strip()) for v in value.split(",") if v.strip())
        if not items:
            raise typer.BadParameter("expected a comma-separated list")
        return items

    @app.command("bench")
    def bench_command(
        preset: Annotated[str, typer.Option("--preset", "-p", help="A preset study (see --list-presets).")] = "default",
        task: Annotated[
            str | None, typer.Option(help="Run one custom study on this task instead of the preset's.")
        ] = None,
        model: Annotated[
            str | None, typer.Option(help="Model of the custom study: mlp, cnn, resnet, vit, gpt.")
        ] = None,
        norms: Annotated[str | None, typer.Option(help="Comma-separated norm names ('none' for no norm).")] = None,
        acts: Annotated[str | None, typer.Option(help="Comma-separated activation names.")] = None,
        lrs: Annotated[
            str | None, typer.Option(help="Comma-separated learning rates (several: a stability sweep).")
        ] = None,
        seeds: Annotated[str | None, typer.Option(help="A count (3) or a list of seeds (0,1,2).")] = None,
        steps: Annotated[int | None, typer.Option(help="Optimizer steps per trial.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Mini-batch size.")] = None,
        optimizer: Annotated[str | None, typer.Option(help="adamw or sgd (momentum 0.9).")] = None,
        device: Annotated[str | None, typer.Option(help="Torch device for the trials (cpu, cuda, ...).")] = None,
        placement: Annotated[
            str | None,
            typer.Option(
                help="gpt/vit: comma-separated norm placements (pre, post, peri, deepnorm, ...).",
                rich_help_panel="Transformers",
            ),
        ] = None,
        attention: Annotated[
            str | None,
            typer.Option(
                help="gpt/vit: comma-separated attention normalizers (softmax, sigmoid, qk_norm, ...).",
                rich_help_panel="Transformers",
            ),
        ] = None,
        depth: Annotated[
            str | None, typer.Option(help="Comma-separated model depths (blocks).", rich_help_panel="Transformers")
        ] = None,
        positions: Annotated[
            str | None,
            typer.Option(
                help="gpt: comma-separated position schemes (learned, rope, none).", rich_help_panel="Transformers"
            ),
        ] = None,
        warmup: Annotated[
            float | None, typer.Option(help="Linear warm-up as a fraction of the steps (default 0.05; 0: none).")
        ] = None,
        eval_context: Annotated[
            int | None,
            typer.Option(help="Text tasks: also evaluate at this longer context (needs rope/none positions)."),
        ] = None,
        db: Annotated[Path, typer.Option(help="SQLite results database (runs resume from it).")] = Path(
            "normact-bench.db"
        ),
        out: Annotated[Path, typer.Option(help="Folder for the PNG plots.")] = Path("normact-bench"),
        executor: Annotated[str, typer.Option(help="local (worker processes), inline or ray.")] = "local",
        address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
        workers: Annotated[int | None, typer.Option(help="Local worker processes (default: CPU cores).")] = None,
        plots: Annotated[
            bool, typer.Option("--plots/--no-plots", help="Write learning-curve and leaderboard PNGs.")
        ] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
        list_presets: Annotated[bool, typer.Option("--list-presets", help="List the presets and exit.")] = False,
    ) -> None:
        """Train small models over a grid of norms, activations, learning rates and seeds; print the leaderboard."""
        from normact.bench.report import init_signal, leaderboard, lr_stability, plot
        from normact.bench.run import execute, pending_specs
        from normact.bench.store import ResultStore
        from normact.bench.study import PRESETS, Study, customize, grid
        from normact.bench.tasks import DataUnavailableError, is_text_task, load_task

        if list_presets:
            for name, studies in PRESETS.items():
                n = sum(len(s.specs()) for s in studies)
                console.print(f"[bold]{name}[/] ({n} trials)")
                for s in studies:
                    console.print(
                        f"  {s.name}: {s.task}/{s.model}, norms {','.join(s.norms)}, acts {','.join(s.acts)}, "
                        f"lrs {','.join(f'{x:g}' for x in s.lrs)}, {len(s.seeds)} seeds. {s.claim}"
                    )
            return
        try:
            seed_list = None
            if seeds is not None:
                seed_list = tuple(range(int(seeds))) if seeds.strip().isdigit() else csv_list(seeds, int)
            overrides = dict(
                norms=csv_list(norms),
                acts=csv_list(acts),
                lrs=csv_list(lrs, float),
                seeds=seed_list,
                steps=steps,
                batch_size=batch_size,
                optimizer=optimizer,
                device=device,
                warmup=warmup,
                eval_context=eval_context,
            )
            variant_lists = dict(
                placement=csv_list(placement),
                attention=csv_list(attention),
                depth=csv_list(depth, int),
                positions=csv_list(positions),
            )
            if any(variant_lists.values()):
                overrides["variants"] = grid(**variant_lists)
            if task is not None or model is not None:
                task_name = task or "mnist"
                text = is_text_task(task_name)
                base = Study(
                    "custom",
                    task_name,
                    model or ("gpt" if text else "cnn"),
                    norms=("none", "layernorm", "rmsnorm", "dyt")
                    if text
                    else ("none", "batchnorm", "layernorm", "dyt"),
                    acts=("gelu",) if text else ("relu",),
                    lrs=(3e-3,),
                    batch_size=32 if text else 64,
                )
                studies = customize((base,), **overrides)
            else:
                if preset not in PRESETS:
                    raise ValueError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")
                studies = customize(PRESETS[preset], **overrides)
            if executor not in ("local", "inline", "ray"):
                raise ValueError(f"executor must be 'local', 'inline' or 'ray', got {executor!r}")
            with ResultStore(db) as store:
                all_specs, todo = pending_specs(studies, store)
                for task_name in sorted({s.task for s in todo}):
                    load_task(task_name)  # a missing data package fails here, clearly, before any worker starts
                console.print(
                    f"[bold]normact bench[/] {preset if task is None and model is None else 'custom'}: "
                    f"{len(all_specs)} trials, {len(all_specs) - len(todo)} already in {db}, running {len(todo)} "
                    f"({executor})"
                )
                execute(todo, store, executor=executor, workers=workers, address=address, show_progress=progress)
                results = store.results(s.key() for s in all_specs)
        except (ValueError, DataUnavailableError, RuntimeError) as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from e
        by_study: dict[str, list[dict[str, Any]]] = {}
        keys = {study.name: {s.key() for s in study.specs()} for study in studies}
        for study in studies:
            by_study[study.name] = [r for r in results if r["key"] in keys[study.name]]
            _print_leaderboard(console, f"{study.name}: {study.task}/{study.model}", leaderboard(by_study[study.name]))
            _print_stability(console, lr_stability(by_study[study.name]))
            _print_init_signal(console, init_signal(by_study[study.name]))
            _print_init_signal(console, init_signal(by_study[study.name], "final_signal"), "after training")
        if plots:
            written = [p for name, rs in by_study.items() if rs for p in plot(rs, out, name)]
            console.print("plots: " + ", ".join(str(p) for p in written))

    @app.command("results")
    def results_command(
        db: Annotated[Path, typer.Option(help="SQLite results database.")] = Path("normact-bench.db"),
        as_json: Annotated[bool, typer.Option("--json", help="Every stored trial as JSON.")] = False,
        as_csv: Annotated[bool, typer.Option("--csv", help="One CSV row per stored trial.")] = False,
        as_markdown: Annotated[bool, typer.Option("--markdown", help="Leaderboards as Markdown tables.")] = False,
    ) -> None:
        """Print the stored results as leaderboards, or export them (--json, --csv)."""
        from normact.bench.report import init_signal, leaderboard, leaderboard_markdown, lr_stability
        from normact.bench.store import ResultStore

        if not db.exists():
            err.print(f"[bold red]error:[/] no results database at {db} (run normact bench first, or pass --db)")
            raise typer.Exit(2)
        with ResultStore(db) as store:
            results = store.results()
        if as_json:
            print(json.dumps(results, indent=2))
            return
        if as_csv:
            import csv

            fields = [
                "key",
                "label",
                "task",
                "model",
                "norm",
                "act",
                "lr",
                "seed",
                "steps",
                "optimizer",
                "status",
                "test_accuracy",
                "test_loss",
                "val_loss",
                "bpc",
                "final_train_loss",
                "initial_loss",
                "wall_time_s",
                "train_time_s",
                "throughput",
                "throughput_unit",
                "peak_memory_mb",
                "params",
                "init_var_growth",
                "init_final_var",
            ]
            writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for r in results:
                sig = r.get("init_signal") or {}
                writer.writerow(
                    {
                        **r["spec"],
                        **{k: v for k, v in r.items() if k != "spec"},
                        "init_var_growth": sig.get("var_growth"),
                        "init_final_var": sig.get("final_var"),
                    }
                )
            return
        if as_markdown:
            print("\n".join(leaderboard_markdown(rs, title) for title, rs in _study_groups(results).items()), end="")
            return
        console.print(f"{len(results)} trials in {db}")
        for title, rs in _study_groups(results).items():
            _print_leaderboard(console, title, leaderboard(rs))
            _print_stability(console, lr_stability(rs))
            _print_init_signal(console, init_signal(rs))


def _add_probe_command(app: Any, console: Any, err: Any) -> None:
    import typer

    @app.command("probe")
    def probe_command(
        model: Annotated[
            str,
            typer.Argument(
                help="resnet, gpt (normact's networks at init), mobilenet_v2, minilm, smollm2 (pretrained, offline "
                "packages) or a Hugging Face model folder."
            ),
        ],
        data: Annotated[
            str | None,
            typer.Option(help="random, images, text, a .txt file or a .pt tensor file (default: the model's own)."),
        ] = None,
        out: Annotated[
            Path | None, typer.Option(help="Folder for report.json and the PNG plots (default: print only).")
        ] = None,
        batches: Annotated[int, typer.Option(help="Number of batches.")] = 4,
        batch_size: Annotated[int, typer.Option(help="Inputs per batch.")] = 8,
        seq_len: Annotated[int, typer.Option(help="Tokens per text input.")] = 64,
        norm: Annotated[str, typer.Option(help="Norm of normact's networks ('none' for none).")] = "batchnorm",
        act: Annotated[str, typer.Option(help="Activation of normact's networks.")] = "relu",
        depth: Annotated[int | None, typer.Option(help="Depth of normact's networks (resnet: 6n + 2).")] = None,
        modules: Annotated[
            str | None,
            typer.Option(help="Comma-separated selectors: kinds (norm, act, attention, block), layer names, patterns."),
        ] = None,
        stats: Annotated[
            str | None, typer.Option(help="Comma-separated statistics, or 'all' (default: all but cov).")
        ] = None,
        sample: Annotated[int | None, typer.Option(help="Read one sample in K of each batch (1: all).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the data and of normact's networks.")] = 0,
        device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
        rows: Annotated[int, typer.Option(help="Table rows to print (0: all).")] = 40,
        attention: Annotated[
            bool,
            typer.Option(
                "--attention/--no-attention",
                help="Hugging Face models: eager attention returning weights, for the per-head entropy.",
            ),
        ] = True,
        plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots into --out.")] = True,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    ) -> None:
        """Probe a model's activations over a few batches: table, massive activations, signal propagation."""
        import torch
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        import normact
        from normact.zoo import ModelUnavailableError, load_model

        try:
            options = {} if depth is None else {"depth": depth}
            with console.status(f"loading {escape(model)}"):
                zm = load_model(model, norm=norm, act=act, seed=seed, **options)
            zm.model.to(device)
            run_kwargs = {"output_attentions": True} if attention and zm.expose_attention() else {}
            source = zm.batches(data, batch_size=batch_size, num_batches=batches, seq_len=seq_len, seed=seed)
            kwargs: dict[str, Any] = {}
            if sample is not None:
                kwargs["sample"] = sample
            selectors = [m.strip() for m in modules.split(",") if m.strip()] if modules else None
            stat_set = None if stats is None else ("all" if stats == "all" else [s.strip() for s in stats.split(",")])
            probe = normact.probe(zm.model, selectors, stat_set, **kwargs)
        except (ValueError, TypeError, ModelUnavailableError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from e
        console.print(f"[bold]normact probe[/] {escape(zm.description)}: {batches} batches of {batch_size}")
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not progress,
        )
        try:
            with bar, probe, torch.no_grad():
                task = bar.add_task("batches", total=batches)
                for batch in source:
                    moved = {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else batch.to(device)
                    zm.run(moved, **run_kwargs)
                    bar.advance(task)
        except (ValueError, TypeError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from e
        report = probe.report()
        if not len(report):
            err.print("[bold red]error:[/] no module matched the selection")
            raise typer.Exit(2)
        _print_probe_report(console, report, rows)
        if out is not None:
            report.to_json(out / "report.json")
            written = [out / "report.json"]
            if plots:
                written += report.plot(out)
            console.print("wrote: " + ", ".join(str(p) for p in written))


def _print_probe_report(console: Any, report: Any, rows: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(report.table(max_rows=rows or None))
    massive = report.massive_activations()
    if massive:
        dims = sorted({m["dim"] for m in massive})
        top = max(massive, key=lambda m: abs(m["value"]))
        console.print(
            f"[bold]massive activations[/]: {len(massive)} in {len({m['module'] for m in massive})} modules, "
            f"dims {dims[:8]}; largest {top['value']:.4g} ({top['ratio']:.3g}x the median) at token {top['token']}, "
            f"dim {top['dim']} in {escape(top['module'])}"
        )
    else:
        console.print("[bold]massive activations[/]: none (|x| > 100 and > 1000x the layer median)")
    sp = report.signal_propagation()
    if sp:
        sig = Table(title="signal propagation (residual blocks)")
        for col in ("block", "avg sq mean", "avg var", "branch var"):
            sig.add_column(col, justify="left" if col == "block" else "right")
        for r in sp:
            branch = r["branch_var"]
            sig.add_row(
                escape(r["module"]),
                f"{r['avg_sq_mean']:.3g}",
                f"{r['avg_var']:.3g}",
                "" if branch is None else f"{branch:.3g}",
            )
        console.print(sig)


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
