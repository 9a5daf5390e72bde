"""Turn a Plan into the command lines that run it: one process, torchrun, SLURM (submitit) or `vllm serve`.

Pure rendering and checking, no torch here: `shardwise launch` (runner/launch_cli.py) prints or
runs what these functions return, and the golden tests compare them with what a person would
type. Every number in a command comes from a plan field, and every choice carries its reason.

    single_gpu | pipeline | offload | cpu, one node  -> shardwise chat|serve plan_file=plan.json
    tensor_parallel, or more than one node           -> torchrun ... -m runner.launch.worker --plan plan.json
    launch.engine=vllm                               -> vllm serve <model> --tensor-parallel-size ...
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from planner.config.quoting import hydra_literal, override
from planner.config.schema import Engine, LaunchSettings, LaunchTask, SlurmSettings  # noqa: E402
from planner.errors import ShardwiseError
from planner.planfile.plan import Plan
from planner.units import GIB

TORCHRUN_WORKER = "runner.launch.worker"


def register_schema() -> None:
    """Register every schema, `schema/launch` included; idempotent."""
    from planner.config import schema

    schema.register()


@dataclass(frozen=True)
class Command:
    """One command line to run, where, and why."""

    argv: tuple[str, ...]
    where: str  # "this machine", "node 0", "every node but node 0", ...
    reason: str
    env: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


@dataclass(frozen=True)
class Shape:
    """How many processes a plan needs, per node and in all."""

    nodes: int
    procs_per_node: int
    world_size: int
    reason: str


# --- what the plan asks for ---------------------------------------------------------------


def needs_torchrun(plan: Plan) -> bool:
    """Tensor parallel plans and anything spanning nodes need torch.distributed ranks; the rest is one process."""
    return plan.strategy == "tensor_parallel" or plan.nodes > 1


def process_shape(plan: Plan) -> Shape:
    """Ranks = tp_size x pp_size, spread evenly over the plan's nodes (tensor parallel inside a node)."""
    if plan.nodes < 1 or plan.tp_size < 1 or plan.pp_size < 1:
        raise ShardwiseError(
            f"plan has nodes={plan.nodes} tp_size={plan.tp_size} pp_size={plan.pp_size}: all must be "
            ">= 1; re-create it with `shardwise plan`"
        )
    world = plan.tp_size * plan.pp_size
    if world % plan.nodes:
        raise ShardwiseError(
            f"plan spreads {world} ranks (tp {plan.tp_size} x pp {plan.pp_size}) over {plan.nodes} "
            f"nodes, which does not divide evenly: re-plan with hardware.nodes dividing {world}"
        )
    per_node = world // plan.nodes
    if plan.tp_size > per_node:
        raise ShardwiseError(
            f"plan's tensor parallel size {plan.tp_size} is larger than its {per_node} ranks per node: "
            "tensor parallel must stay inside a node; re-plan with pipeline across nodes"
        )
    reason = f"tp {plan.tp_size} x pp {plan.pp_size} = {world} ranks over {plan.nodes} node(s): {per_node} per node"
    return Shape(nodes=plan.nodes, procs_per_node=per_node, world_size=world, reason=reason)


def gpus_per_node(plan: Plan) -> int:
    """GPUs one node of the plan uses (0 for a CPU plan)."""
    if plan.strategy == "cpu" or not plan.hardware.get("devices"):
        return 0
    if needs_torchrun(plan):
        return process_shape(plan).procs_per_node
    used = {str(b.device) for b in plan.budget if str(b.device).isdigit()}
    if used:
        return len(used)
    return len({str(v) for v in plan.device_map.values() if str(v).isdigit()}) or 1


# --- refusals -------------------------------------------------------------------------------


def plan_architecture(plan: Plan) -> dict | None:
    """The model's config.json numbers: from a local model directory, the HF cache (hub ids), or its profile."""
    source = Path(plan.model.source)
    for candidate in (source / "config.json", source):
        if candidate.name == "config.json" and candidate.is_file():
            from planner.jsonfile import read_json

            return read_json(candidate, "config.json", dict, "fix or re-download it")
    if plan.model.revision:  # a hub id: its config.json is in the HF cache since it was planned
        from planner.model.hub import cached_config

        return cached_config(plan.model.source, plan.model.revision)
    from planner.config.reader import profile_architecture

    return profile_architecture(plan.model.name)


