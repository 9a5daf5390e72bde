"""A plan as Kubernetes manifests for vLLM: a LeaderWorkerSet (several nodes) or a Deployment (one node), and a Service.

    shardwise launch model=llama-3.1-70b hardware=h100_80gb hardware.count=8 hardware.nodes=2 \\
        launch.target=kubernetes > vllm.yaml                 # dry run: the YAML on stdout, also beside plan.json
    shardwise launch plan_file=plan.json launch.target=kubernetes launch.dry_run=false   # kubectl apply -f

Every number in the manifests comes from the plan: GPUs per pod = tp x pp / nodes, the group size is
the plan's nodes, and `vllm serve` gets the plan's flags (`vllm_serve_args`). A multi-node plan becomes
one LeaderWorkerSet group per replica (leaderworkerset.x-k8s.io/v1, `LWS_LEADER_ADDRESS` and
`LWS_WORKER_INDEX` in each pod), laid out as vLLM's own LWS guide does; one node becomes a Deployment.
Pure rendering, no torch: `shardwise.verbs.launch` prints, writes or applies what `render` returns.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path

from planner.config.schema import LABEL_VALUE, KubernetesSettings, LaunchSettings, MultiNodeBackend
from planner.errors import ShardwiseError
from planner.planfile.plan import Plan
from runner.launch import render as L

# The vLLM release whose flags and image the rendering assumes when the plan does not name one
# (plan["engine"]["version"]): the release the vLLM measurements in ../shared/reference/vllm were taken with.
DEFAULT_VLLM_VERSION = "0.19.0"
IMAGE_REPOSITORY = "vllm/vllm-openai"  # vLLM's published OpenAI-server image; tags are v<version>
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"  # the LWS controller puts it on every pod of the set
GPU_RESOURCE = "nvidia.com/gpu"  # what NVIDIA's device plugin schedules
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # what NVIDIA's GPU feature discovery labels each node with
SERVING_PORT_NAME = "http"
# Flags the manifests decide themselves (the pod's address, and how the pods of a group find each other).
POD_FLAGS = ("--host", "--port", "--distributed-executor-backend", "--nnodes", "--node-rank", "--master-addr")


@dataclass(frozen=True)
class Rendered:
    """The objects to apply, in order, and one-line notes on what the rendering decided or could not check."""

    objects: tuple[dict, ...]
    notes: tuple[str, ...]

    def yaml(self) -> str:
        return to_yaml(self.objects)


# --- what the plan asks vLLM for ---------------------------------------------------------------


def plan_engine(plan: Plan) -> dict:
    """The plan's `engine` block as a dict ({} for plans made before plans named their engine)."""
    engine = getattr(plan, "engine", None)
    if is_dataclass(engine):
        return asdict(engine)
    return dict(engine) if isinstance(engine, dict) else {}


def vllm_version(plan: Plan) -> str:
    """The vLLM version the plan's numbers follow: plan.engine.version, else DEFAULT_VLLM_VERSION."""
    version = plan_engine(plan).get("version")
    return str(version).lstrip("v") if version else DEFAULT_VLLM_VERSION


def without_pod_flags(args: list[str]) -> list[str]:
    """`args` minus POD_FLAGS, written as `--flag=value` or as `--flag value`."""
    out: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            if not arg.startswith("-"):
                continue
        name = arg.split("=", 1)[0]
        if name in POD_FLAGS:
            skip_value = "=" not in arg
            continue
        out.append(arg)
    return out


