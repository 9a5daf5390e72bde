"""Render a Plan for people: memory bars per device, decisions with reasons, the verdict."""

from __future__ import annotations

from planner import terminal
from planner.planfile.plan import Plan
from planner.units import GIB

BAR_WIDTH = 40
SEGMENTS = (
    ("weights", "█", "cyan"),
    ("kv_cache", "▓", "magenta"),
    ("activations", "▒", "yellow"),
    ("overhead", "░", "white"),
)


_FREE = "·"
# an ASCII-only stdout (PYTHONIOENCODING=ascii, LANG=C) gets the same bars drawn with ASCII characters
_ASCII = str.maketrans({"█": "#", "▓": "=", "▒": "-", "░": ":", "·": "."})


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def _bar(row, width: int = BAR_WIDTH) -> str:
    scale = max(row.usable, row.planned, 1)
    cells, used = [], 0
    for attr, char, color in SEGMENTS:
        value = getattr(row, attr) + (row.state if attr == "kv_cache" else 0)  # fixed Mamba state beside the KV
        cells_here = round(value / scale * width)
        cells_here = min(cells_here, width - used)
        width_here = cells_here
        if width_here:
            cells.append(f"[{color}]{char * width_here}[/{color}]")
            used += width_here
    cells.append(_FREE * (width - used))
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


def vllm_lines(engine: dict) -> list[str]:
    """The vLLM view of a plan sized for vLLM, in the words of vLLM's own startup log; [] for other engines."""
    if (engine or {}).get("name") != "vllm":
        return []
    g = engine["per_gpu"]
    return [
        f"vLLM {engine['version']} (rules of {engine['rules']}), per GPU: budget {engine['gpu_memory_utilization']} x "
        f"{_gib(g['total_bytes'])} = {_gib(g['budget_bytes'])} GiB = weights {_gib(g['weights_bytes'])} + non-torch "
        f"{_gib(g['non_torch_bytes'])} + activation peak {_gib(g['activation_peak_bytes'])} + KV cache "
        f"{_gib(g['kv_cache_bytes'])} GiB; CUDA graphs ~{_gib(g['cudagraph_bytes'])} GiB outside the budget",
        f"vLLM would print: Available KV cache memory: {_gib(g['kv_cache_bytes'])} GiB; GPU KV cache size: "
        f"{engine['kv_cache_tokens']:,} tokens; Maximum concurrency for {engine['max_model_len']:,} tokens per "
        f"request: {engine['max_concurrency']:.2f}x",
        "vllm serve flags: " + " ".join(engine["flags"]),
    ]


def render(plan: Plan, console=None, plan_path: str | None = None) -> None:
    """The report, top to bottom: what is planned, memory per device, limits and speed, decisions, the verdict."""
    if console is None:
        console = terminal.console()
    chars = {} if (console.encoding or "").lower().startswith("utf") else _ASCII
    _print_header(plan, console)
    _print_memory_table(plan, console, chars)
    _print_limits(plan, console)
    _print_decisions(plan, console)
    _print_verdict(plan, console, plan_path)


def _print_header(plan: Plan, console) -> None:
    """Model, formats, hardware and strategy."""
    m = plan.model
    quant = m.quantization
    quant_text = f"{quant.method} {'kept' if quant.kept else 'dequantized'}" if quant.method else "none"
    if quant.on_load:
        quant_text = f"{quant.on_load} on load"
    ckpt = f", checkpoint {m.checkpoint_bytes:,} B" if m.checkpoint_bytes else ""
    console.print(
        f"[bold]{m.name}[/bold] ({m.source}, {m.model_type}): {m.params_total:,} parameters, "
        f"{m.weight_bytes:,} B in memory ({_gib(m.weight_bytes)} GiB){ckpt}"
    )
    console.print(
        f"dtype {m.dtype}, quantization {quant_text}, attention {plan.attn_implementation}, KV {plan.kv_cache_dtype}"
    )
    if m.trust_remote_code:
        console.print(
            "[bold yellow]remote code: yes[/bold yellow] (model.trust_remote_code=true): the model's own Python runs "
            "when it loads; chat, serve and launch refuse it unless their command line says trust_remote_code=true"
        )
    hw = plan.hardware
    gpus = hw.get("devices", [])
    names: dict[str, int] = {}
    for gpu in gpus:
        names[gpu["name"]] = names.get(gpu["name"], 0) + 1
    hw_text = " + ".join(f"{count} x {name}" for name, count in names.items()) if gpus else "CPU only"
    console.print(
        f"hardware: {hw.get('source')} ({hw_text}, {hw.get('nodes', 1)} node(s), host RAM "
        f"{_gib(hw.get('host_ram_bytes', 0))} GiB), fingerprint {hw.get('fingerprint')}"
    )
    shape = plan.strategy + (
        f" tp={plan.tp_size} pp={plan.pp_size} nodes={plan.nodes}" if plan.strategy == "tensor_parallel" else ""
    )
    console.print(f"strategy: [bold]{shape}[/bold]")
    console.print()