def head_counts(arch: dict) -> tuple[int, int] | None:
    """(attention heads, key/value heads) from config.json numbers, or None when they are not there."""
    text = arch.get("text_config") or arch
    heads = text.get("num_attention_heads") or text.get("n_head")
    if not heads:
        return None
    kv_heads = text.get("num_key_value_heads") or (1 if text.get("multi_query") else heads)
    return int(heads), int(kv_heads)


def parallel_plans(model_type: str) -> tuple[bool, bool]:
    """(has a tensor parallel plan, has a pipeline plan) in transformers' config class for model_type."""
    from transformers import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
    except KeyError:
        return False, False
    return bool(getattr(config_class, "base_model_tp_plan", None)), bool(
        getattr(config_class, "base_model_pp_plan", None)
    )


def check_distributed(plan: Plan, arch: dict | None) -> list[str]:
    """Refuse a torchrun launch transformers cannot shard; returns one-line notes for what it could not check."""
    notes: list[str] = []
    process_shape(plan)
    if plan.device_map:
        raise ShardwiseError(
            f"plan combines {plan.strategy} (tp {plan.tp_size}, {plan.nodes} node(s)) with a "
            f"device_map of {len(plan.device_map)} entries: "
            "torch.distributed ranks shard the model themselves; re-plan, or use a single-process plan for a device_map"
        )
    model_type = plan.model.model_type
    has_tp, has_pp = parallel_plans(model_type)
    if plan.tp_size > 1 and not has_tp:
        raise ShardwiseError(
            f"model_type {model_type!r} ({plan.model.name}) has no tensor parallel plan in "
            "transformers: use a pipeline plan (policy.strategy=pipeline) or launch.engine=vllm"
        )
    if plan.pp_size > 1 and not has_pp:
        raise ShardwiseError(
            f"model_type {model_type!r} ({plan.model.name}) has no pipeline parallel plan in "
            f"transformers, so it cannot span {plan.nodes} nodes: plan it on one node or use launch.engine=vllm"
        )
    heads = head_counts(arch) if arch else None
    if heads is None:
        notes.append(
            f"head counts of {plan.model.name} unknown (no config.json or profile): divisibility by tp "
            f"{plan.tp_size} not checked"
        )
        return notes
    for what, count in (("attention heads", heads[0]), ("key/value heads", heads[1])):
        if count % plan.tp_size:
            raise ShardwiseError(
                f"{plan.model.name} has {count} {what}, not divisible by tensor parallel size {plan.tp_size}: "
                f"use a tp size that divides {count} (policy.strategy=pipeline for other GPU counts)"
            )
    return notes


def check_engine(plan: Plan, engine: Engine, task: LaunchTask) -> None:
    if engine == Engine.accelerate and needs_torchrun(plan):
        raise ShardwiseError(
            f"launch.engine=accelerate runs one process, but this plan is {plan.strategy} over "
            f"{plan.nodes} node(s) (tp {plan.tp_size}, pp {plan.pp_size}): use launch.engine=auto or torchrun"
        )
    if engine == Engine.torchrun and not needs_torchrun(plan):
        raise ShardwiseError(
            "launch.engine=torchrun needs a tensor_parallel or multi-node plan, this one is "
            f"{plan.strategy} on one node: use launch.engine=auto (one process)"
        )
    if engine in (Engine.auto, Engine.torchrun) and needs_torchrun(plan) and task == LaunchTask.serve:
        raise ShardwiseError(
            "launch.task=serve over torchrun ranks is not available yet: use launch.task=chat, or "
            "launch.engine=vllm to serve this plan over HTTP"
        )


