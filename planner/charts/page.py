"""plan.html: one self-contained page for sharing a plan (charts inline, verdict, decisions, fixes).

No script, no external stylesheet, font or image: the page is the plan's numbers and the SVG
charts, so it renders the same offline, in a ticket or a mail client's preview.
"""

from __future__ import annotations

from html import escape

from planner.units import GIB

STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 880px;
       line-height: 1.4; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.verdict { font-size: 18px; font-weight: bold; padding: 8px 12px; border-radius: 4px; display: inline-block; }
.fits { background: #dff0d8; color: #1e5e1e; } .misfit { background: #f4c7c3; color: #7a1b12; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
figure { margin: 12px 0; } figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 1px 4px; word-break: break-all; }
"""


def _gib(n) -> str:
    return f"{int(n or 0) / GIB:,.2f}"


def plan_page(plan: dict, charts: list[tuple[str, str]]) -> str:
    """The HTML text for a plan dict and its charts [(caption, svg text)]."""
    model = plan.get("model", {})
    limits = plan.get("limits", {})
    fits = bool(plan.get("fits"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>shardwise plan: {escape(str(model.get('name', '')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(str(model.get('name', '')))} on {escape(str(plan.get('hardware', {}).get('source', '')))}</h1>",
        f"<p>{int(model.get('params_total') or 0):,} parameters, {_gib(model.get('weight_bytes'))} GiB in memory as "
        f"{escape(str(model.get('dtype', '')))}; strategy {escape(str(plan.get('strategy', '')))}; "
        f"{int(limits.get('context_tokens') or 0):,} tokens x {int(limits.get('sessions') or 1)} session(s).</p>",
    ]
    if fits:
        parts.append(f'<p class="verdict fits" id="verdict">FITS: {escape(str(plan.get("strategy", "")))}</p>')
        command = (plan.get("launch") or {}).get("command")
        if command:
            parts.append(f"<p>Run it: <code>{escape(command)}</code></p>")
    else:
        binding = plan.get("binding") or {}
        parts.append(
            f'<p class="verdict misfit" id="verdict">DOES NOT FIT: device {escape(str(binding.get("device")))} needs '
            f"{_gib(binding.get('needed'))} GiB, has {_gib(binding.get('usable'))} GiB usable; "
            f"{escape(str(binding.get('term')))} binds</p>"
        )
        fixes = binding.get("fixes") or []
        if fixes:
            parts.append("<h2>What would make it fit</h2><ul>")
            for fix in fixes:
                text = fix.get("text") if isinstance(fix, dict) else str(fix)
                parts.append(f"<li>{escape(str(text))}</li>")
            parts.append("</ul>")
    for caption, svg in charts:
        parts.append(f"<h2>{escape(caption)}</h2><figure>{svg}</figure>")
    parts.append("<h2>Memory per device (GiB)</h2><table><tr>")
    parts += [
        f"<th>{h}</th>"
        for h in (
            "device",
            "weights",
            "KV",
            "state",
            "activations",
            "overhead",
            "planned",
            "usable",
            "free after",
            "layers",
        )
    ]
    parts.append("</tr>")
    for row in plan.get("budget") or []:
        layers = row.get("layers") or ()
        cells = (
            [escape(str(row["device"]))]
            + [
                _gib(row.get(k))
                for k in ("weights", "kv_cache", "state", "activations", "overhead", "planned", "usable", "free_after")
            ]
            + [f"{layers[0]}-{layers[1]}" if layers else "-"]
        )
        parts.append(
            "<tr>"
            + "".join(f'<td class="num">{c}</td>' if i else f"<td>{c}</td>" for i, c in enumerate(cells))
            + "</tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Decisions</h2><table><tr><th>decision</th><th>value</th><th>reason</th></tr>")
    for d in plan.get("decisions") or []:
        parts.append(
            f"<tr><td>{escape(str(d.get('what')))}</td><td>{escape(str(d.get('value')))}</td>"
            f"<td>{escape(str(d.get('reason')))}</td></tr>"
        )
    parts.append("</table>")
    warnings = plan.get("warnings") or []
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def sweep_page(svg: str, title: str = "shardwise plan sweep") -> str:
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
                f"<style>{STYLE}</style></head>",
                f"<body><h1>{escape(title)}</h1><figure>{svg}</figure></body></html>",
            ]
        )
        + "\n"
    )
