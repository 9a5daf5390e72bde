"""Per-device memory chart: one stacked bar per device of a plan, drawn from plan.json's numbers.

Each bar stacks the plan's terms (weights, KV cache, state, activations, overhead) on the device's
scale, with its usable line (free memory less headroom), its free memory, and the layer range it
holds; a plan that does not fit marks the binding device and term. A vLLM plan (an `engine` block
with `per_gpu`) adds one bar per GPU in vLLM's own terms against its utilization line. Every
drawn segment carries `data-term` and `data-bytes`, so tests read the numbers back.
"""

from __future__ import annotations

from planner.charts.svg import GRID, TERM_COLOURS, TEXT, USABLE, Svg, legend, nice_step, num
from planner.units import GIB

TERMS = (
    ("weights", "weights"),
    ("kv_cache", "KV cache"),
    ("state", "state"),
    ("activations", "activations"),
    ("overhead", "overhead"),
)
VLLM_TERMS = (
    ("weights_bytes", "weights", "weights"),
    ("non_torch_bytes", "non_torch", "non-torch"),
    ("activation_peak_bytes", "activation_peak", "activation peak"),
    ("kv_cache_bytes", "kv_cache", "KV cache"),
    ("cudagraph_bytes", "cudagraph", "CUDA graphs"),
)
WIDTH, LEFT, RIGHT, ROW, BAR = 820, 150, 170, 40, 22


def device_label(plan: dict, row: dict) -> str:
    device = str(row["device"])
    if device in ("cpu", "disk"):
        label = device.upper() if device == "cpu" else "disk"
    elif plan.get("strategy") == "tensor_parallel":
        label = f"each of {plan.get('tp_size', 1)} GPUs"
    else:
        label = f"GPU {device}"
    if int(plan.get("nodes") or 1) > 1:
        label += f" (node {row.get('node', 0)})"
    return label


def _free_bytes(plan: dict, row: dict) -> int | None:
    """The device's free memory as the plan saw it (GPUs from the hardware block, the CPU from host RAM)."""
    device = str(row["device"])
    if device.isdigit():
        for d in plan.get("hardware", {}).get("devices", []):
            if str(d.get("id")) == device and d.get("node", 0) == row.get("node", 0):
                return int(d.get("free_bytes", 0))
        return None
    if device == "cpu":
        return int(plan.get("hardware", {}).get("host_ram_bytes") or 0) or None
    return None


def _vllm_rows(plan: dict) -> list[dict]:
    engine = plan.get("engine") or {}
    per_gpu = engine.get("per_gpu")
    if engine.get("name") != "vllm" or not isinstance(per_gpu, dict):
        return []
    devices = plan.get("hardware", {}).get("devices", [])
    total = int(devices[0]["total_bytes"]) if devices else 0
    budget = int(total * float(engine.get("gpu_memory_utilization") or 0))
    return [{"per_gpu": per_gpu, "budget": budget, "total": total}]


