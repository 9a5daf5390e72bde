"""Planned against measured GPU memory: random-weight models built on the GPU, a prefill and a few decode steps.

    python benchmarks/gpu_memory_check.py --export        # here: write benchmarks/data/profiles.json
    python benchmarks/gpu_memory_check.py --dry-run       # any machine: the plans it would check
    python benchmarks/gpu_memory_check.py --quick --out results.json   # on one CUDA GPU (~1-2 min)
    python benchmarks/gpu_memory_check.py                 # all single-GPU models, two contexts (~3-4 min)

For each model profile that fits one GPU: the plan comes from planner internals without Hydra
(profiles read from conf/ through planner.config, or from the JSON export when OmegaConf is
missing; the hardware from planner.hardware.probe (NVML) before CUDA starts, else the tier whose name
matches torch.cuda.get_device_name, else torch's own numbers), at a set context, one session.
Then the model is built from its architecture with random weights directly on the GPU (no
download), with the plan's dtype and attention implementation, and runs a prefill of
context - new_tokens tokens (in the plan's prefill chunks, if any) and `new_tokens` decode
steps with transformers' DynamicCache. gpt-oss is planned and built dequantized to bf16
(policy.quantization=none) in these rows: from_config cannot build MXFP4-packed experts.

Quantized rows (QUANT_CASES, also in --quick): a profile cut to its first few layers (every
per-layer list cut alike), planned with its quantization kept (gpt-oss: MXFP4, where this
machine can keep it; otherwise the plan says dequantized and that is what is measured) or
quantized on load (FP8), saved as a random-weight bf16 checkpoint and loaded with
`from_pretrained` and the quantization config the runner uses (transformers quantizes on load).

Measured per run, on GPU 0: weights = torch.cuda.memory_allocated after the build; KV = bytes of
the storages the cache holds after the last step; peak allocated / reserved from torch after
reset_peak_memory_stats; NVML = this process's GPU memory (includes the CUDA context and the
allocator's cached blocks). Compared with the plan's budget for GPU 0: planned total against
NVML (or reserved + the planned CUDA context when NVML is missing), planned tensors (weights +
KV + activations) against peak allocated. A row is flagged UNDER when planned < measured and
OVER when planned > 1.10 x measured (benchmarks/gpu_verdicts.py). Beside memory, each row
prints the plan's predicted decode tokens/s and full-context prefill time against the measured
decode steps and prefill (speed does not decide the exit status: the GPU speed model is not
validated yet). Exit status: 1 when any row is UNDER, OVER, out of memory or failed; 0 when all
are inside the band; without CUDA it prints why and exits 0. `--judge FILE` applies the same
verdict to a results JSON written by --out (any machine).

Never imports hydra or omegaconf.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from gpu_verdicts import OVER_FACTOR, exit_status, memory_failures, memory_flag  # noqa: E402

# Small models first, so a short budget still measures several.
MODELS = [
    "gpt2",
    "gemma-3-1b",
    "llama-3.2-1b",
    "gpt2-xl",
    "phi-3-mini",
    "qwen3-8b",
    "mistral-7b",
    "llama-3.1-8b",
    "gpt-oss-20b",
]
QUICK_MODELS = ["gpt2", "gemma-3-1b", "llama-3.2-1b", "qwen3-8b", "gpt-oss-20b"]
CONTEXTS = [4096, 8192]
QUICK_CONTEXTS = [4096]
# (profile, policy.quantization, layers kept): quantization as shipped or on load, on a cut-down model
QUANT_CASES = [("gpt-oss-20b", "keep", 4), ("qwen3-8b", "fp8", 8)]
QUANT_CONTEXT = 4096
BUILDABLE_ATTENTION = ("eager", "sdpa", "flash_attention_2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--export", action="store_true", help=f"write conf/ profiles and tiers to {_common.EXPORT_PATH} and exit"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plans it would check; no CUDA needed")
    parser.add_argument("--judge", type=Path, help="apply the verdict to a results JSON from --out and exit by it")
    parser.add_argument("--no-quant", action="store_true", help="leave out the quantized rows (QUANT_CASES)")
    parser.add_argument("--quick", action="store_true", help=f"models {QUICK_MODELS} at {QUICK_CONTEXTS} only")
    parser.add_argument("--models", help="comma-separated profiles (default: all single-GPU ones, small first)")
    parser.add_argument(
        "--contexts", help="comma-separated context tokens (default 4096,8192; capped at each model's maximum)"
    )
    parser.add_argument("--new-tokens", type=int, default=8, help="decode steps after the prefill")
    parser.add_argument("--tier", default="h100_80gb", help="tier for --dry-run on a machine without a GPU")
    parser.add_argument(
        "--profiles-json", action="store_true", help="read the JSON export even when OmegaConf is present"
    )
    parser.add_argument(
        "--sdpa-kernels", help="diagnostic: comma-separated sdpa backends allowed (flash,efficient,cudnn,math)"
    )
    parser.add_argument(
        "--out", type=Path, help="write the table as JSON here (default: $OUT/gpu_memory_check.json when $OUT is set)"
    )
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
    try:
        contexts = (
            [int(c) for c in args.contexts.split(",")]
            if args.contexts
            else (QUICK_CONTEXTS if args.quick else CONTEXTS)
        )
    except ValueError:
        parser.error(f"--contexts must be comma-separated integers, got {args.contexts!r}")
    if any(c <= args.new_tokens for c in contexts):
        parser.error(f"every context must exceed --new-tokens={args.new_tokens}, got {contexts}")
    if args.new_tokens < 1:
        parser.error(f"--new-tokens must be >= 1, got {args.new_tokens}")
    args.model_list, args.context_list = models, contexts
    args.sdpa_list = args.sdpa_kernels.split(",") if args.sdpa_kernels else None
    if args.sdpa_list and not set(args.sdpa_list) <= {"flash", "efficient", "cudnn", "math"}:
        parser.error(f"--sdpa-kernels takes flash, efficient, cudnn, math; got {args.sdpa_kernels!r}")
    if args.out is None and os.environ.get("OUT"):
        args.out = Path(os.environ["OUT"]) / "gpu_memory_check.json"
    return args


# ---- plans (no Hydra) --------------------------------------------------------------------------
def single_gpu(hw):
    """The first GPU only: every model here is checked on one device."""
    return replace(hw, devices=hw.devices[:1], nvlink_pairs=()) if len(hw.devices) > 1 else hw


def hardware_for_run(configs: dict, tier: str, want_gpu: bool):
    """(Hardware, where it came from). Probe through NVML first (before CUDA starts)."""
    from planner.hardware.probe import probe

    hw = probe()
    if hw.devices:
        return single_gpu(hw), f"probe: {hw.devices[0].name}"
    if not want_gpu:
        return _common.tier_hardware(
            configs, tier, 1
        ), f"tier {tier} (no GPU here: {'; '.join(hw.notes) or 'probe found none'})"
    import torch

    name = torch.cuda.get_device_name(0)
    for tier_name, tier_cfg in configs["hardware"].items():
        if str(tier_cfg.get("name", "")).lower() == name.lower():
            return _common.tier_hardware(
                configs, tier_name, 1
            ), f"tier {tier_name} (NVML probe unavailable, name {name!r} matched)"
    from planner.hardware.devices import Device, Hardware

    free, total = torch.cuda.mem_get_info(0)
    major, minor = torch.cuda.get_device_capability(0)
    device = Device(id=0, name=name, total_bytes=total, free_bytes=free, compute_capability=f"{major}.{minor}")
    return Hardware(
        source="torch", devices=(device,), host_ram_bytes=64 << 30, cpu_count=os.cpu_count() or 1
    ), f"torch.cuda ({name})"


def max_context(configs: dict, model: str) -> int:
    from planner.model.inventory import build_inventory

    arch = configs["models"][model]["architecture"]
    return build_inventory(
        arch, dtype="bfloat16", quantization=configs["models"][model].get("quantization")
    ).max_context_tokens


def cut_profile(profile: dict, layers: int) -> dict:
    """The profile with only its first `layers` decoder layers; every per-layer list in the architecture is cut too."""
    arch = dict(profile["architecture"])
    total = int(arch["num_hidden_layers"])
    for key, value in arch.items():
        if isinstance(value, list) and len(value) == total:
            arch[key] = value[:layers]
    arch["num_hidden_layers"] = layers
    return {**profile, "name": f"{profile['name']}-{layers}L", "architecture": arch, "fallback": None}


def case_profile(configs: dict, case: tuple) -> tuple[dict, str]:
    """(configs holding the case's profile, its name): a quantized case's cut-down profile is added under its name."""
    model, _context, quant, layers = case
    if not layers:
        return configs, model
    cut = cut_profile(configs["models"][model], layers)
    return {**configs, "models": {**configs["models"], cut["name"]: cut}}, cut["name"]


def plan_case(configs: dict, case: tuple, hw):
    """The plan of one case (model, context, policy.quantization, layers kept or None)."""
    _model, context, quant, _layers = case
    configs, name = case_profile(configs, case)
    overrides = {"context_tokens": context, "sessions": 1}
    if quant:
        overrides["quantization"] = quant
    elif configs["models"][name].get("quantization"):
        overrides["quantization"] = "none"  # from_config builds dequantized experts only
    return _common.plan_without_hydra(configs, name, hw, overrides)


def cases(configs: dict, models: list[str], contexts: list[int], quantized: bool = True) -> list[tuple]:
    """(model, context, quantization policy or None, layers kept or None) for every row to measure."""
    out = []
    for model in models:
        if model not in configs["models"]:
            raise SystemExit(f"unknown model profile {model!r}: choose from {', '.join(sorted(configs['models']))}")
        limit = max_context(configs, model)
        for context in sorted({min(c, limit) for c in contexts}):
            out.append((model, context, None, None))
    if quantized:
        out += [(model, QUANT_CONTEXT, quant, layers) for model, quant, layers in QUANT_CASES]
    return out


def case_name(case: tuple) -> str:
    model, _context, quant, layers = case
    return f"{model}-{layers}L {quant}" if layers else model


def budget0(plan):
    return plan.budget[0] if plan.budget else None


def dry_run(configs: dict, hw, where: str, todo) -> None:
    print(f"hardware: {where}")
    rows = []
    for case in todo:
        plan = plan_case(configs, case, hw)
        b = budget0(plan)
        rows.append(
            [
                case_name(case),
                case[1],
                plan.model.dtype,
                _quant_text(plan),
                plan.attn_implementation,
                plan.strategy,
                "yes" if plan.fits else "NO",
                plan.limits.prefill_chunk_tokens or "-",
                *(
                    _common.gib(getattr(b, k)) if b else "-"
                    for k in ("weights", "kv_cache", "activations", "overhead", "planned", "usable")
                ),
            ]
        )
    _common.print_table(
        [
            "model",
            "context",
            "dtype",
            "quantization",
            "attention",
            "strategy",
            "fits",
            "chunk",
            "weights",
            "kv",
            "act",
            "overhead",
            "planned GiB",
            "usable GiB",
        ],
        rows,
    )


def _quant_text(plan) -> str:
    q = plan.model.quantization
    if q.on_load:
        return f"{q.on_load} on load"
    return f"{q.method} {'kept' if q.kept else 'dequantized'}" if q.method else "-"


# ---- measuring on the GPU ----------------------------------------------------------------------
class Nvml:
    """This process's GPU memory through NVML; falls back to the device's used memory minus a baseline."""

    def __init__(self):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
            if visible.startswith(("GPU-", "MIG-")):
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)
            self.baseline_used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        except Exception as exc:  # no pynvml, no driver access: NVML columns stay empty
            self.error = f"{type(exc).__name__}: {exc}"

    @property
    def available(self) -> bool:
        return self.handle is not None

    def process_bytes(self) -> tuple[int | None, str]:
        if not self.available:
            return None, "none"
        pid = os.getpid()
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory), "process"
        except self.nvml.NVMLError:
            pass
        used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        return int(used - self.baseline_used), "device-baseline"


def cache_bytes(cache) -> int:
    """Bytes of the storages a DynamicCache (or legacy tuple cache) keeps alive."""
    seen, total = set(), 0
    layers = getattr(cache, "layers", None)
    tensors = []
    if layers is not None:
        for layer in layers:
            tensors += [getattr(layer, "keys", None), getattr(layer, "values", None)]
    else:
        for pair in cache or ():
            tensors += list(pair)
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def build_model(arch: dict, dtype: str, attn: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(arch)
    arch.pop("quantization_config", None)
    config = AutoConfig.for_model(**arch)
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation=attn)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_config(
                config, torch_dtype=getattr(torch, dtype), attn_implementation=attn
            )
    return model.eval()


def build_quantized(arch: dict, plan, folder: Path, attn: str):
    """A random-weight bf16 checkpoint of `arch` saved to `folder`, loaded as the runner loads the plan.

    transformers quantizes while loading: the plan's on-load config (FP8), or MXFP4 kept (Mxfp4Config,
    quantized on the fly: the shipped MXFP4 checkpoint cannot be built from a config).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.engine.loader import from_pretrained_kwargs

    arch = dict(arch)
    arch.pop("quantization_config", None)
    config = AutoConfig.for_model(**arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # on the CPU: host RAM, not the GPU
    model.save_pretrained(folder)
    del model
    kwargs = from_pretrained_kwargs(plan)
    quant = plan.model.quantization
    if quant.method == "mxfp4" and quant.kept:
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config()
    kwargs["device_map"] = {"": 0}
    kwargs["attn_implementation"] = attn  # a hub kernel (FA3) would need the network: the row says which ran
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def run_generation(model, prompt_tokens: int, new_tokens: int, chunk: int):
    """Prefill `prompt_tokens` random tokens (in chunks of `chunk`), then decode `new_tokens`.

    Returns (cache, prefill seconds, decode tokens/s); the decode rate counts the `new_tokens`
    generate steps after the prefill (the first of them prefills the one uncached token).
    """
    import torch
    from transformers import DynamicCache

    from runner.engine.generate import cache_keyword

    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (1, prompt_tokens + 1), device=model.device)
    cache = DynamicCache(config=model.config)
    step = chunk or prompt_tokens
    key = cache_keyword(model)
    with torch.inference_mode():
        torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, prompt_tokens, step):
            piece = ids[:, start : min(start + step, prompt_tokens)]
            model(input_ids=piece, use_cache=True, logits_to_keep=1, **{key: cache})
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - started
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **{key: cache},
        )
        torch.cuda.synchronize()
        decode_s = time.perf_counter() - started - prefill_s
    return cache, prefill_s, new_tokens / decode_s