def vllm_serve_args(plan: Plan, settings: LaunchSettings) -> tuple[list[str], list[str]]:
    """The `vllm serve` arguments after the model for this plan (no host, port or multi-node flags), and notes.

    What `launch.engine=vllm` renders for this machine (runner.launch.render.vllm_commands): a vLLM plan's
    exact flags (plan.engine.flags, refused in one line when the block is not whole), a runner plan's
    translation with a note. launch.vllm_args come last, as on this machine.
    """
    engine = plan_engine(plan)
    notes: list[str] = []
    if not is_vllm_plan(plan):
        # Noted, not refused: the translation is the one `launch.engine=vllm` makes of this plan on one machine,
        # and its flags still say the plan's own numbers; only vLLM's memory rules were not applied.
        sized_for = engine.get("name") or "shardwise's runner"
        notes.append(
            f"the plan was sized for {sized_for}, not vLLM: its context and sequences are rendered as they are but "
            "vLLM's memory rules were not checked (the pods may not start); re-plan without plan_file for vLLM's"
        )
    # the same `vllm serve` line as on one machine (a vLLM plan's engine.flags, checked whole, plus the served name)
    commands, more = L.vllm_commands(replace(plan, engine=engine), replace(settings, vllm_args=[], master_addr=None))
    argv = list(commands[-1].argv)
    if argv[:3] != ["vllm", "serve", plan.model.source]:  # pragma: no cover - render.py changed its shape
        raise AssertionError(f"runner.launch.render.vllm_commands no longer ends in `vllm serve MODEL`: {argv[:3]}")
    args = argv[3:]
    notes += more
    return [*without_pod_flags(args), *map(str, settings.vllm_args)], notes


def is_vllm_plan(plan: Plan) -> bool:
    """The plan was sized by vLLM's rules (planned with launch.engine=vllm or launch.target=kubernetes)."""
    return plan_engine(plan).get("name") == "vllm"


def serving_sizes(plan: Plan) -> tuple[int, int]:
    """(--max-model-len, --max-num-seqs) the manifests give vLLM: the engine block's, else the plan's limits."""
    engine = plan_engine(plan)
    if is_vllm_plan(plan):
        return int(engine["max_model_len"]), int(engine["max_num_seqs"])
    return plan.limits.context_tokens, plan.limits.sessions


def gpus_per_pod(plan: Plan) -> int:
    """GPUs one pod holds: vLLM's tp x pp ranks spread evenly over the plan's nodes, one pod per node."""
    return L.process_shape(plan).procs_per_node


def gpu_names(plan: Plan) -> list[str]:
    """Names of the GPUs the plan puts work on (every GPU of the plan when its budget names none)."""
    devices = plan.hardware.get("devices") or []
    if is_vllm_plan(plan):
        # vLLM's budget is one GPU's (they are alike); its ranks take the first GPUs of each node, as a pod would
        per_node = gpus_per_pod(plan)
        picked = [d for n in {d.get("node", 0) for d in devices} for d in node_devices(devices, n)[:per_node]]
        return sorted({str(d.get("name", "")) for d in picked or devices})
    used = {(b.node, str(b.device)) for b in plan.budget if str(b.device).isdigit()}
    picked = [d for d in devices if (d.get("node", 0), str(d.get("id"))) in used] or devices
    return sorted({str(d.get("name", "")) for d in picked})


def node_devices(devices: list[dict], node: int) -> list[dict]:
    """The devices of one node in CUDA order (by id)."""
    return sorted((d for d in devices if d.get("node", 0) == node), key=lambda d: int(d.get("id", 0)))


def gpu_product(plan: Plan, k8s: KubernetesSettings) -> tuple[str, str]:
    """The nvidia.com/gpu.product value to select nodes by, and why.

    GPU feature discovery writes the NVML device name with every space replaced by '-' (NVIDIA
    k8s-device-plugin, internal/lm/resource.go productLabel), so "NVIDIA H100 80GB HBM3" is
    "NVIDIA-H100-80GB-HBM3"; our plans carry NVML's names (probe, snapshots, and tiers as nvidia-smi prints them).
    """
    if k8s.gpu_product:
        return k8s.gpu_product, "launch.kubernetes.gpu_product"
    names = gpu_names(plan)
    if len(names) != 1:
        raise ShardwiseError(
            f"the plan uses {len(names)} kinds of GPU ({', '.join(names) or 'none'}) and a pod selects one: "
            "set launch.kubernetes.gpu_product=LABEL (see `kubectl get nodes -L nvidia.com/gpu.product`)"
        )
    product = names[0].strip().replace(" ", "-")
    if len(product) > 63 or not re.fullmatch(LABEL_VALUE, product):
        raise ShardwiseError(
            f"GPU name {names[0]!r} does not make a node label value: set launch.kubernetes.gpu_product=LABEL "
            "(see `kubectl get nodes -L nvidia.com/gpu.product`)"
        )
    return product, f"GPU feature discovery labels {names[0]!r} nodes {GPU_PRODUCT_LABEL}={product}"