def _print_memory_table(plan: Plan, console, chars: dict) -> None:
    """One row per device: a bar and the terms (GiB) that make up its planned memory."""
    from rich.table import Table

    has_state = any(row.state for row in plan.budget)
    kv_col = "kv+st" if has_state else "kv"
    header = ("device", "memory", "wts", kv_col, "act", "ovh", "plan", "usable", "free", "layers")
    cells = []
    for row in plan.budget:
        label = f"GPU {row.device}" if row.device not in ("cpu", "disk") else row.device
        if plan.strategy == "tensor_parallel":
            label = f"each of {plan.tp_size} GPUs" + (f" on node {row.node}" if plan.nodes > 1 else "")
        elif plan.nodes > 1:
            label += f" (node {row.node})"
        layers = f"{row.layers[0]}-{row.layers[1]}" if row.layers else "-"
        numbers = (row.weights, row.kv_cache + row.state, row.activations, row.overhead, row.planned, row.usable)
        cells.append((row, [label, "", *(_gib(n) for n in numbers), _gib(row.free_after), layers]))
    # the bar takes what the other columns leave of the width (two spaces between columns), 4 to 40 cells
    others = sum(max([len(h), *(len(texts[i]) for _, texts in cells)]) for i, h in enumerate(header) if i != 1)
    bar_width = max(4, min(BAR_WIDTH, console.width - others - 2 * (len(header) - 1)))
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in header:
        table.add_column(
            col,
            justify="left" if col in ("device", "memory") else "right",
            no_wrap=True,
            min_width=bar_width if col == "memory" else None,
        )
    for row, (label, _, *numbers, free, layers) in cells:
        free_style = "red" if row.free_after < 0 else "green"
        table.add_row(
            label, _bar(row, bar_width).translate(chars), *numbers, f"[{free_style}]{free}[/{free_style}]", layers
        )
    console.print(table)
    kv_text = f"{kv_col} KV cache" + (" + fixed Mamba/linear-attention state" if has_state else "")
    console.print(
        f"GiB. wts weights, {kv_text}, act activations, ovh overhead (CUDA context + workspaces + fragmentation), "
        f"plan = their sum, usable = free memory - headroom; bar {''.join(c for _, c, _ in SEGMENTS).translate(chars)} "
        f"in that order, {_FREE.translate(chars)} free"
    )