def tensor_bytes(model) -> int:
    """Exact bytes of the model's parameters and buffers (allocated memory also holds e.g. a cuBLAS workspace)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def sdpa_backends(names: list[str] | None):
    """Restrict torch's sdpa kernels (diagnostic: does a row fall back to the math kernel?)."""
    import contextlib

    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    return sdpa_kernel([table[n] for n in names])


def measure(configs, hw, todo, new_tokens: int, nvml: Nvml, sdpa_kernels: list[str] | None = None) -> list[dict]:
    import torch

    torch.cuda.init()
    torch.empty(1, device="cuda")
    context_bytes, context_src = nvml.process_bytes()
    print(
        "CUDA context + torch runtime, measured: "
        f"{_common.gib(context_bytes) if context_bytes is not None else '?'} GiB ({context_src})"
    )
    rows, loaded = [], None
    for case in todo:
        model_name, context = case_name(case), case[1]
        plan = plan_case(configs, case, hw)
        b = budget0(plan)
        row = {
            "model": model_name,
            "context": context,
            "dtype": plan.model.dtype,
            "quantization": _quant_text(plan),
            "fits": plan.fits,
            "strategy": plan.strategy,
        }
        if not plan.fits or plan.strategy != "single_gpu":
            rows.append({**row, "skipped": f"plan does not fit one GPU ({plan.strategy}, fits={plan.fits})"})
            print(f"{model_name} @ {context}: skipped, plan does not fit one GPU")
            continue
        attn = plan.attn_implementation if plan.attn_implementation in BUILDABLE_ATTENTION else "sdpa"
        started = time.perf_counter()
        try:
            if loaded is None or loaded[0] != (model_name, plan.model.dtype, attn):
                loaded = None
                gc.collect()
                torch.cuda.empty_cache()
                case_configs, profile = case_profile(configs, case)
                arch = case_configs["models"][profile]["architecture"]
                if case[2]:
                    with tempfile.TemporaryDirectory() as folder:
                        model = build_quantized(arch, plan, Path(folder), attn)
                else:
                    model = build_model(arch, plan.model.dtype, attn)
                torch.cuda.synchronize()
                loaded = (
                    (model_name, plan.model.dtype, attn),
                    model,
                    tensor_bytes(model),
                    torch.cuda.memory_allocated(),
                )
            _, model, weights_measured, allocated_after_build = loaded
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with sdpa_backends(sdpa_kernels):
                cache, prefill_s, decode_rate = run_generation(
                    model, context - new_tokens, new_tokens, plan.limits.prefill_chunk_tokens
                )
            torch.cuda.synchronize()
            kv_measured = cache_bytes(cache)
            peak_alloc, peak_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            nvml_bytes, nvml_src = nvml.process_bytes()
            del cache
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as exc:
            rows.append({**row, "error": f"OOM: {str(exc).splitlines()[0]}"})
            print(f"{model_name} @ {context}: OUT OF MEMORY (plan said it fits)")
            loaded = None
            continue
        except (RuntimeError, ImportError, ValueError) as exc:  # no sdpa kernel left, a quantizer missing here
            loaded = None
            rows.append({**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            print(f"{model_name} @ {context}: {rows[-1]['error']}")
            continue
        if nvml_bytes is not None:
            measured_total, source = nvml_bytes, f"nvml-{nvml_src}"
        else:
            measured_total, source = (
                peak_reserved + int(configs["policy"]["overhead"]["cuda_context_mib"]) * (1 << 20),
                "reserved+planned-context",
            )
        tensors_planned = b.weights + b.kv_cache + b.activations
        ratio = b.planned / measured_total
        flag = memory_flag(b.planned, measured_total)
        perf = plan.performance or {}
        row.update(
            {
                "attn": attn,
                "prefill_chunk": plan.limits.prefill_chunk_tokens,
                "planned": {
                    "weights": b.weights,
                    "kv_cache": b.kv_cache,
                    "activations": b.activations,
                    "overhead": b.overhead,
                    "tensors": tensors_planned,
                    "total": b.planned,
                    "usable": b.usable,
                },
                "measured": {
                    "weights": weights_measured,
                    "allocated_after_build": allocated_after_build,
                    "kv_cache": kv_measured,
                    "peak_allocated": peak_alloc,
                    "peak_reserved": peak_reserved,
                    "nvml": nvml_bytes,
                    "activations_est": max(peak_alloc - weights_measured - kv_measured, 0),
                    "total": measured_total,
                    "total_source": source,
                },
                "speed": {
                    "predicted_decode_tokens_per_s": perf.get("decode_tokens_per_s"),
                    "measured_decode_tokens_per_s": decode_rate,
                    "predicted_prefill_s": perf.get("ttft_full_s"),
                    "measured_prefill_s": prefill_s,
                },
                "ratio_total": ratio,
                "ratio_tensors": tensors_planned / peak_alloc,
                "flag": flag,
                "seconds": time.perf_counter() - started,
            }
        )
        rows.append(row)
        print(
            f"{model_name} @ {context}: planned {_common.gib(b.planned)} GiB, measured "
            f"{_common.gib(measured_total)} GiB ({source}), "
            f"ratio {ratio:.3f} {flag}; decode {_speed_pair(row['speed'])} [{row['seconds']:.1f} s]",
            flush=True,
        )
    return rows


def _speed_pair(speed: dict | None) -> str:
    """Predicted / measured decode tokens/s and prefill seconds, as printed beside memory."""
    if not speed:
        return "-"
    p, m = speed.get("predicted_decode_tokens_per_s"), speed.get("measured_decode_tokens_per_s")
    pp, mp = speed.get("predicted_prefill_s"), speed.get("measured_prefill_s")
    decode = f"{p:.1f}/{m:.1f} tok/s" if p and m else "-"
    prefill = f"{pp:.2f}/{mp:.2f} s" if pp and mp else "-"
    return f"{decode}, prefill {prefill}"


def print_results(rows: list[dict]) -> None:
    table = []
    for r in rows:
        if "planned" not in r:
            table.append(
                [
                    r["model"],
                    r["context"],
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    r.get("skipped") or r.get("error"),
                ]
            )
            continue
        p, m = r["planned"], r["measured"]
        table.append(
            [
                r["model"],
                r["context"],
                r["attn"],
                f"{_common.gib(p['weights'])}/{_common.gib(m['weights'])}",
                f"{_common.gib(p['kv_cache'])}/{_common.gib(m['kv_cache'])}",
                f"{_common.gib(p['activations'])}/{_common.gib(m['activations_est'])}",
                _common.gib(p["total"]),
                _common.gib(m["peak_allocated"]),
                _common.gib(m["peak_reserved"]),
                _common.gib(m["nvml"]) if m["nvml"] is not None else "-",
                f"{r['ratio_total']:.3f}",
                f"{r['ratio_tensors']:.3f}",
                _speed_pair(r.get("speed")),
                memory_flag(r["planned"]["total"], r["measured"]["total"]),
            ]
        )
    print()
    _common.print_table(
        [
            "model",
            "context",
            "attn",
            "weights p/m",
            "kv p/m",
            "act p/m~",
            "planned GiB",
            "peak alloc",
            "peak resv",
            "NVML",
            "planned/measured",
            "tensors p/alloc",
            "decode p/m, prefill p/m",
            "flag",
        ],
        table,
    )
    measured = [r for r in rows if "planned" in r]
    under = sum(memory_flag(r["planned"]["total"], r["measured"]["total"]) == "UNDER" for r in measured)
    over = sum(memory_flag(r["planned"]["total"], r["measured"]["total"]) == "OVER" for r in measured)
    print(
        f"\n{len(measured)} measured, {under} under-estimates (planned < measured), {over} over by > "
        f"{OVER_FACTOR - 1:.0%}, "
        f"{sum(1 for r in rows if 'error' in r)} OOM; measured total = NVML process memory (context + cached blocks)"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export:
        print(f"wrote {_common.export_configs()}")
        return 0
    if args.judge:
        rows = json.loads(args.judge.read_text())["rows"]
        print_results(rows)
        return exit_status(memory_failures(rows), "gpu_memory_check")
    configs, source = _common.load_configs("json" if args.profiles_json else "repo")
    print(f"profiles from {source}")
    todo = cases(configs, args.model_list, args.context_list, quantized=not args.no_quant)
    if args.dry_run:
        hw, where = hardware_for_run(configs, args.tier, want_gpu=False)
        dry_run(configs, hw, where, todo)
        return 0
    try:
        import torch
    except ImportError:
        print("gpu_memory_check: torch is not installed: nothing to measure (skipped)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_memory_check: no CUDA device here: nothing to measure (skipped); --dry-run shows the plans")
        return 0
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault(
        "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"
    )  # what plan.launch.env sets; before CUDA starts
    nvml = Nvml()  # before CUDA starts: the baseline excludes this process
    hw, where = hardware_for_run(configs, args.tier, want_gpu=True)
    print(f"hardware: {where}; NVML: {'yes' if nvml.available else 'no (' + getattr(nvml, 'error', '?') + ')'}")
    started = time.perf_counter()
    rows = measure(configs, hw, todo, args.new_tokens, nvml, args.sdpa_list)
    print_results(rows)
    print(f"total {time.perf_counter() - started:.0f} s on {torch.cuda.get_device_name(0)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"hardware": where, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return exit_status(memory_failures(rows), "gpu_memory_check")


if __name__ == "__main__":
    sys.exit(main())