def has_tp_plan(model_type: str) -> bool:
    """transformers has a tensor-parallel plan for model_type: the planner's table for known families, else ask it."""
    from planner.model.architectures import FAMILIES

    family = FAMILIES.get(model_type)
    return family.has_tp_plan if family else L.parallel_plans(model_type)[0]


def check_plan(plan: Plan) -> None:
    """Refuse, in one line, a plan vLLM on Kubernetes cannot run as the plan says."""
    if plan.strategy in ("cpu", "offload") or not plan.hardware.get("devices"):
        raise ShardwiseError(
            f"this plan is {plan.strategy} (part or all of it off the GPU): launch.target=kubernetes renders vLLM "
            "on GPUs; plan for the cluster's GPUs, e.g. hardware=h100_80gb hardware.count=8"
        )
    if any(d.get("mig") for d in plan.hardware.get("devices", [])):
        # a slice is another resource (nvidia.com/mig-<profile>) under GPU feature discovery's mixed strategy
        raise ShardwiseError(
            "this plan runs on MIG slices; launch.target=kubernetes requests whole GPUs (nvidia.com/gpu): plan for "
            "a whole-GPU tier, e.g. hardware=a100_80gb"
        )
    # the runner's rule (planner.place.search); vLLM has its own tensor-parallel layers, and its planner checked them
    if plan.tp_size > 1 and not is_vllm_plan(plan) and not has_tp_plan(plan.model.model_type):
        raise ShardwiseError(
            f"this plan is tensor parallel {plan.tp_size} over {plan.nodes} node(s), but "
            f"{plan.model.model_type} ({plan.model.name}) has no tensor-parallel plan in transformers: "
            "re-plan with policy.strategy=auto"
        )
    L.process_shape(plan)  # tp x pp divides over the nodes, tensor parallel stays inside a node


def object_name(plan: Plan, k8s: KubernetesSettings) -> str:
    """launch.kubernetes.name, else vllm-<model name> as a DNS label (lower case, '-', at most 40 characters)."""
    if k8s.name:
        return k8s.name
    stem = re.sub(r"[^a-z0-9]+", "-", plan.model.name.lower()).strip("-")
    return ("vllm-" + stem)[:40].rstrip("-")


def k8s_literal(text: str) -> str:
    """`text` in a container's command or env with `$(VAR)` kept literal (Kubernetes expands it, `$$` escapes)."""
    return text.replace("$(", "$$(")


# --- objects -----------------------------------------------------------------------------------


def container(name: str, image: str, command: list[str], env: list[dict], gpus: int, port: int | None) -> dict:
    """One vLLM container holding `gpus` GPUs; with a `port`, it serves HTTP there and says when it is ready."""
    spec = {
        "name": name,
        "image": image,
        "command": command,
        "env": env,
        "resources": {"limits": {GPU_RESOURCE: gpus}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if port is not None:
        spec["ports"] = [{"name": SERVING_PORT_NAME, "containerPort": port, "protocol": "TCP"}]
        # Readiness only: a liveness probe would kill a pod still loading weights, which takes minutes.
        spec["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": SERVING_PORT_NAME},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 3,
        }
    return spec


def pod_spec(containers: list[dict], product: str, shm_size_gib: int) -> dict:
    """A pod on a node with the plan's GPU model, with a memory-backed /dev/shm."""
    return {
        "containers": containers,
        "nodeSelector": {GPU_PRODUCT_LABEL: product},
        # vLLM's workers and NCCL share memory through /dev/shm, which a container gets only 64 MiB of
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_gib}Gi"}}],
    }


def environment(plan: Plan, k8s: KubernetesSettings) -> list[dict]:
    """The plan's launch environment, then HF_TOKEN read from the Secret (the token never enters the manifest)."""
    env = [{"name": key, "value": k8s_literal(value)} for key, value in sorted(L.launch_env(plan).items())]
    if k8s.hf_token_secret:
        # optional: a public model starts without the Secret; a gated one fails in vLLM's log with a 401
        ref = {"name": k8s.hf_token_secret, "key": k8s.hf_token_key, "optional": True}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env


