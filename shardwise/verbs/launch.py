"""`shardwise launch`: start a plan on the engine it needs, or print the exact commands (launch.dry_run=true).

    shardwise launch model=gpt-oss-120b hardware=h100_80gb launch.dry_run=true
    shardwise launch plan_file=plan.json launch.prompt='[hello]'
    shardwise launch plan_file=plan.json launch.engine=vllm
    shardwise launch -m hydra/launcher=submitit_slurm hydra.launcher.nodes=2 ... plan_file=plan.json

Hydra runs here, in the parent only: the plan is made (or read and checked against this
machine) and written to the run directory as plan.json; torchrun ranks and SLURM tasks read that
file. Refusals are one-line errors with exit status 2 (see runner.launch.render for the rules).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from planner.config.schema import Target
from planner.errors import ShardwiseError
from planner.files import expand_user, resolved
from planner.planfile.plan import Decision, Plan, plan_file_path
from runner.launch import render as L


def run(argv: list[str]) -> None:
    from shardwise.verbs.app import run_verb

    L.register_schema()
    run_verb("launch", "launch", task, argv)


def task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    settings: L.LaunchSettings = OmegaConf.to_object(cfg.launch)
    check_settings(settings)
    kubernetes = settings.target == Target.kubernetes
    if settings.dry_run is None:  # manifests for a cluster are printed unless asked to apply them
        settings.dry_run = kubernetes
    if kubernetes:  # before planning: a fresh plan for this target is sized by vLLM's rules (plans_for_vllm)
        check_kubernetes_engine(settings)
    check_generation(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    notes: list[str] = []
    if cfg.plan_file:
        plan_path = resolved(plan_file_path(cfg.plan_file))
        plan = Plan.load(plan_path)
        if settings.dry_run and not kubernetes:
            notes.append("dry run: the plan's hardware was not compared with this machine")
        elif not kubernetes:  # a cluster's GPUs, not this machine's, run a Kubernetes launch
            notes += check_hardware(plan, settings)
    else:
        plan = fresh_plan(cfg, HydraConfig.get().runtime.choices.get("hardware", ""))
        plan_path = plan.save(out_dir / "plan.json")
    if not plan.fits:
        from runner.plan_fitting import fix_texts

        binding = plan.binding or {}
        raise ShardwiseError(
            f"{plan.model.name} does not fit this plan ({binding.get('term', 'memory')} on device "
            f"{binding.get('device', '?')}): "
            "see `shardwise plan` for what would make it fit "
            f"({'; '.join(fix_texts(binding)[:2]) or 'shorter context, more GPUs'})"
        )
    if settings.cpu_tp_size:
        plan = rehearsal_plan(plan, settings.cpu_tp_size)
        plan_path = plan.save(out_dir / "plan.json")

    check_node_rank(plan, settings)
    dropped = L.dropped_env(plan)
    if dropped:
        notes.append(dropped)
    from runner.engine.preflight import check_remote_code
    from shardwise.verbs.app import remote_code_consent

    consent = remote_code_consent(cfg)
    if kubernetes:
        from runner.launch.kubernetes import launch as launch_kubernetes

        for note in notes:  # stderr: stdout is the YAML alone
            print(f"shardwise launch: note: {note}", file=sys.stderr)

        rc = launch_kubernetes(plan, plan_path, settings, consent)
        if rc:
            raise SystemExit(rc)
        return
    if not settings.dry_run:
        check_remote_code(plan, consent)
    engine = settings.engine
    if engine == L.Engine.auto:
        engine = L.Engine.torchrun if L.needs_torchrun(plan) else L.Engine.accelerate
    L.check_engine(plan, settings.engine, settings.task)
    generation = OmegaConf.to_container(cfg.generation, resolve=True)

    if engine == L.Engine.vllm:
        commands, vnotes = L.vllm_commands(plan, settings)
        notes += vnotes
        if not importlib.util.find_spec("vllm") and not settings.dry_run:
            # nothing can start here: show what would run (for the GPU machines), then fail in one line
            print_dry_run(plan, plan_path, engine, commands, settings, notes)
            raise ShardwiseError(
                "launch.engine=vllm needs vllm and it is not installed here, so nothing was started: pip install "
                "vllm on the GPU machines and run the command above there, or add launch.dry_run=true to only print it"
            )
    elif engine == L.Engine.torchrun:
        notes += L.check_distributed(plan, L.plan_architecture(plan))
        node_rank = None if settings.dry_run else this_node_rank(plan, settings)
        commands = L.torchrun_commands(plan, str(plan_path), settings, generation, node_rank, consent)
    else:
        commands = [L.single_process_command(plan, str(plan_path), settings, generation, consent)]
        if settings.record_dir:
            notes.append("launch.record_dir has no effect on a one-process launch: only torchrun ranks record tokens")
    if engine == L.Engine.torchrun and not settings.dry_run:
        check_record_dir(settings)

    if settings.dry_run:
        print_dry_run(plan, plan_path, engine, commands, settings, notes)
        return
    if not cfg.plan_file:  # a fresh plan for a tier this machine lacks: refuse here, not in the child
        notes += check_hardware(plan, settings)
    for note in notes:
        print(f"shardwise launch: note: {note}", file=sys.stderr)
    rc = execute(plan, engine, commands, settings)
    if rc:
        raise SystemExit(rc)


def check_settings(settings: L.LaunchSettings) -> None:
    """launch.* values no engine could use are one-line errors before anything is planned or started."""
    from planner.config.schema import check_launch

    check_launch(settings)


def check_kubernetes_engine(settings: L.LaunchSettings) -> None:
    """launch.target=kubernetes renders vLLM only: launch.engine auto or vllm."""
    if settings.engine not in (L.Engine.auto, L.Engine.vllm):
        raise ShardwiseError(
            f"launch.target=kubernetes renders vLLM, not launch.engine={settings.engine.value}: "
            "use launch.engine=vllm (or auto)"
        )


def check_generation(cfg) -> None:
    """generation.* reaches the chat, the server or every torchrun rank: refuse a value none could use, now."""
    from runner.engine.sampling import SamplingParams

    SamplingParams.from_generation(cfg.generation)


def fresh_plan(cfg, hardware_choice: str) -> Plan:
    from planner.config.request import plan_from_config, plans_for_vllm
    from planner.hardware.tiers import resolve_hardware
    from shardwise.verbs.app import given_on_command_line

    if plans_for_vllm(cfg.launch) and not given_on_command_line("policy.sessions"):
        # vLLM batches whatever arrives: size sessions like `shardwise serve` does (auto), not the one of `plan`
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.policy.sessions = "auto"

    return plan_from_config(cfg, resolve_hardware(cfg.hardware, name=hardware_choice))


def current_hardware(plan: Plan) -> dict:
    """This machine now (Hardware.to_dict()), seen the way the plan's hardware was made."""
    from planner.config.compose import current_hardware as planner_current

    return planner_current(str(plan.hardware.get("source", ""))).to_dict()