def hardware_mismatch(plan: Plan, current: dict, node_rank: int = 0) -> str | None:
    """Why `current` (this machine's Hardware.to_dict()) is not what the plan was made for, or None.

    One node: the fingerprints must match. Several nodes: this machine must have the GPUs the plan
    puts on node `node_rank` (same names, totals and compute capability), since a probe sees one node.
    """
    if plan.nodes <= 1:
        if plan.fingerprint == current.get("fingerprint"):
            return None
        return (
            f"plan was made for hardware {plan.fingerprint} "
            f"({describe_devices(plan.hardware.get('devices', []))}, source "
            f"{plan.hardware.get('source')!r}), this machine is {current.get('fingerprint')} "
            f"({describe_devices(current.get('devices', []))})"
        )

    def kinds(devices, node=None):
        return sorted(
            (d["name"], d["total_bytes"], d["compute_capability"])
            for d in devices
            if node is None or d.get("node", 0) == node
        )

    wanted = kinds(plan.hardware.get("devices", []), node_rank)
    have = kinds(current.get("devices", []))
    if wanted == have:
        return None
    on_node = [d for d in plan.hardware.get("devices", []) if d.get("node", 0) == node_rank]
    return (
        f"plan puts {describe_devices(on_node)} on node {node_rank}, "
        f"this machine has {describe_devices(current.get('devices', []))}"
    )


def describe_devices(devices: list) -> str:
    if not devices:
        return "no GPU"
    names: dict[str, int] = {}
    for d in devices:
        names[d["name"]] = names.get(d["name"], 0) + 1
    return ", ".join(f"{n}x {name}" for name, n in names.items())


# --- rendering ------------------------------------------------------------------------------


def launch_env(plan: Plan) -> dict[str, str]:
    """Environment every launched process gets: the plan's own allowed variables (planner.planfile.plan.LAUNCH_ENV_KEYS;
    `dropped_env` names the rest), plus CUDA ordering for GPU plans."""
    env, _ = plan.launch.safe_env()
    if plan.hardware.get("devices"):
        # The plan numbers GPUs in PCI bus order (what NVML reports); CUDA must count the same way.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


def dropped_env(plan: Plan) -> str | None:
    """A note naming the plan's launch.env variables no launched process gets, or None when there are none."""
    from planner.planfile.plan import LAUNCH_ENV_KEYS

    _, dropped = plan.launch.safe_env()
    if not dropped:
        return None
    return (
        f"the plan's launch.env sets {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}: not passed on "
        f"(a plan file is data; shardwise passes only {', '.join(LAUNCH_ENV_KEYS)}): export them in your own "
        "shell if you mean them"
    )


