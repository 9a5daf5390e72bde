"""Render a Plan for people: memory bars per device, decisions with reasons, the verdict."""

from __future__ import annotations

from planner.plan import Plan
from planner.units import GIB

BAR_WIDTH = 40
SEGMENTS = (
    ("weights", "█", "cyan"),
    ("kv_cache", "▓", "magenta"),
    ("activations", "▒", "yellow"),
    ("overhead", "░", "white"),
)


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def _bar(row, width: int = BAR_WIDTH) -> str:
    scale = max(row.usable, row.planned, 1)
    cells, used = [], 0
    for attr, char, color in SEGMENTS:
        cells_here = round(getattr(row, attr) / scale * width)
        cells_here = min(cells_here, width - used)
        width_here = cells_here
        if width_here:
            cells.append(f"[{color}]{char * width_here}[/{color}]")
            used += width_here
    cells.append("·" * (width - used))
    return "".join(cells)


def performance_line(perf: dict) -> str:
    """One line of predicted speed, or why there is none; "" for a plan without a performance block."""
    if not perf:
        return ""
    if not perf.get("available"):
        return f"speed: not predicted ({perf.get('reason', 'unknown')})"
    return (
        f"speed (predicted): {perf['decode_tokens_per_s']:,.1f} tokens/s per sequence, "
        f"{perf['aggregate_tokens_per_s']:,.1f} over {perf['sessions']} session(s); first token in "
        f"{perf['ttft_s']:,.2f} s at {perf['prompt_tokens']:,} tokens, {perf['ttft_full_s']:,.1f} s at "
        f"{perf['context_tokens']:,}; {perf['binding']}"
    )


def render(plan: Plan, console=None, plan_path: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        probe = Console()
        console = Console(highlight=False, width=max(probe.width, 110) if not probe.is_terminal else probe.width)
    m, lim = plan.model, plan.limits
    quant = m.quantization
    quant_text = f"{quant.method} {'kept' if quant.kept else 'dequantized'}" if quant.method else "none"
    ckpt = f", checkpoint {m.checkpoint_bytes:,} B" if m.checkpoint_bytes else ""
    console.print(
        f"[bold]{m.name}[/bold] ({m.source}, {m.model_type}): {m.params_total:,} parameters, "
        f"{m.weight_bytes:,} B in memory ({_gib(m.weight_bytes)} GiB){ckpt}"
    )
    console.print(
        f"dtype {m.dtype}, quantization {quant_text}, attention {plan.attn_implementation}, KV {plan.kv_cache_dtype}"
    )
    hw = plan.hardware
    gpus = hw.get("devices", [])
    names: dict[str, int] = {}
    for gpu in gpus:
        names[gpu["name"]] = names.get(gpu["name"], 0) + 1
    hw_text = " + ".join(f"{count} x {name}" for name, count in names.items()) if gpus else "CPU only"
    console.print(
        f"hardware: {hw.get('source')} ({hw_text}, {hw.get('nodes', 1)} node(s), host RAM {_gib(hw.get('host_ram_bytes', 0))} GiB), fingerprint {hw.get('fingerprint')}"
    )
    shape = plan.strategy + (
        f" tp={plan.tp_size} pp={plan.pp_size} nodes={plan.nodes}" if plan.strategy == "tensor_parallel" else ""
    )
    console.print(f"strategy: [bold]{shape}[/bold]")
    console.print()

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    bar_width = max(10, min(BAR_WIDTH, console.width - 84))
    for col in ("device", "memory", "weights", "kv", "act", "overhead", "planned", "usable", "free", "layers"):
        table.add_column(
            col,
            justify="left" if col in ("device", "memory") else "right",
            no_wrap=True,
            min_width=bar_width if col == "memory" else None,
        )
    for row in plan.budget:
        label = f"GPU {row.device}" if row.device not in ("cpu", "disk") else row.device
        if plan.strategy == "tensor_parallel":
            label = f"each of {plan.tp_size} GPUs" + (f" on node {row.node}" if plan.nodes > 1 else "")
        elif plan.nodes > 1:
            label += f" (node {row.node})"
        layers = f"{row.layers[0]}-{row.layers[1]}" if row.layers else "-"
        free_style = "red" if row.free_after < 0 else "green"
        table.add_row(
            label,
            _bar(row, bar_width),
            _gib(row.weights),
            _gib(row.kv_cache),
            _gib(row.activations),
            _gib(row.overhead),
            _gib(row.planned),
            _gib(row.usable),
            f"[{free_style}]{_gib(row.free_after)}[/{free_style}]",
            layers,
        )
    console.print(table)
    console.print("memory in GiB; bar: █ weights ▓ KV cache ▒ activations ░ overhead · free (scaled to usable)")
    console.print()
    chunk = f", prefill in chunks of {lim.prefill_chunk_tokens}" if lim.prefill_chunk_tokens else ""
    console.print(
        f"limits: context {lim.context_tokens:,} tokens x {lim.sessions} session(s), max new tokens {lim.max_new_tokens:,}, "
        f"KV {lim.kv_bytes_per_token:,} B/token{chunk}"
    )
    line = performance_line(plan.performance)
    if line:
        console.print(line)
    console.print()
    decisions = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    decisions.add_column("decision")
    decisions.add_column("value")
    decisions.add_column("reason", overflow="fold")
    for d in plan.decisions:
        decisions.add_row(d.what, d.value, d.reason)
    console.print(decisions)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if plan.fallbacks:
        chain = " -> ".join(f"{f['model']}" + (" on CPU" if f["hardware"] == "cpu" else "") for f in plan.fallbacks)
        console.print(f"fallbacks: {chain}")
    console.print()
    if plan.fits:
        command = plan.launch.command
        if plan_path:
            command = command.replace("plan_file=plan.json", f"plan_file={plan_path}")
        console.print(
            f"[bold green]FITS[/bold green]: {plan.strategy} with {lim.context_tokens:,} tokens of context. Run it: {command}"
        )
    else:
        b = plan.binding
        console.print(
            f"[bold red]DOES NOT FIT[/bold red]: device {b.get('device')} needs {_gib(b.get('needed', 0))} GiB, "
            f"has {_gib(b.get('usable', 0))} GiB usable; {b.get('term')} binds."
        )
        for fix in b.get("fixes", []):
            console.print(f"  would fit with: {fix['text'] if isinstance(fix, dict) else fix}")