def slurm_int(name: str, default: int | None = None) -> int | None:
    """An integer SLURM sets (SLURM_NODEID, SLURM_NNODES); anything else is a one-line error naming it."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise ShardwiseError(f"{name}={value!r:.40} is not a node count or index: run under SLURM or unset {name}")
    return int(value)


def check_node_rank(plan: Plan, settings: L.LaunchSettings) -> None:
    """launch.node_rank names a node of this plan; SLURM_NODEID, when set, is an index."""
    slurm_int("SLURM_NODEID")
    rank = settings.node_rank
    if rank is not None and not 0 <= rank < max(plan.nodes, 1):
        raise ShardwiseError(
            f"launch.node_rank={rank} is outside this {plan.nodes}-node plan: use 0..{max(plan.nodes, 1) - 1}"
        )


def check_record_dir(settings: L.LaunchSettings) -> None:
    """launch.record_dir is a directory the ranks can write into (created if missing), checked before they start."""
    if not settings.record_dir:
        return
    where = expand_user(str(settings.record_dir))
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShardwiseError(
            f"launch.record_dir={str(settings.record_dir)!r} cannot be used as a directory ({exc.strerror or exc}): "
            "give a writable directory"
        ) from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise ShardwiseError(
            f"launch.record_dir={str(settings.record_dir)!r} is not writable: give a writable directory"
        )


def check_hardware(plan: Plan, settings: L.LaunchSettings) -> list[str]:
    rank = settings.node_rank if settings.node_rank is not None else slurm_int("SLURM_NODEID", 0)
    why = L.hardware_mismatch(plan, current_hardware(plan), rank)
    if why is None:
        return []
    if not settings.check_hardware:
        return [f"launch.check_hardware=false: running anyway although {why}"]
    raise ShardwiseError(
        f"{why}: re-plan on this machine with `shardwise plan`, or launch.dry_run=true to only print the commands"
    )


def rehearsal_plan(plan: Plan, ranks: int) -> Plan:
    """A CPU plan turned into a tensor-parallel one over `ranks` local gloo processes (to rehearse a TP launch)."""
    if plan.strategy != "cpu":
        raise ShardwiseError(
            f"launch.cpu_tp_size={ranks} rehearses tensor parallel on a CPU plan, this plan is "
            f"{plan.strategy}: drop launch.cpu_tp_size or plan with hardware=cpu"
        )
    if ranks < 2:
        raise ShardwiseError(
            f"launch.cpu_tp_size={ranks} needs at least 2 ranks to shard anything: use 2 or more, or 0 to turn it off"
        )
    decision = Decision(
        "strategy",
        "tensor_parallel",
        f"launch.cpu_tp_size={ranks}: {ranks} gloo ranks on this CPU share the host's RAM (a "
        "rehearsal, not a speed-up)",
    )
    return replace(
        plan, strategy="tensor_parallel", tp_size=ranks, pp_size=1, device_map={}, decisions=(*plan.decisions, decision)
    )


def this_node_rank(plan: Plan, settings: L.LaunchSettings) -> int | None:
    """Which node this is: launch.node_rank, else SLURM_NODEID; None for one node or a c10d rendezvous."""
    if plan.nodes <= 1 or settings.rdzv_endpoint:
        return None
    slurm_nodes = slurm_int("SLURM_NNODES")
    if slurm_nodes and slurm_nodes != plan.nodes:
        raise ShardwiseError(
            f"SLURM gave this job {slurm_nodes} nodes but the plan needs {plan.nodes}: submit with "
            f"hydra.launcher.nodes={plan.nodes}"
        )
    rank = settings.node_rank
    if rank is None and "SLURM_NODEID" in os.environ:
        rank = slurm_int("SLURM_NODEID")
        if not settings.master_addr:
            settings.master_addr = slurm_master_addr()
    if rank is None:
        raise ShardwiseError(
            f"a {plan.nodes}-node plan needs launch.node_rank=0..{plan.nodes - 1} on each node (or "
            "launch.rdzv_endpoint=HOST:PORT)"
        )
    if not 0 <= rank < plan.nodes:
        raise ShardwiseError(f"launch.node_rank={rank} is outside this {plan.nodes}-node plan: use 0..{plan.nodes - 1}")
    if not settings.master_addr:
        raise ShardwiseError(
            f"a {plan.nodes}-node plan needs launch.master_addr=HOST (node 0's address) or "
            "launch.rdzv_endpoint=HOST:PORT"
        )
    return rank


def slurm_master_addr() -> str:
    """Node 0 of this SLURM job (submitit expands SLURM_JOB_NODELIST)."""
    try:
        import submitit

        return submitit.JobEnvironment().hostnames[0]
    except Exception as exc:  # submitit missing or not inside a submitit job
        raise ShardwiseError(f"could not find node 0 of this SLURM job ({exc}): set launch.master_addr=HOST") from None


def print_dry_run(
    plan: Plan, plan_path: Path, engine: L.Engine, commands: list, settings: L.LaunchSettings, notes: list[str]
) -> None:
    c = L.comment
    print(
        f"# {c(plan.model.name)}: {plan.strategy}, {plan.nodes} node(s), tp {plan.tp_size}, pp {plan.pp_size}; "
        f"engine {engine.value}"
    )
    print(f"# plan: {c(plan_path)}")
    for command in commands:
        print(f"# {c(command.where)}: {c(command.reason)}")
        print(command.line())
    if L.gpus_per_node(plan):
        config, reasons = L.slurm_launcher(plan, settings.slurm, engine=engine)
        print(f"# SLURM ({c('; '.join(reasons))}): add to this command with -m")
        print(L.shell_line(L.slurm_overrides(config)))
    for note in notes:
        print(f"# note: {c(note)}")


def execute(plan: Plan, engine: L.Engine, commands: list, settings: L.LaunchSettings) -> int:
    """Run the command meant for this machine; torchrun and shardwise through this interpreter."""
    env = dict(os.environ)
    if engine == L.Engine.vllm:
        rank = settings.node_rank or slurm_int("SLURM_NODEID", 0)
        mine = [c for c in commands if (c.where == "every node but node 0") == (rank != 0)]
    else:
        mine = commands
    rc = 0
    for command in mine:
        argv = list(command.argv)
        if argv[0] == "torchrun":
            argv[:1] = [sys.executable, "-m", "torch.distributed.run"]
        elif argv[0] == "shardwise":
            argv[:1] = [sys.executable, "-m", "shardwise"]
        print(f"shardwise launch: {command.line()}", file=sys.stderr, flush=True)
        rc = run_forwarding_signals(argv, {**env, **dict(command.env)})
        if rc:
            return rc
    return rc


def run_forwarding_signals(argv: list[str], env: dict) -> int:
    """Run a child and pass SIGTERM/SIGHUP/SIGINT on to it: stopping `shardwise launch` stops what it started."""
    import signal

    child = subprocess.Popen(argv, env=env)
    forwarded = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def forward(signum, frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover - wait() retries on EINTR itself since PEP 475
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - rc if rc < 0 else rc  # a child killed by signal N: exit 128+N, like a shell