def _print_limits(plan: Plan, console) -> None:
    """Context, sessions and KV per token; predicted speed; vLLM's own numbers for a vLLM plan."""
    lim = plan.limits
    kv_total = sum(row.kv_cache for row in plan.budget)
    linear = lim.kv_bytes_per_token * lim.context_tokens * lim.sessions
    if plan.strategy == "tensor_parallel":
        kv_total *= max(plan.tp_size, 1)  # budget rows are per GPU
    if 0 < kv_total < linear:
        console.print(
            f"KV {kv_total / GIB:,.2f} GiB < KV B/token x context x sessions ({linear / GIB:,.2f} GiB): sliding-window "
            "and chunked layers keep at most their window, so only full-attention layers grow with the context"
        )
    console.print()
    chunk = f", prefill in chunks of {lim.prefill_chunk_tokens}" if lim.prefill_chunk_tokens else ""
    if lim.state_bytes_per_sequence:
        chunk += f", state {lim.state_bytes_per_sequence:,} B/sequence"
    console.print(
        f"limits: context {lim.context_tokens:,} tokens x {lim.sessions} session(s), max new tokens "
        f"{lim.max_new_tokens:,}, KV {lim.kv_bytes_per_token:,} B/token{chunk}"
    )
    line = performance_line(plan.performance)
    if line:
        console.print(line)
    if plan.performance.get("tpot_ms") and plan.performance.get("engine") == "vllm":
        perf = plan.performance
        console.print(
            f"vLLM speed (predicted): {perf['tpot_ms']:.1f} ms per output token and {perf['ttft_ms']:,.0f} ms to the "
            f"first token at {perf['sessions']} concurrent request(s) of {perf['prompt_tokens']:,} tokens in, "
            f"{perf['output_tokens']:,} out",
            markup=False,
        )
    for text in vllm_lines(plan.engine):
        console.print(text, markup=False, highlight=False)
    console.print()


def _print_decisions(plan: Plan, console) -> None:
    """Every automatic decision with its reason, then warnings, notes and the fallback chain."""
    from rich.table import Table

    decisions = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    decisions.add_column("decision")
    decisions.add_column("value")
    decisions.add_column("reason", overflow="fold")
    for d in plan.decisions:
        decisions.add_row(d.what, d.value, d.reason)
    console.print(decisions)
    informational = set(plan.hardware.get("notes") or ())  # what the probe saw (no GPU is normal): a note
    for warning in plan.warnings:
        if warning in informational:
            console.print(f"note: {warning}", markup=False)
        else:
            console.print(f"[yellow]warning:[/yellow] {warning}")
    if plan.fallbacks:
        chain = " -> ".join(f"{f['model']}" + (" on CPU" if f["hardware"] == "cpu" else "") for f in plan.fallbacks)
        console.print(f"fallbacks: {chain}")
    console.print()


def _print_verdict(plan: Plan, console, plan_path: str | None) -> None:
    """FITS and the command to run it, or DOES NOT FIT with what binds and the fixes that would fit."""
    lim = plan.limits
    if plan.fits:
        command = plan.launch.command
        if plan_path:
            from planner.config.quoting import shell_override

            command = command.replace("plan_file=plan.json", shell_override("plan_file", str(plan_path)))
        console.print(
            f"[bold green]FITS[/bold green]: {plan.strategy} with {lim.context_tokens:,} tokens of context. Run it:"
        )
        # its own line, never wrapped or marked up: copied into a shell as it is
        console.print(command, soft_wrap=True, markup=False, highlight=False)
    else:
        b = plan.binding
        tried = ""
        if b.get("tried"):  # what was laid out, and how much it needed together: not just the worst device
            tried = (
                f"tried {b['tried']}: needs {_gib(b.get('needed_total', 0))} GiB, has "
                f"{_gib(b.get('usable_total', 0))} GiB usable; "
            )
        if b.get("refusal"):  # a vLLM plan: vLLM's own words for where its startup stops
            console.print(
                f"[bold red]DOES NOT FIT[/bold red]: vLLM would not start on GPU {b.get('device')} "
                f"({b.get('term')} binds): ",
                end="",
            )
            console.print(b["refusal"], markup=False, highlight=False)
        else:
            console.print(
                f"[bold red]DOES NOT FIT[/bold red]: {tried}device {b.get('device')} needs "
                f"{_gib(b.get('needed', 0))} GiB, has {_gib(b.get('usable', 0))} GiB usable; {b.get('term')} binds.",
                markup=True,
            )
        fixes = b.get("fixes", [])
        for fix in fixes:
            console.print(f"  would fit with: {fix['text'] if isinstance(fix, dict) else fix}", markup=False)
        if not fixes:
            console.print(
                "  nothing here would fit: no shorter context, fewer sessions, lower dtype, quantization, more GPUs "
                "of this kind or offload that shardwise tried makes it fit; choose a smaller model (model=auto)"
            )