def render(plan: Plan, settings: LaunchSettings) -> Rendered:
    """The manifests for `plan`: [LeaderWorkerSet | Deployment, Service], with notes on what was decided."""
    check_plan(plan)
    k8s = settings.kubernetes
    name = object_name(plan, k8s)
    gpus = gpus_per_pod(plan)
    product, product_reason = gpu_product(plan, k8s)
    version = vllm_version(plan)
    image = k8s.image or f"{IMAGE_REPOSITORY}:v{version}"
    serve_args, notes = vllm_serve_args(plan, settings)  # first: it refuses a vLLM engine block that is not whole
    max_model_len, max_num_seqs = serving_sizes(plan)
    notes = [
        f"{plan.nodes} pod(s) of {gpus} GPU(s) per copy (tp {plan.tp_size} x pp {plan.pp_size}), "
        f"{k8s.replicas} copy(ies); {product_reason}",
        f"image {image}" + ("" if k8s.image else f" (the vLLM version the plan assumes, {version})"),
        f"vllm binds 0.0.0.0:{settings.port} inside the pod so the Service reaches it; the Service is ClusterIP "
        "(inside the cluster only)",
        *notes,
    ]
    source = Path(plan.model.source)
    if source.is_absolute() or source.exists():
        notes.append(f"model source {plan.model.source!r} is a local path: the pods must mount it at that path")
    serve = ["vllm", "serve", k8s_literal(plan.model.source), *map(k8s_literal, serve_args)]
    serve += ["--host=0.0.0.0", f"--port={settings.port}"]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "shardwise"}
    summary = (
        f"{plan.model.name}: tp {plan.tp_size} x pp {plan.pp_size} over {plan.nodes} node(s) of {gpus} GPU(s), "
        f"max model len {max_model_len} tokens, max num seqs {max_num_seqs}"
    )
    if is_vllm_plan(plan):
        engine = plan_engine(plan)
        summary += (
            f"; vLLM {engine['version']} should print {engine['kv_cache_tokens']} KV cache tokens, "
            f"{engine['max_concurrency']}x max concurrency"
        )
    metadata = {"name": name, "namespace": k8s.namespace, "labels": labels, "annotations": {"shardwise/plan": summary}}
    env = environment(plan, k8s)
    if plan.nodes > 1:
        workload, selector = leader_worker_set(plan, settings, metadata, serve, env, image, gpus, product)
    else:
        pod = pod_spec([container("vllm", image, serve, env, gpus, settings.port)], product, k8s.shm_size_gib)
        workload = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": k8s.replicas,
                "selector": {"matchLabels": dict(labels)},
                # a rolling update would need a spare GPU node for the new pod while the old one holds its GPUs
                "strategy": {"type": "Recreate"},
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
            },
        }
        selector = dict(labels)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**metadata, "labels": dict(labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": SERVING_PORT_NAME, "port": settings.port, "targetPort": SERVING_PORT_NAME}],
        },
    }
    return Rendered(objects=(workload, service), notes=tuple(notes))


