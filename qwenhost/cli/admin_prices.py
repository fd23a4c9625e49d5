"""``qwenhost prices``: what each model costs per million tokens (tiered by prompt length where the provider
does that), and what a million tokens cost on your own hardware, measured from the ledger."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from qwenhost.cli.admin import (
    audit,
    err,
    fail,
    fmt_usd,
    new_table,
    open_gateway,
    parse_usd,
)
from qwenhost.gateway.widths import INT32_MAX, check_model_name

prices_app = typer.Typer(help="Set and list model prices (per million tokens) and local hardware costs.",
                         no_args_is_help=True)

NO_LOCAL_USAGE = "no local usage recorded yet; serve some requests first"


def _model_name(model: str) -> str:
    model = model.strip()
    try:
        check_model_name(model)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    return model


def _per_m(musd: int) -> str:
    from qwenhost.gateway.prices import micro_to_usd

    return fmt_usd(micro_to_usd(musd))


@prices_app.command("set")
def prices_set(
    model: str = typer.Argument(..., help="Model name as clients request it (e.g. qwen-plus)"),
    input_usd: str = typer.Option(..., "--input", metavar="USD", help="US dollars per million input tokens"),
    output_usd: str = typer.Option(..., "--output", metavar="USD", help="US dollars per million output tokens"),
    cached_usd: str | None = typer.Option(None, "--cached", metavar="USD",
                                          help="US dollars per million cached input tokens (default: the input price)"),
    up_to: int | None = typer.Option(None, "--up-to", metavar="TOKENS", min=1, max=INT32_MAX,
                                     help="This tier applies to prompts up to this many tokens "
                                          "(omit for the tier without an upper bound)"),
) -> None:
    """Set a model's price, or one tier of it (run once per tier)."""
    from qwenhost.gateway.audit import price_detail
    from qwenhost.gateway.prices import micro_to_usd

    model = _model_name(model)
    # Parsed here first so that a bad value names the option to fix; the price book stores the same values.
    amounts = {opt: parse_usd(v, opt) for opt, v in
               (("--input", input_usd), ("--output", output_usd), ("--cached", cached_usd)) if v is not None}
    with open_gateway() as gw:
        try:
            tier = gw.prices.set(model, input_usd=str(micro_to_usd(amounts["--input"])),
                                 output_usd=str(micro_to_usd(amounts["--output"])),
                                 cached_usd=None if cached_usd is None else str(micro_to_usd(amounts["--cached"])),
                                 up_to_tokens=up_to)
        except ValueError as exc:
            raise fail(str(exc)) from None
        audit(gw, "price.set", detail=price_detail(model, tier))
    span = f"prompts up to {up_to:,} tokens" if up_to is not None else "prompts of any length (no upper bound)"
    Console().print(f"{escape(model)}, {span}: input {_per_m(tier.input_musd)}, cached {_per_m(tier.cached_musd)}, "
                    f"output {_per_m(tier.output_musd)} per million tokens")
    if tier.cached_musd > tier.input_musd:  # allowed (it is the team's price book), but rarely meant
        err.print(f"[bold yellow]warning:[/bold yellow] the cached input price ({_per_m(tier.cached_musd)}) is above "
                  f"the input price ({_per_m(tier.input_musd)}): a prompt served from the cache will cost more")


@prices_app.command("remove")
def prices_remove(
    model: str = typer.Argument(..., help="Model whose prices (every tier) to remove"),
    local: bool = typer.Option(False, "--local",
                               help="Remove the hardware cost recorded with `prices local` instead of the tiers"),
) -> None:
    """Remove every price tier of a model (its requests then cost nothing in the ledger), or with --local
    its hardware cost (it then leaves the "what a million tokens cost you here" table)."""
    from qwenhost.gateway.audit import local_cost_remove_detail, price_remove_detail

    with open_gateway() as gw:
        if local:
            if not gw.prices.remove_local_cost(model):
                raise fail(f"no hardware cost is recorded for {model!r}; `qwenhost prices list` shows them")
            audit(gw, "price.local_remove", detail=local_cost_remove_detail(model))
        else:
            n = gw.prices.remove(model)
            if n == 0:
                raise fail(f"no prices are set for {model!r}; `qwenhost prices list` shows them")
            audit(gw, "price.remove", detail=price_remove_detail(model, n))
    Console().print(f"Removed the hardware cost of {escape(model)}." if local else
                    f"Removed {n} price tier{'s' if n != 1 else ''} of {escape(model)}.")


