"""Pictures of a plan: the numbers drawn are the plan's, the SVG is deterministic, the page renders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from planner.charts.context import context_chart, context_curve
from planner.charts.memory import memory_chart
from planner.charts.page import plan_page
from planner.charts.sweep import sweep_chart
from planner.config.compose import make_plan

SVG = "{http://www.w3.org/2000/svg}"
CASES = {
    "single_gpu": ("gpt-oss-20b", "h100_80gb", []),
    "pipeline": ("llama-3.1-70b", "a100_40gb", ["hardware.count=4", "policy.context_tokens=8192"]),
    "tensor_parallel": (
        "llama-3.1-70b",
        "h100_80gb",
        ["hardware.count=4", "policy.strategy=tensor_parallel", "policy.context_tokens=8192"],
    ),
    "offload": ("llama-3.1-8b", "t4", ["policy.allow_cpu_offload=true", "policy.context_tokens=4096"]),
    "does_not_fit": ("llama-3.1-70b", "t4", ["policy.context_tokens=4096"]),
}


@pytest.fixture(scope="module")
def plans():
    return {name: make_plan(model, hw, overrides) for name, (model, hw, overrides) in CASES.items()}


def segments(svg_text: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(svg_text).iter(f"{SVG}rect") if e.get("data-term")]


@pytest.mark.parametrize("case", list(CASES))
def test_each_bar_segment_is_the_plans_own_number(plans, case):
    plan = plans[case]
    assert plan.strategy == case or case == "does_not_fit", plan.strategy
    data = plan.to_dict()
    svg = memory_chart(data)
    root = ET.fromstring(svg)  # parses: well-formed SVG
    drawn = {(e.get("data-device"), e.get("data-term")): int(e.get("data-bytes")) for e in segments(svg)}
    expected = {
        (str(row["device"]), term): int(row[term])
        for row in data["budget"]
        for term in ("weights", "kv_cache", "state", "activations", "overhead")
        if row[term]
    }
    assert drawn == expected
    usable = {e.get("data-device"): int(e.get("data-usable")) for e in root.iter(f"{SVG}line") if e.get("data-usable")}
    assert usable == {str(row["device"]): int(row["usable"]) for row in data["budget"]}
    page = plan_page(data, [("Memory per device", svg)])
    HTMLParser().feed(page)  # the page parses, holds the chart as drawn and the verdict
    assert svg in page and ("FITS" if plan.fits else "DOES NOT FIT") in page


def test_a_misfit_marks_the_binding_device_and_term(plans):
    plan = plans["does_not_fit"]
    assert not plan.fits
    marked = [e for e in segments(memory_chart(plan.to_dict())) if e.get("stroke")]
    assert [(e.get("data-device"), e.get("data-term")) for e in marked] == [
        (str(plan.binding["device"]), plan.binding["term"])
    ]


def test_charts_are_deterministic(plans):
    data = plans["pipeline"].to_dict()
    assert memory_chart(data) == memory_chart(json.loads(json.dumps(data)))
    assert plan_page(data, [("m", memory_chart(data))]) == plan_page(data, [("m", memory_chart(data))])


def test_a_vllm_engine_block_adds_its_own_terms_against_its_budget(plans):
    data = plans["single_gpu"].to_dict()
    per_gpu = {
        "weights_bytes": 13 * 2**30,
        "non_torch_bytes": 2**29,
        "activation_peak_bytes": 2**30,
        "cudagraph_bytes": 2**29,
        "kv_cache_bytes": 50 * 2**30,
    }
    data["engine"] = {"name": "vllm", "gpu_memory_utilization": 0.9, "per_gpu": per_gpu}
    svg = memory_chart(data)
    drawn = {e.get("data-term"): int(e.get("data-bytes")) for e in segments(svg) if e.get("data-device") == "vllm"}
    assert drawn == per_gpu
    budget = [
        int(e.get("data-usable")) for e in ET.fromstring(svg).iter(f"{SVG}line") if e.get("data-device") == "vllm"
    ]
    assert budget == [int(data["hardware"]["devices"][0]["total_bytes"] * 0.9)]


def _replanner(model, hw, overrides):
    from planner.config.compose import compose
    from planner.config.gpu_speeds import with_published_speeds
    from planner.config.request import request_from_config
    from planner.hardware.tiers import resolve_hardware

    cfg = compose("plan", [f"model={model}", f"hardware={hw}", *overrides])
    request = request_from_config(cfg)
    return request.model, with_published_speeds(resolve_hardware(cfg.hardware, name=hw)), request.policy


def test_the_context_curve_is_the_planner_re_planned_at_each_point():
    from planner.planning import plan_model

    spec, hw, policy = _replanner("gpt-oss-20b", "l4", [])
    curve = context_curve(spec, hw, policy, plan_model, max_context=131072, planned=65536, windows=(128,))
    contexts = [p["context"] for p in curve["points"]]
    assert contexts == sorted(contexts) and 65536 in contexts and 128 in contexts and contexts[-1] == 131072
    point = next(p for p in curve["points"] if p["context"] == 65536)
    again = plan_model(spec, hw, replace(policy, context_tokens=65536, sessions=1), explain=False, speed=False)
    row = next(r for r in again.budget if str(r.device) == point["device"])
    assert (point["planned_bytes"], point["usable_bytes"], point["fits"]) == (row.planned, row.usable, again.fits)
    many = plan_model(spec, hw, replace(policy, context_tokens=65536, sessions=None), explain=False, speed=False)
    assert point["sessions_fit"] == (many.limits.sessions if many.fits else 0)
    # the KV cache never shrinks as the context grows (the total may: the planner picks smaller prefill chunks
    # where that is what fits), and the drawn points carry exactly these numbers
    kv = [p["kv_bytes"] for p in curve["points"]]
    assert kv == sorted(kv) and kv[0] < kv[-1]
    planned = [p["planned_bytes"] for p in curve["points"]]
    svg = context_chart(curve, "t")
    circles = [e for e in ET.fromstring(svg).iter(f"{SVG}circle")]
    assert [int(c.get("data-planned-bytes")) for c in circles] == planned
    assert [int(e.get("data-window")) for e in ET.fromstring(svg).iter(f"{SVG}line") if e.get("data-window")] == [128]


@pytest.mark.slow
def test_the_sweep_matrix_has_one_cell_per_job_with_its_verdict_and_context():
    jobs = []
    for model in ("gpt2", "llama-3.1-8b", "llama-3.1-70b"):
        for hw in ("t4", "a100_80gb", "h100_80gb"):
            jobs.append(({"model": model, "hardware": hw}, make_plan(model, hw).to_dict()))
    svg = sweep_chart(jobs)
    cells = [e for e in ET.fromstring(svg).iter(f"{SVG}rect") if e.get("data-row")]
    assert len(cells) == 9
    by_cell = {(c.get("data-row"), c.get("data-col")): c for c in cells}
    for overrides, plan in jobs:
        cell = by_cell[(overrides["model"], overrides["hardware"])]
        assert cell.get("data-fits") == str(plan["fits"]).lower()
        assert int(cell.get("data-context")) == (plan["limits"]["context_tokens"] if plan["fits"] else 0)
    assert {c.get("data-fits") for c in cells} == {"true", "false"}


def test_charts_true_writes_svgs_and_a_page_beside_each_plan_file(tmp_path):
    out = tmp_path / "mine.json"
    run = subprocess.run(
        [sys.executable, "-m", "runner", "plan", "model=gpt2", "hardware=t4", "charts=true", f"out={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for name in ("mine.memory.svg", "mine.context.svg", "mine.html"):
        assert (tmp_path / name).stat().st_size > 0
    run_dirs = list((tmp_path / "outputs" / "plan").iterdir())
    assert len(run_dirs) == 1
    assert {p.name for p in run_dirs[0].iterdir()} >= {"plan.json", "plan.memory.svg", "plan.context.svg", "plan.html"}
    ET.fromstring((tmp_path / "mine.memory.svg").read_text())
    assert "FITS" in (tmp_path / "mine.html").read_text()


def test_a_plan_without_charts_never_imports_the_charts():
    code = (
        "import sys, runner.cli\n"
        "sys.argv = ['shardwise', 'plan', 'model=gpt2', 'hardware=t4', 'json=true']\n"
        "try:\n    runner.cli.main()\nexcept SystemExit:\n    pass\n"
        "print('CHARTS' if any(m.startswith('planner.charts') for m in sys.modules) else 'NONE', file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stderr.strip().splitlines()[-1] == "NONE", run.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const seen = [...document.querySelectorAll('svg')].map(s => {
    const box = s.getBoundingClientRect(), style = getComputedStyle(s);
    return box.width > 100 && box.height > 100 && style.visibility === 'visible' && style.display !== 'none';
  });
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({errors: window.__errors, svgs: seen});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's chromium; none to install)")
def test_plan_html_renders_in_headless_chromium_without_errors_and_every_chart_visible(plans, tmp_path):
    data = plans["does_not_fit"].to_dict()
    page = plan_page(data, [("Memory per device", memory_chart(data))])
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</head>", PROBE + "</head>", 1))
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            probe_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    start = run.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    result = json.loads(run.stdout[start : run.stdout.index("</pre>", start)].replace("&quot;", '"'))
    assert result["errors"] == []
    assert result["svgs"] == [True]
    assert "DOES NOT FIT" in run.stdout


def test_page_is_self_contained(plans):
    data = plans["single_gpu"].to_dict()
    page = plan_page(data, [("Memory per device", memory_chart(data))])
    for needle in ("<script", "http://", "https://", "src="):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