def leader_worker_set(
    plan: Plan, settings: LaunchSettings, metadata: dict, serve: list[str], env: list[dict], image, gpus, product
) -> tuple[dict, dict]:
    """One LWS group per replica: the leader serves HTTP, `size - 1` workers hold the other nodes' ranks."""
    k8s = settings.kubernetes
    if k8s.multinode_backend == MultiNodeBackend.mp:
        # vLLM's own LWS guide: every pod runs vllm serve; the leader is node 0 and serves, workers are headless
        group = ["--distributed-executor-backend=mp", f"--nnodes={plan.nodes}", "--master-addr=$(LWS_LEADER_ADDRESS)"]
        leader_command = [*serve, *group, "--node-rank=0"]
        worker_command = [*serve, *group, "--node-rank=$(LWS_WORKER_INDEX)", "--headless"]
    else:
        # a Ray cluster per group: the leader starts its head, then vllm serve places the ranks on the joined workers
        import shlex

        ray_head = ["ray", "start", "--head", f"--port={settings.ray_port}"]
        vllm = [*serve, "--distributed-executor-backend=ray"]
        leader_command = ["sh", "-c", f"{shlex.join(ray_head)} && exec {shlex.join(vllm)}"]
        worker_command = ["ray", "start", f"--address=$(LWS_LEADER_ADDRESS):{settings.ray_port}", "--block"]
    labels = metadata["labels"]
    shm = k8s.shm_size_gib
    leader = pod_spec([container("vllm-leader", image, leader_command, env, gpus, settings.port)], product, shm)
    worker = pod_spec([container("vllm-worker", image, worker_command, env, gpus, None)], product, shm)
    workload = {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": {
            "replicas": k8s.replicas,
            "leaderWorkerTemplate": {
                "size": plan.nodes,
                # a lost pod breaks its group's NCCL / Ray ranks: restart the whole group together
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": {"labels": {**labels, "role": "leader"}}, "spec": leader},
                "workerTemplate": {"metadata": {"labels": {**labels, "role": "worker"}}, "spec": worker},
            },
        },
    }
    return workload, {LWS_NAME_LABEL: metadata["name"], "role": "leader"}


# --- YAML --------------------------------------------------------------------------------------


# Plain scalars that some YAML reader takes for something other than a string, beyond what PyYAML's
# YAML 1.1 resolver already quotes: the y/n booleans of YAML 1.1 (kubectl's go-yaml reads them so),
# YAML 1.2 / Go numbers (1e3, 0o17, +12) and infinities. PyYAML has no switch for these, hence by hand.
_AMBIGUOUS = re.compile(
    r"[yYnN]|[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|[-+]?0x[0-9a-fA-F]+"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def to_yaml(objects) -> str:
    """One YAML document per object, `---` before each; strings any YAML reader could misread are quoted."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # no &id001 anchors for dicts the objects share
            return True

    def represent_str(dumper, value: str):
        style = "'" if _AMBIGUOUS.fullmatch(value) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    return yaml.dump_all(list(objects), Dumper=Dumper, explicit_start=True, sort_keys=False, default_flow_style=False)


# --- apply -------------------------------------------------------------------------------------


def manifest_path(plan_path: Path) -> Path:
    """Where the manifests are written: beside the plan, `<plan stem>.k8s.yaml`."""
    return plan_path.with_name(plan_path.stem + ".k8s.yaml")


def kubectl_ready() -> str:
    """kubectl's path when it is on PATH and has a current context, else a one-line error saying which is missing."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise ShardwiseError(
            "kubectl is not on PATH, so nothing was applied: install kubectl, or keep launch.dry_run=true and "
            "apply the printed YAML where kubectl runs"
        )
    try:
        found = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ShardwiseError(f"`kubectl config current-context` did not run ({exc}): nothing was applied") from None
    if found.returncode != 0 or not found.stdout.strip():
        why = (found.stderr.strip().splitlines() or ["no context"])[-1][:200]
        raise ShardwiseError(
            f"kubectl has no current context ({why}), so nothing was applied: "
            "pick a cluster with `kubectl config use-context NAME`"
        )
    return kubectl


def launch(plan: Plan, plan_path: Path, settings: LaunchSettings, consent: bool) -> int:
    """Render, write beside the plan, then print (dry run: the YAML alone on stdout) or `kubectl apply -f` it."""
    import subprocess
    import sys

    from planner.jsonfile import write_text_atomic

    rendered = render(plan, settings)
    text = rendered.yaml()
    path = manifest_path(Path(plan_path))
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise ShardwiseError(
            f"cannot write the manifests to {str(path)!r} ({exc.strerror or exc}): put the plan in a writable directory"
        ) from None
    for note in rendered.notes:
        print(f"shardwise launch: note: {note}", file=sys.stderr)
    if settings.dry_run:
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"shardwise launch: wrote {path}; apply it with `kubectl apply -f {path}`", file=sys.stderr)
        return 0
    from runner.engine.preflight import check_remote_code

    check_remote_code(plan, consent)
    kubectl = kubectl_ready()
    print(f"shardwise launch: {kubectl} apply -f {path}", file=sys.stderr, flush=True)
    return subprocess.run([kubectl, "apply", "-f", str(path)]).returncode