def comment(text) -> str:
    """`text` on one line, fit for a `# ...` shell comment: control characters (a newline in a directory name) are
    shown escaped, so nothing after them can become a command of its own."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def shell_line(words) -> str:
    """Words joined into one shell line, each quoted (shlex) as the shell must see it."""
    return " ".join(shlex.quote(str(word)) for word in words)


def single_process_command(
    plan: Plan, plan_path: str, settings: LaunchSettings, generation: dict | None = None, trust_remote_code=False
) -> Command:
    """`shardwise chat|serve plan_file=...` with what the parent resolved: generation.* and launch.prompt."""
    argv = ["shardwise", settings.task.value, override("plan_file", str(plan_path))]
    if trust_remote_code and plan.model.trust_remote_code:
        argv.append("trust_remote_code=true")  # the consent given on launch's command line
    for key, value in (generation or {}).items():
        argv.append(f"generation.{key}={hydra_literal(value)}")
    if settings.task == LaunchTask.serve:
        argv += [override("serve.host", settings.host), f"serve.port={settings.port}"]
    elif settings.prompt:
        argv.append(f"prompt={hydra_literal(list(settings.prompt))}")
    reason = (
        f"{plan.strategy} plan on one node: one process loads it with accelerate (device_map of "
        f"{len(plan.device_map)} entries)"
    )
    return Command(argv=tuple(argv), where="this machine", reason=reason, env=tuple(sorted(launch_env(plan).items())))


def worker_args(
    plan_path: str, settings: LaunchSettings, generation: dict | None = None, trust_remote_code: bool = False
) -> list[str]:
    """Arguments for `-m runner.launch.worker`: the plan file, then what Hydra resolved in the parent."""
    # --option=VALUE throughout: a prompt or stop string that starts with "-" stays a value, never an option
    args = [f"--plan={plan_path}"]
    if trust_remote_code:
        args.append("--trust-remote-code")  # the consent given on launch's command line, for a plan asking for it
    generation = generation or {}
    for key in ("max_tokens", "temperature", "top_p", "seed", "system_prompt"):
        value = generation.get(key)
        if value is not None:
            args.append(f"--{key.replace('_', '-')}={value}")
    for stop in generation.get("stop") or ():
        args.append(f"--stop={stop}")
    for prompt in settings.prompt:
        args.append(f"--prompt={prompt}")
    if settings.record_dir:
        args.append(f"--record-dir={settings.record_dir}")
    return args


def torchrun_commands(
    plan: Plan,
    plan_path: str,
    settings: LaunchSettings,
    generation: dict | None = None,
    node_rank: int | None = None,
    trust_remote_code: bool = False,
) -> list[Command]:
    """One torchrun command per node (or just `node_rank`'s) running the tensor-parallel worker."""
    shape = process_shape(plan)
    env = tuple(sorted(launch_env(plan).items()))
    base = ["torchrun", f"--nproc-per-node={shape.procs_per_node}"]
    consent = trust_remote_code and plan.model.trust_remote_code
    worker = ["-m", TORCHRUN_WORKER, *worker_args(plan_path, settings, generation, consent)]
    if shape.nodes == 1:
        argv = [*base, "--standalone", *worker]
        return [
            Command(
                argv=tuple(argv),
                where="this machine",
                reason=shape.reason + "; --standalone: one node, local rendezvous",
                env=env,
            )
        ]
    if settings.rdzv_endpoint:
        rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint={settings.rdzv_endpoint}", f"--rdzv-id={settings.rdzv_id}"]
        argv = [*base, f"--nnodes={shape.nodes}", *rdzv, *worker]
        reason = shape.reason + f"; c10d rendezvous at {settings.rdzv_endpoint} assigns node ranks"
        return [Command(argv=tuple(argv), where=f"each of the {shape.nodes} nodes", reason=reason, env=env)]
    master = settings.master_addr or "NODE0_HOST"
    ranks = range(shape.nodes) if node_rank is None else [node_rank]
    commands = []
    for rank in ranks:
        argv = [
            *base,
            f"--nnodes={shape.nodes}",
            f"--node-rank={rank}",
            f"--master-addr={master}",
            f"--master-port={settings.master_port}",
            *worker,
        ]
        reason = (
            shape.reason + f"; static rendezvous at {master}:{settings.master_port}, ranks "
            f"{rank * shape.procs_per_node}-{(rank + 1) * shape.procs_per_node - 1} here"
        )
        commands.append(Command(argv=tuple(argv), where=f"node {rank}", reason=reason, env=env))
    return commands


def gpu_memory_utilization(plan: Plan) -> tuple[float, str]:
    """vLLM's memory fraction from the plan: usable/total on the tightest GPU, rounded down to 0.01."""
    totals = {(d.get("node", 0), str(d["id"])): d["total_bytes"] for d in plan.hardware.get("devices", [])}
    shares = []
    for b in plan.budget:
        total = totals.get((b.node, str(b.device)))
        if total and b.usable > 0:
            shares.append((b.usable / total, b))
    if not shares:
        return 0.9, "no GPU budget in the plan: vLLM's default 0.9"
    share, tight = min(shares, key=lambda s: s[0])
    value = math.floor(share * 100) / 100
    total = totals[(tight.node, str(tight.device))]
    return (
        value,
        f"the plan may use {tight.usable / GIB:.1f} of {total / GIB:.1f} GiB on GPU {tight.device} "
        "(free minus headroom)",
    )


def vllm_commands(plan: Plan, settings: LaunchSettings) -> tuple[list[Command], list[str]]:
    """`vllm serve` (plus Ray cluster start-up for several nodes) equivalent to the plan; also notes.

    A plan sized for vLLM (launch.engine=vllm when it was planned: `plan.engine["name"] == "vllm"`) carries
    the exact flags in `engine.flags`; a plan sized for shardwise's runner is translated as well as it goes.
    """
    if (plan.engine or {}).get("name") == "vllm":
        check_vllm_engine(plan)
        argv, notes, reason = _vllm_from_engine(plan, settings)
    else:
        argv, notes, reason = _vllm_from_runner_plan(plan, settings)
    return _vllm_with_cluster(plan, settings, argv, reason), notes


# What rendering reads from a vLLM plan's `engine` block (planner/vllm/driver.py engine_block), with its type.
VLLM_ENGINE_KEYS = {
    "version": str,
    "gpu_memory_utilization": (int, float),
    "max_model_len": int,
    "max_num_seqs": int,
    "kv_cache_tokens": int,
    "max_concurrency": (int, float),
    "flags": list,
}


def flag_value(flags: list[str], name: str) -> str | None:
    """The value of `name` in `flags`, written `--name=value` or `--name value` (None when absent)."""
    for i, arg in enumerate(flags):
        if arg == name and i + 1 < len(flags):
            return flags[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_vllm_engine(plan: Plan) -> None:
    """A vLLM plan's engine block has what rendering reads, and its flags say the plan's numbers: else one line.

    A plan.json written by the planner always passes; a hand-edited or truncated one would otherwise render
    a `vllm serve` line (or pods) that disagrees with the plan, or fail with a KeyError.
    """
    engine = plan.engine or {}
    fix = "re-plan with launch.engine=vllm (the file was edited or written by another shardwise)"
    missing = [key for key in VLLM_ENGINE_KEYS if key not in engine]
    if missing:
        raise ShardwiseError(f"the plan's vLLM engine block lacks {', '.join(missing)}: {fix}")
    for key, kind in VLLM_ENGINE_KEYS.items():
        if isinstance(engine[key], bool) or not isinstance(engine[key], kind):
            raise ShardwiseError(f"the plan's engine.{key}={engine[key]!r:.60} has the wrong type: {fix}")
    flags = engine["flags"]
    if not flags or not all(isinstance(f, str) for f in flags):
        raise ShardwiseError(f"the plan's engine.flags must be a non-empty list of `vllm serve` arguments: {fix}")
    expected = {
        "--tensor-parallel-size": plan.tp_size,
        "--pipeline-parallel-size": plan.pp_size,
        "--max-model-len": engine["max_model_len"],
        "--max-num-seqs": engine["max_num_seqs"],
    }
    for name, want in expected.items():
        got = flag_value(flags, name)
        if got != str(want):
            raise ShardwiseError(f"the plan's engine.flags give {name}={got} but the plan says {want}: {fix}")


def _vllm_from_engine(plan: Plan, settings: LaunchSettings) -> tuple[list[str], list[str], str]:
    engine = plan.engine
    notes = []
    wanted = settings.gpu_memory_utilization
    if wanted and abs(wanted - engine["gpu_memory_utilization"]) > 1e-9:
        notes.append(
            f"launch.gpu_memory_utilization={wanted} differs from the {engine['gpu_memory_utilization']} the plan "
            "was sized for: the plan's value is used (re-plan with the new value to change it)"
        )
    argv = ["vllm", "serve", plan.model.source, f"--served-model-name={plan.model.name}", *engine["flags"]]
    if plan.model.trust_remote_code:
        argv.append("--trust-remote-code")
    reason = (
        f"sized by vLLM {engine['version']}'s rules: {engine['kv_cache_tokens']:,} KV tokens, "
        f"{engine['max_concurrency']}x concurrency at {engine['max_model_len']:,} tokens"
    )
    return argv, notes, reason


def _vllm_from_runner_plan(plan: Plan, settings: LaunchSettings) -> tuple[list[str], list[str], str]:
    notes: list[str] = []
    util, util_reason = (
        (settings.gpu_memory_utilization, "launch.gpu_memory_utilization")
        if settings.gpu_memory_utilization
        else gpu_memory_utilization(plan)
    )
    if plan.kv_cache_dtype == plan.model.dtype:
        kv = "auto"
    elif plan.kv_cache_dtype.startswith("fp8"):
        kv = plan.kv_cache_dtype
    else:
        kv = "auto"
        notes.append(f"vLLM keeps its KV cache in --dtype {plan.model.dtype}, not the plan's {plan.kv_cache_dtype}")
    if plan.model.quantization.method and not plan.model.quantization.kept:
        notes.append(
            f"the plan dequantizes {plan.model.quantization.method} to {plan.model.dtype}; vLLM reads "
            "the checkpoint's quantization and uses its own kernels"
        )
    argv = [
        "vllm",
        "serve",
        plan.model.source,
        f"--served-model-name={plan.model.name}",
        f"--tensor-parallel-size={plan.tp_size}",
        f"--pipeline-parallel-size={plan.pp_size}",
        f"--max-model-len={plan.limits.context_tokens}",
        f"--max-num-seqs={plan.limits.sessions}",
        f"--gpu-memory-utilization={util:.2f}",
        f"--dtype={plan.model.dtype}",
        f"--kv-cache-dtype={kv}",
    ]
    if plan.model.trust_remote_code:
        argv.append("--trust-remote-code")
    if plan.model.revision:  # the commit the plan was sized from, not whatever main is by then
        argv.append(f"--revision={plan.model.revision}")
    reason = (
        f"tp {plan.tp_size}, pp {plan.pp_size}, context {plan.limits.context_tokens} tokens, "
        f"{plan.limits.sessions} sequences; memory: {util_reason}"
    )
    return argv, notes, reason


def _vllm_with_cluster(plan: Plan, settings: LaunchSettings, argv: list[str], reason: str) -> list[Command]:
    env = tuple(sorted(launch_env(plan).items()))
    commands = []
    if plan.nodes > 1:
        head = settings.master_addr or "NODE0_HOST"
        argv.append("--distributed-executor-backend=ray")
        commands.append(
            Command(
                argv=("ray", "start", "--head", f"--port={settings.ray_port}"),
                where="node 0",
                reason="vLLM spans nodes through a Ray cluster: its head",
                env=env,
            )
        )
        commands.append(
            Command(
                argv=("ray", "start", f"--address={head}:{settings.ray_port}"),
                where="every node but node 0",
                reason=f"join the Ray cluster ({plan.nodes} nodes)",
                env=env,
            )
        )
    argv += [f"--host={settings.host}", f"--port={settings.port}", *settings.vllm_args]
    commands.append(
        Command(argv=tuple(argv), where="node 0" if plan.nodes > 1 else "this machine", reason=reason, env=env)
    )
    return commands


def slurm_launcher(
    plan: Plan, slurm: SlurmSettings, name: str = "shardwise", engine: Engine | None = None
) -> tuple[dict, list[str]]:
    """hydra/launcher=submitit_slurm settings for the plan: one task per node holding the node's GPUs.

    Each SLURM task runs `shardwise launch`, which starts the plan's engine on its node: torchrun's
    ranks (node rank from SLURM_NODEID, so torchrun, not srun, owns the per-GPU processes), `vllm
    serve`, or one accelerate process for a plan on one node.
    """
    if engine in (None, Engine.auto):
        engine = Engine.torchrun if needs_torchrun(plan) else Engine.accelerate
    starts = {
        Engine.torchrun: "torchrun starts the ranks",
        Engine.vllm: "vllm serve runs the model",
        Engine.accelerate: "one accelerate process loads the plan",
    }[engine]
    gpus = gpus_per_node(plan)
    config, reasons = slurm_config(
        plan.nodes,
        gpus,
        slurm,
        node_cpus=int(plan.hardware.get("cpu_count") or 0),
        node_ram_gib=int(plan.hardware.get("host_ram_bytes") or 0) // GIB,
        name=name,
    )
    reasons[0] = reasons[0].replace("torchrun starts the ranks", starts) + f" (the plan's {plan.strategy} shape)"
    return config, reasons


def slurm_config(
    nodes: int, gpus: int, slurm: SlurmSettings, node_cpus: int = 0, node_ram_gib: int = 0, name: str = "shardwise"
) -> tuple[dict, list[str]]:
    """SLURM request for `nodes` x `gpus`: CPUs and RAM per GPU from `slurm`, capped at the node when it is known."""
    per = max(gpus, 1)
    cpus = slurm.cpus_per_gpu * per
    mem = slurm.mem_gib_per_gpu * per
    reasons = [f"{nodes} node(s) x {gpus} GPU(s), one task per node: torchrun starts the ranks"]
    if node_cpus and cpus > node_cpus:
        reasons.append(f"cpus_per_task capped at the node's {node_cpus} cores (asked {cpus})")
        cpus = node_cpus
    if node_ram_gib and mem > node_ram_gib:
        reasons.append(f"mem_gb capped at the node's {node_ram_gib} GiB (asked {mem})")
        mem = node_ram_gib
    config = {
        "nodes": nodes,
        "tasks_per_node": 1,
        "gpus_per_node": gpus or None,
        "cpus_per_task": cpus,
        "mem_gb": mem,
        "timeout_min": slurm.timeout_min,
        "partition": slurm.partition,
        "account": slurm.account,
        "name": name,
    }
    return config, reasons


def slurm_overrides(config: dict) -> list[str]:
    """The same settings as command-line overrides after `hydra/launcher=submitit_slurm`."""
    out = ["hydra/launcher=submitit_slurm"]
    for key, value in config.items():
        if value is not None:
            out.append(override(f"hydra.launcher.{key}", value))
    return out


def slurm_preset_yaml(config: dict, title: str) -> str:
    """A conf/hydra/launcher/<name>.yaml preset extending submitit_slurm with these settings."""
    comments = {
        "nodes": "nodes to allocate (the plan's nodes)",
        "tasks_per_node": "one `shardwise launch` per node; torchrun starts the per-GPU ranks",
        "gpus_per_node": "GPUs per node (the plan's ranks per node)",
        "cpus_per_task": "CPU cores for the node's task (cpus_per_gpu x GPUs, capped at the node)",
        "mem_gb": "host RAM per node, GB (mem_gib_per_gpu x GPUs, capped at the node)",
        "timeout_min": "wall-clock limit, minutes",
        "partition": "SLURM partition (null: the cluster's default)",
        "account": "SLURM account (null: your default)",
        "name": "job name in squeue",
    }
    lines = [
        f"# {title}",
        "# Generated by `python -m runner.launch.render` (runner.launch.render.slurm_config); edit "
        "SLURM_PRESETS, not this file.",
        "defaults:",
        "  - submitit_slurm",
        "",
    ]
    for key, value in config.items():
        text = "null" if value is None else str(value)
        lines.append(f"{key}: {text}  # {comments[key]}")
    return "\n".join(lines) + "\n"


# Presets shipped in conf/hydra/launcher/: name -> (nodes, GPUs per node).
# `python -m runner.launch.render` rewrites them.
SLURM_PRESETS = {
    "slurm_1node_1gpu": (1, 1),
    "slurm_1node_2gpu": (1, 2),
    "slurm_1node_8gpu": (1, 8),
    "slurm_2nodes_8gpu": (2, 8),
}


def preset_text(name: str) -> str:
    nodes, gpus = SLURM_PRESETS[name]
    config, _ = slurm_config(nodes, gpus, SlurmSettings())
    title = (
        f"hydra/launcher={name}: {nodes} node(s) x {gpus} GPU(s) on SLURM; use with `shardwise "
        f"launch -m hydra/launcher={name} ...`"
    )
    return slurm_preset_yaml(config, title)


if __name__ == "__main__":
    from planner.config.reader import write_option

    for preset in SLURM_PRESETS:
        print(write_option("hydra/launcher", preset, preset_text(preset)))