@prices_app.command("local")
def prices_local(
    model: str = typer.Argument(..., help="A model you serve yourself (as clients request it)"),
    per_hour: str = typer.Option(..., "--per-hour", metavar="USD",
                                 help="What the hardware costs per hour (rent, or power plus depreciation)"),
    compare_to: str | None = typer.Option(None, "--compare-to", metavar="CLOUD_MODEL",
                                          help="A priced cloud model to compare with in `prices list`"),
) -> None:
    """Record what running a local model costs per hour, to see what a million tokens cost you here."""
    from qwenhost.gateway.audit import local_cost_detail
    from qwenhost.gateway.prices import micro_to_usd

    model = _model_name(model)
    musd = parse_usd(per_hour, "--per-hour")
    compare_to = _model_name(compare_to) if compare_to is not None and compare_to.strip() else None
    with open_gateway() as gw:
        try:
            gw.prices.set_local_cost(model, str(micro_to_usd(musd)), compare_to)
        except ValueError as exc:
            raise fail(str(exc)) from None
        audit(gw, "price.local", detail=local_cost_detail(model, musd, compare_to))
        unpriced = compare_to is not None and compare_to not in gw.prices.all()
    Console().print(f"{escape(model)} runs on hardware costing {fmt_usd(micro_to_usd(musd))} per hour"
                    + (f", compared with {escape(compare_to)}" if compare_to else "") + ".")
    if unpriced:
        err.print(f"[yellow]note:[/yellow] {escape(str(compare_to))} has no price yet; set one with "
                  f"`qwenhost prices set {escape(str(compare_to))} --input USD --output USD`")


@prices_app.command("list")
def prices_list() -> None:
    """Show every model's price tiers and, for local models, what a million tokens cost you here."""
    from qwenhost.gateway.prices import micro_to_usd
    from qwenhost.gateway.usage import local_cost_reports

    with open_gateway() as gw:
        tiers = gw.prices.all()
        local = local_cost_reports(gw.db, gw.prices.local_costs())
    out = Console()
    if not tiers and not local:
        out.print("No prices set. Set one with `qwenhost prices set MODEL --input USD --output USD`.")
        return
    if tiers:
        table = new_table(out, "Model prices (US dollars per million tokens)")
        for col in ("model", "prompts up to", "input", "cached input", "output"):
            table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model",
                             overflow="fold")
        for model in sorted(tiers):
            for t in tiers[model]:
                # Past the last bounded tier the last tier applies (PriceBook.tier_for), so "longer" is honest.
                span = (f"{t.up_to_tokens:,} tokens" if t.up_to_tokens is not None
                        else "any length" if len(tiers[model]) == 1 else "longer")
                table.add_row(escape(model), span, _per_m(t.input_musd), _per_m(t.cached_musd), _per_m(t.output_musd))
        out.print(table)
    if not local:
        return
    table = new_table(out, "What a million tokens cost you here (throughput measured over busy time)")
    for col in ("local model", "hardware", "measured", "per M here", "vs cloud", "cloud per M (in / out)"):
        table.add_column(col, justify="right" if col in ("hardware", "per M here") else "left", overflow="fold")
    for report in local:
        lc, tp, here = report.cost, report.throughput, report.usd_per_million
        if here is not None:
            measured = f"{tp.tokens_per_second:,.1f} tokens/s ({tp.tokens:,} tokens in {tp.busy_seconds:,.1f} s busy)"
        else:  # rows with no latency (e.g. every request failed at once) give tokens but no time to divide by
            measured = NO_LOCAL_USAGE if tp.tokens == 0 else "no busy time recorded yet; serve some requests first"
        cloud_price = "-"
        if lc.compare_to:
            cloud = tiers.get(lc.compare_to)
            cloud_price = (f"{_per_m(cloud[0].input_musd)} / {_per_m(cloud[0].output_musd)}" if cloud
                           else "no price set")
        table.add_row(escape(lc.model), f"{fmt_usd(micro_to_usd(lc.hardware_musd_per_hour))}/h", measured,
                      fmt_usd(here) if here is not None else "-", escape(lc.compare_to or "-"), cloud_price)
    out.print(table)