def memory_chart(plan: dict) -> str:
    """The SVG text of the per-device chart for a plan dict (Plan.to_dict())."""
    rows = list(plan.get("budget") or [])
    vllm = _vllm_rows(plan)
    binding = plan.get("binding") or {}
    scale_bytes = 1
    for row in rows:
        free = _free_bytes(plan, row) or 0
        scale_bytes = max(scale_bytes, int(row["planned"]), int(row["usable"]), free)
    for v in vllm:
        scale_bytes = max(scale_bytes, v["total"], sum(int(v["per_gpu"].get(k) or 0) for k, _, _ in VLLM_TERMS))
    n_bars = len(rows) + len(vllm)
    height = 110 + ROW * max(n_bars, 1) + 40
    verdict = "FITS" if plan.get("fits") else "DOES NOT FIT"
    model = plan.get("model", {}).get("name", "")
    title = f"{model}: memory per device ({verdict})"
    svg = Svg(WIDTH, height, title, "memory")
    svg.label(16, 24, title, size=15, weight="bold")
    svg.label(
        16,
        44,
        f"strategy {plan.get('strategy')}, {plan.get('limits', {}).get('context_tokens', 0):,} tokens x "
        f"{plan.get('limits', {}).get('sessions', 1)} session(s)",
        size=12,
    )
    plot_w = WIDTH - LEFT - RIGHT
    top = 70

    def x_of(n_bytes: float) -> float:
        return LEFT + plot_w * n_bytes / scale_bytes

    step = nice_step(scale_bytes / GIB)
    tick = 0.0
    axis_y = top + ROW * max(n_bars, 1) + 4
    while tick * GIB <= scale_bytes * 1.0001:
        x = x_of(tick * GIB)
        svg.line(x, top - 6, x, axis_y, GRID)
        svg.label(x, axis_y + 16, num(tick), size=11, anchor="middle")
        tick += step
    svg.label(LEFT + plot_w / 2, axis_y + 32, "GiB", size=12, anchor="middle")

    for i, row in enumerate(rows):
        y = top + i * ROW
        device = str(row["device"])
        svg.label(LEFT - 8, y + BAR - 6, device_label(plan, row), size=12, anchor="end")
        layers = row.get("layers") or ()
        if layers:
            svg.label(LEFT - 8, y + BAR + 7, f"layers {layers[0]}-{layers[1]}", size=10, anchor="end", fill="#555555")
        x = LEFT
        binds_here = not plan.get("fits") and str(binding.get("device")) == device
        for term, _ in TERMS:
            value = int(row.get(term) or 0)
            if not value:
                continue
            w = x_of(value) - LEFT
            marked = binds_here and binding.get("term") == term
            svg.rect(
                x,
                y,
                w,
                BAR,
                TERM_COLOURS[term],
                stroke="#000000" if marked else None,
                stroke_width=2.5 if marked else None,
                data_device=device,
                data_term=term,
                data_bytes=value,
            )
            x += w
        usable = int(row["usable"])
        ux = x_of(usable)
        svg.line(ux, y - 4, ux, y + BAR + 4, USABLE, width=2.5, data_device=device, data_usable=usable)
        free = _free_bytes(plan, row)
        if free:
            fx = x_of(free)
            svg.line(fx, y - 4, fx, y + BAR + 4, TEXT, width=1.5, dash="4 3", data_device=device, data_free=free)
        text = f"{int(row['planned']) / GIB:,.1f} of {usable / GIB:,.1f} GiB"
        # the numbers in a column of their own, right of the plot: never over a bar or a line
        svg.label(WIDTH - RIGHT + 12, y + BAR - 6, text, size=11, fill=USABLE if binds_here else TEXT)
        if binds_here:
            svg.label(WIDTH - RIGHT + 12, y + BAR + 8, f"{binding.get('term')} binds", size=11, fill=USABLE)

    for j, v in enumerate(vllm):
        y = top + (len(rows) + j) * ROW
        svg.label(LEFT - 8, y + BAR - 6, "vLLM, per GPU", size=12, anchor="end")
        x = LEFT
        for key, colour_key, _ in VLLM_TERMS:
            value = int(v["per_gpu"].get(key) or 0)
            if not value:
                continue
            w = x_of(value) - LEFT
            svg.rect(x, y, w, BAR, TERM_COLOURS[colour_key], data_device="vllm", data_term=key, data_bytes=value)
            x += w
        bx = x_of(v["budget"])
        svg.line(bx, y - 4, bx, y + BAR + 4, USABLE, width=2.5, dash="6 3", data_device="vllm", data_usable=v["budget"])

    items = [(TERM_COLOURS[t], label) for t, label in TERMS if any(int(r.get(t) or 0) for r in rows)]
    if vllm:
        items += [
            (TERM_COLOURS[c], label) for k, c, label in VLLM_TERMS[1:] if c not in ("kv_cache", "activation_peak")
        ]
    end = legend(svg, 16, height - 14, items, size=11)
    svg.line(end + 4, height - 18, end + 22, height - 18, USABLE, width=2.5)
    end = svg_label_after(svg, end + 26, height - 14, "usable")
    svg.line(end + 8, height - 18, end + 26, height - 18, TEXT, width=1.5, dash="4 3")
    svg.label(end + 30, height - 14, "free", size=11)
    return svg.text()


def svg_label_after(svg: Svg, x: float, y: float, text: str) -> float:
    svg.label(x, y, text, size=11)
    return x + 7 * len(text)
