"""launch.target=kubernetes: golden manifests, strict offline schema validation, numbers read back against the plan.

Golden files live in tests/data/k8s/ (rewrite them with SHARDWISE_UPDATE_GOLDEN=1 after a deliberate
change, and review the diff); they render real plans sized by vLLM's rules, as `launch.target=kubernetes`
makes them. Hand-built plans (`h100_plan`) stand for plan files the planner would not write: sized for
the runner, or refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
import yaml
from k8s_check import flag, numbers, serving_container, strict, validate, vllm_argv

from planner.config.compose import make_plan
from planner.config.schema import KubernetesSettings, LaunchSettings, MultiNodeBackend, check_kubernetes
from planner.errors import ShardwiseError
from planner.plan import DeviceBudget, Limits, ModelInfo, Plan, Quantization
from runner.launch import kubernetes as K
from runner.launch.render import vllm_commands

GOLDEN = Path(__file__).parent / "data" / "k8s"
H100 = "NVIDIA H100 80GB HBM3"
H100_TOTAL_BYTES = 85_520_809_984  # 81559 MiB as nvidia-smi prints it
H100_USABLE_BYTES = 83_810_393_785  # what the planner leaves usable on an idle H100 tier GPU


def h100_plan(name, source, model_type, *, strategy, nodes=1, gpus=1, tp=1, pp=1, context, sessions=1, env=None):
    devices = [
        {
            "id": i,
            "uuid": "",
            "name": H100,
            "total_bytes": H100_TOTAL_BYTES,
            "free_bytes": H100_TOTAL_BYTES,
            "compute_capability": "9.0",
            "node": n,
        }
        for n in range(nodes)
        for i in range(gpus)
    ]
    budget = tuple(
        DeviceBudget(str(i), 0, 0, 0, 0, 0, usable=H100_USABLE_BYTES, free_after=0, node=n)
        for n in range(nodes)
        for i in range(gpus)
    )
    from planner.plan import Launch

    return Plan(
        model=ModelInfo(
            name=name,
            source=source,
            model_type=model_type,
            params_total=0,
            weight_bytes=0,
            checkpoint_bytes=None,
            dtype="bfloat16",
            quantization=Quantization(method=None, kept=False, reason="shipped unquantized"),
        ),
        hardware={"source": "h100_80gb", "fingerprint": "hw-h100", "devices": devices, "nodes": nodes},
        strategy=strategy,
        nodes=nodes,
        tp_size=tp,
        pp_size=pp,
        device_map={"": 0} if strategy == "single_gpu" else {},
        max_memory={},
        budget=budget,
        limits=Limits(context_tokens=context, sessions=sessions, max_new_tokens=256, kv_bytes_per_token=0),
        fits=True,
        kv_cache_dtype="bfloat16",
        launch=Launch(command="", env=env or {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    )


def kubernetes_plan(model: str, *overrides: str) -> Plan:
    """A real plan as `shardwise launch launch.target=kubernetes` makes it: sized by vLLM, sessions=auto."""
    from planner.config.compose import make_plan

    return make_plan(model, "h100_80gb", ["launch.target=kubernetes", "policy.sessions=auto", *overrides])


# Real vLLM plans for the golden shapes (cached: planning takes a second; tests change them only with replace()).
PLANS = {
    "llama8b_1gpu": cache(lambda: kubernetes_plan("llama-3.1-8b")),
    "llama70b_1x8": cache(
        lambda: kubernetes_plan("llama-3.1-70b", "hardware.count=8", "policy.strategy=tensor_parallel")
    ),
    "llama70b_2x8": cache(
        lambda: kubernetes_plan(
            "llama-3.1-70b", "hardware.count=8", "hardware.nodes=2", "policy.strategy=tensor_parallel"
        )
    ),
}
SHAPE = {"llama8b_1gpu": (1, 1, 1), "llama70b_1x8": (1, 8, 1), "llama70b_2x8": (2, 8, 2)}  # nodes, tp, pp

# A plan sized for shardwise's runner (no vLLM engine block), as plan files from before issue 20 are.
RUNNER_2X8 = cache(
    lambda: h100_plan(
        "llama-3.1-70b",
        "meta-llama/Llama-3.1-70B-Instruct",
        "llama",
        strategy="tensor_parallel",
        nodes=2,
        gpus=8,
        tp=8,
        pp=2,
        context=131072,
        sessions=16,
    )
)


def assert_numbers_are_the_plans(plan: Plan, objects: list[dict]) -> dict:
    """Every number the manifests give vLLM and Kubernetes, read back, is the plan's (and its engine block's)."""
    engine = plan.engine
    assert engine["name"] == "vllm" and engine["flags"], "a Kubernetes render is of a plan sized by vLLM"
    got = numbers(objects)
    assert got["pods_per_group"] == plan.nodes
    assert got["gpus_per_pod"] * plan.nodes == got["tp"] * got["pp"] == plan.tp_size * plan.pp_size
    assert (got["tp"], got["pp"]) == (engine["tensor_parallel_size"], engine["pipeline_parallel_size"])
    assert got["max_model_len"] == engine["max_model_len"] == plan.limits.context_tokens
    assert got["max_num_seqs"] == engine["max_num_seqs"]
    argv = vllm_argv(serving_container(objects[0]))
    assert float(flag(argv, "--gpu-memory-utilization")) == pytest.approx(engine["gpu_memory_utilization"], abs=0.005)
    assert int(flag(argv, "--max-num-batched-tokens")) == engine["max_num_batched_tokens"]
    return got


def rendered(plan: Plan, **k8s) -> list[dict]:
    settings = LaunchSettings(kubernetes=KubernetesSettings(**k8s))
    return list(K.render(plan, settings).objects)


@pytest.mark.parametrize("case", sorted(PLANS))
def test_golden_manifests(case):
    """1 GPU -> Deployment; 8 GPUs on one node -> Deployment of 8-GPU pods; 2 nodes x 8 -> LeaderWorkerSet."""
    text = K.render(PLANS[case](), LaunchSettings()).yaml()
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("SHARDWISE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    kinds = [doc["kind"] for doc in yaml.safe_load_all(text)]
    assert kinds == (["LeaderWorkerSet", "Service"] if case == "llama70b_2x8" else ["Deployment", "Service"])


@pytest.mark.parametrize("case", sorted(PLANS))
def test_every_object_validates_strictly_and_its_numbers_are_the_plans(case):
    plan = PLANS[case]()
    assert (plan.nodes, plan.tp_size, plan.pp_size) == SHAPE[case]
    objects = rendered(plan, replicas=3)
    for obj in objects:
        validate(obj)
    assert_numbers_are_the_plans(plan, objects)
    assert numbers(objects)["replicas"] == 3


def test_two_node_group_restarts_together_and_workers_join_the_leader():
    plan = PLANS["llama70b_2x8"]()
    lws, service = rendered(plan)
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = vllm_argv(serving_container(lws))
    worker = template["workerTemplate"]["spec"]["containers"][0]["command"]
    assert flag(leader, "--nnodes") == flag(worker, "--nnodes") == str(plan.nodes)
    assert flag(leader, "--node-rank") == "0" and flag(worker, "--node-rank") == "$(LWS_WORKER_INDEX)"
    assert flag(worker, "--master-addr") == "$(LWS_LEADER_ADDRESS)" and "--headless" in worker
    assert "readinessProbe" not in template["workerTemplate"]["spec"]["containers"][0]  # no HTTP on workers
    # the Service reaches the leader only: its selector is a subset of the leader's labels (+ the LWS name label)
    leader_labels = {**template["leaderTemplate"]["metadata"]["labels"], K.LWS_NAME_LABEL: lws["metadata"]["name"]}
    assert service["spec"]["selector"].items() <= leader_labels.items()
    assert service["spec"]["selector"]["role"] == "leader"
    assert template["workerTemplate"]["metadata"]["labels"]["role"] != "leader"


def test_ray_backend_starts_a_head_on_the_leader_and_workers_join_it():
    plan = PLANS["llama70b_2x8"]()
    lws, _ = rendered(plan, multinode_backend=MultiNodeBackend.ray)
    validate(lws)
    leader = serving_container(lws)["command"]
    assert leader[:2] == ["sh", "-c"] and leader[2].startswith("ray start --head --port=6379 && exec vllm serve ")
    assert flag(vllm_argv(serving_container(lws)), "--distributed-executor-backend") == "ray"
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["command"]
    assert worker == ["ray", "start", "--address=$(LWS_LEADER_ADDRESS):6379", "--block"]


def test_pod_has_gpu_selector_shm_token_secret_and_readiness_on_the_serving_port():
    plan = PLANS["llama70b_1x8"]()
    deployment, service = rendered(plan, hf_token_secret="my-hf", hf_token_key="hf_token", shm_size_gib=32)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "my-hf", "key": "hf_token", "optional": True}
    assert all("value" not in e for e in container["env"] if e["name"] == "HF_TOKEN")  # never the token itself
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert flag(vllm_argv(container), "--host") == "0.0.0.0"
    names = [
        e["name"] for e in rendered(plan, hf_token_secret=None)[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    ]
    assert "HF_TOKEN" not in names


def test_image_tag_follows_the_vllm_version_the_plan_assumes_and_the_setting_overrides_it():
    runner_plan = RUNNER_2X8()  # no engine block: the version the renderer assumes
    assert serving_container(rendered(runner_plan)[0])["image"] == f"vllm/vllm-openai:v{K.DEFAULT_VLLM_VERSION}"
    plan = PLANS["llama8b_1gpu"]()
    assert serving_container(rendered(plan)[0])["image"] == f"vllm/vllm-openai:v{plan.engine['version']}"
    newer = replace(plan, engine={**plan.engine, "version": "0.21.1"})
    assert serving_container(rendered(newer)[0])["image"] == "vllm/vllm-openai:v0.21.1"
    assert serving_container(rendered(plan, image="registry.local/vllm:mine")[0])["image"] == "registry.local/vllm:mine"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: {"name": "vllm", "version": "0.21.1", "flags": []}, "engine block lacks gpu_memory_utilization"),
        (lambda e: {k: v for k, v in e.items() if k != "kv_cache_tokens"}, "engine block lacks kv_cache_tokens"),
        (lambda e: {**e, "max_num_seqs": "64"}, "engine.max_num_seqs='64' has the wrong type"),
        (lambda e: {**e, "flags": []}, "engine.flags must be a non-empty list"),
        (
            lambda e: {**e, "flags": [f for f in e["flags"] if not f.startswith("--max-num-seqs")]},
            "--max-num-seqs=None but the plan says",
        ),
        (
            lambda e: {**e, "flags": [f.replace("=8", "=4", 1) if "tensor" in f else f for f in e["flags"]]},
            "--tensor-parallel-size=4 but the plan says 8",
        ),
    ],
)
def test_a_hand_edited_vllm_engine_block_is_a_one_line_error_on_every_target(change, message):
    plan = PLANS["llama70b_2x8"]()
    edited = replace(plan, engine=change(dict(plan.engine)))
    for render_it in (lambda: K.render(edited, LaunchSettings()), lambda: vllm_commands(edited, LaunchSettings())):
        with pytest.raises(ShardwiseError, match=re.escape(message)) as info:
            render_it()
        assert "\n" not in str(info.value) and "re-plan with launch.engine=vllm" in str(info.value)


def test_plan_engine_flags_are_used_as_they_are_minus_what_the_pod_decides():
    plan = PLANS["llama70b_2x8"]()
    flags = [*plan.engine["flags"]]
    tp = flags.index("--tensor-parallel-size=8")
    flags[tp : tp + 1] = ["--tensor-parallel-size", "8"]  # the two-word form is read the same way
    plan = replace(plan, engine={**plan.engine, "flags": [*flags, "--host", "127.0.0.1", "--port=9000"]})
    settings = LaunchSettings(vllm_args=["--enable-prefix-caching"])
    args, _ = K.vllm_serve_args(plan, settings)
    assert args == ["--served-model-name=llama-3.1-70b", *flags, "--enable-prefix-caching"]
    argv = vllm_argv(serving_container(list(K.render(plan, settings).objects)[0]))
    assert flag(argv, "--host") == "0.0.0.0" and flag(argv, "--port") == "8000"


def test_a_plan_sized_for_the_runner_renders_todays_translation_with_a_note_saying_so():
    plan = RUNNER_2X8()
    args, notes = K.vllm_serve_args(plan, LaunchSettings())
    assert args == [
        "--served-model-name=llama-3.1-70b",
        "--tensor-parallel-size=8",
        "--pipeline-parallel-size=2",
        "--max-model-len=131072",
        "--max-num-seqs=16",
        "--gpu-memory-utilization=0.98",
        "--dtype=bfloat16",
        "--kv-cache-dtype=auto",
    ]
    assert any("sized for shardwise's runner, not vLLM" in note for note in notes)
    sized = K.render(PLANS["llama70b_2x8"](), LaunchSettings()).notes
    assert not any("not vLLM" in note for note in sized)


def test_vllm_plans_are_not_held_to_the_runners_tensor_parallel_rule():
    """vLLM has its own TP layers for gpt2 (12 heads / 4): its plan renders; sized for the runner, it does not."""
    plan = make_plan("gpt2", "h100_80gb", ["hardware.count=4", "policy.strategy=tensor_parallel", "launch.engine=vllm"])
    assert plan.tp_size == 4 and plan.engine["name"] == "vllm"
    assert_numbers_are_the_plans(plan, rendered(plan))
    runner = h100_plan("gpt2", "openai-community/gpt2", "gpt2", strategy="tensor_parallel", gpus=4, tp=4, context=1024)
    with pytest.raises(ShardwiseError, match="has no tensor-parallel plan in transformers"):
        K.render(runner, LaunchSettings())


# --- YAML ----------------------------------------------------------------------------------------

AMBIGUOUS = ["on", "off", "On", "OFF", "y", "Y", "n", "N", "yes", "no", "true", "False", "null", "~", ""]
AMBIGUOUS += ["8", "1.5", "1e3", "0x1F", "012", "0o17", "1_000", ".5", "+12", ".inf", "-.Inf", ".nan", "12:30"]


@pytest.mark.parametrize("value", AMBIGUOUS)
def test_yaml_quotes_strings_a_yaml_reader_could_take_for_bools_numbers_or_null(value):
    text = K.to_yaml([{"v": value}])
    scalar = text.split("v: ", 1)[1].strip()
    assert scalar[0] in "'\"", text
    assert yaml.safe_load(text) == {"v": value}


@pytest.mark.parametrize("value", ["on", "y", "8", "1e3", "null", "$(HOME)"])
def test_env_values_from_the_plan_stay_strings_in_the_manifest(value):
    """Only LAUNCH_ENV_KEYS pass from a plan file (planner.plan); their values stay strings, `$(` stays literal."""
    plan = PLANS["llama8b_1gpu"]()
    env = {"PYTORCH_CUDA_ALLOC_CONF": value, "NOT_PASSED": "x"}
    text = K.render(replace(plan, launch=replace(plan.launch, env=env)), LaunchSettings()).yaml()
    deployment = next(yaml.safe_load_all(text))
    got = {
        e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e
    }
    assert got["PYTORCH_CUDA_ALLOC_CONF"] == value.replace("$(", "$$(")  # Kubernetes would expand $(HOME)
    assert "NOT_PASSED" not in got
    if "$" not in value:
        assert f"value: '{value}'" in text


def test_one_document_per_object_and_no_yaml_anchors():
    text = K.render(PLANS["llama70b_2x8"](), LaunchSettings()).yaml()
    assert text.count("---\n") == 2 and text.startswith("---\n")
    assert "&id" not in text and "*id" not in text


# --- strictness of the offline validation -----------------------------------------------------


def test_strict_lws_validation_fails_a_misspelled_key_anywhere():
    import jsonschema

    lws, _ = rendered(PLANS["llama70b_2x8"]())
    bad_spec = {**lws, "spec": {**lws["spec"], "replica": 1}}
    template = lws["spec"]["leaderWorkerTemplate"]
    bad_template = {**lws, "spec": {**lws["spec"], "leaderWorkerTemplate": {**template, "restartpolicy": "None"}}}
    container = dict(template["workerTemplate"]["spec"]["containers"][0], volumeMount=[])
    worker = {**template["workerTemplate"], "spec": {**template["workerTemplate"]["spec"], "containers": [container]}}
    bad_container = {**lws, "spec": {**lws["spec"], "leaderWorkerTemplate": {**template, "workerTemplate": worker}}}
    for bad in (bad_spec, bad_template, bad_container):
        with pytest.raises(jsonschema.ValidationError) as info:
            validate(bad)
        assert "Additional properties are not allowed" in info.value.message  # .message: str() prints the schema
    assert (
        strict({"properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True}).get("additionalProperties")
        is None
    )


def test_core_validation_fails_a_misspelled_key_and_a_wrong_type():
    import kubernetes_validate

    deployment, service = rendered(PLANS["llama8b_1gpu"]())
    typo = {**service, "spec": {**service["spec"], "selectr": {"a": "b"}}}
    template = deployment["spec"]["template"]
    pod = {**template["spec"], "nodeSelector": {"nvidia.com/gpu.product": 1}}
    wrong = {**deployment, "spec": {**deployment["spec"], "template": {**template, "spec": pod}}}
    for bad, why in ((typo, "Additional properties are not allowed"), (wrong, "is not of type")):
        with pytest.raises(kubernetes_validate.ValidationError) as info:
            validate(bad)
        assert why in info.value.message


# --- refusals and settings ------------------------------------------------------------------------


def test_refuses_tensor_parallel_across_nodes_for_an_architecture_without_a_tp_plan():
    """A hand-made plan the planner would refuse: gpt2 tp 8 x pp 2 over 2 nodes; one line, no manifest."""
    plan = h100_plan(
        "gpt2", "openai-community/gpt2", "gpt2", strategy="tensor_parallel", nodes=2, gpus=8, tp=8, pp=2, context=1024
    )
    with pytest.raises(ShardwiseError, match="gpt2 .* has no tensor-parallel plan in transformers") as info:
        K.render(plan, LaunchSettings())
    assert "\n" not in str(info.value)


def test_refuses_cpu_offload_and_mig_plans_and_mixed_gpus_without_a_product_setting():
    plan = PLANS["llama8b_1gpu"]()
    for strategy in ("cpu", "offload"):
        with pytest.raises(ShardwiseError, match="renders vLLM on GPUs"):
            K.render(replace(plan, strategy=strategy), LaunchSettings())
    devices = [dict(d) for d in PLANS["llama70b_1x8"]().hardware["devices"]]
    devices[3]["name"] = "NVIDIA H200"
    mixed = replace(PLANS["llama70b_1x8"](), hardware={**plan.hardware, "devices": devices})
    with pytest.raises(ShardwiseError, match="2 kinds of GPU"):
        K.render(mixed, LaunchSettings())
    # a vLLM plan's budget names one GPU for all alike: the GPUs its ranks take are still every one of the pod's
    tp4 = replace(mixed, tp_size=4, engine={**mixed.engine, "tensor_parallel_size": 4})
    assert K.gpu_names(tp4) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    devices[3]["name"], devices[5]["name"] = H100, "NVIDIA H200"  # a GPU a 4-rank pod does not take
    assert K.gpu_names(replace(tp4, hardware={**plan.hardware, "devices": devices})) == [H100]
    mig = [{**d, "mig": True} for d in plan.hardware["devices"]]
    with pytest.raises(ShardwiseError, match="MIG slices"):
        K.render(replace(plan, hardware={**plan.hardware, "devices": mig}), LaunchSettings())
    chosen = rendered(mixed, gpu_product="NVIDIA-H100-80GB-HBM3")[0]
    assert chosen["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"


@pytest.mark.parametrize(
    "name, product",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"),
        ("Tesla T4", "Tesla-T4"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA-GeForce-RTX-4090"),
    ],
)
def test_gpu_product_label_is_the_nvml_name_with_dashes_for_spaces(name, product):
    plan = PLANS["llama8b_1gpu"]()
    devices = [{**plan.hardware["devices"][0], "name": name}]
    assert (
        K.gpu_product(replace(plan, hardware={**plan.hardware, "devices": devices}), KubernetesSettings())[0] == product
    )


def test_every_shipped_gpu_tier_gives_a_valid_product_label():
    import re

    for path in sorted((Path(__file__).parents[1] / "conf" / "hardware").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data.get("kind") != "tier":
            continue
        product = str(data["name"]).replace(" ", "-")
        assert re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", product) and len(product) <= 63, path


@pytest.mark.parametrize(
    "k8s, message",
    [
        (KubernetesSettings(replicas=0), "launch.kubernetes.replicas=0 is out of range"),
        (KubernetesSettings(name="My_Model"), "launch.kubernetes.name='My_Model' is not a Kubernetes name"),
        (KubernetesSettings(namespace="-x"), "launch.kubernetes.namespace='-x' is not a Kubernetes name"),
        (KubernetesSettings(shm_size_gib=0), "launch.kubernetes.shm_size_gib=0 is out of range"),
        (KubernetesSettings(hf_token_secret="Bad Secret"), "is not a Secret name"),
        (KubernetesSettings(hf_token_key="a b"), "is not a Secret key"),
        (KubernetesSettings(gpu_product="NVIDIA H100"), "is not a label value"),
    ],
)
def test_settings_the_api_server_would_refuse_are_one_line_errors(k8s, message):
    with pytest.raises(ShardwiseError, match=message) as info:
        check_kubernetes(k8s)
    assert "\n" not in str(info.value)


def test_default_name_is_a_dns_label_from_the_model_name():
    plan = PLANS["llama70b_2x8"]()
    assert K.object_name(plan, KubernetesSettings()) == "vllm-llama-3-1-70b"
    long = replace(plan, model=replace(plan.model, name="Org/Some_Very.Long-Model-Name-That-Goes-On-And-On-v2"))
    name = K.object_name(long, KubernetesSettings())
    check_kubernetes(KubernetesSettings(name=name))
    assert name.startswith("vllm-org-some-very-long")


def test_plan_derived_dollar_references_are_escaped_in_the_command():
    plan = PLANS["llama8b_1gpu"]()
    plan = replace(plan, model=replace(plan.model, source="org/$(SECRET)-model"))
    argv = vllm_argv(serving_container(rendered(plan)[0]))
    assert argv[2] == "org/$$(SECRET)-model"


# --- real plans ------------------------------------------------------------------------------------

SHAPES = [
    ("llama-3.1-8b", "h100_80gb", ["policy.sessions=8"]),
    ("llama-3.1-70b", "h100_80gb", ["hardware.count=8", "policy.strategy=tensor_parallel", "policy.sessions=auto"]),
    (
        "llama-3.1-70b",
        "h100_80gb",
        ["hardware.count=8", "hardware.nodes=2", "policy.context_tokens=131072", "policy.sessions=16"],
    ),
    ("qwen3-8b", "l40s", ["hardware.count=2", "policy.context_tokens=40960", "policy.sessions=auto"]),
    ("qwen3-235b-a22b-fp8", "h100_80gb", ["hardware.count=4", "hardware.nodes=2", "policy.context_tokens=32768"]),
    ("mixtral-8x7b", "a100_40gb", ["hardware.count=2", "hardware.nodes=2", "policy.sessions=auto"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("model, hardware, overrides", SHAPES)
def test_planner_plans_render_with_their_own_numbers(model, hardware, overrides):
    """launch.target=kubernetes alone (no launch.engine) plans by vLLM's rules; every number renders as planned."""
    plan = make_plan(model, hardware, ["launch.target=kubernetes", *overrides])
    assert plan.fits
    objects = rendered(plan)
    for obj in objects:
        validate(obj)
    assert_numbers_are_the_plans(plan, objects)
    product = plan.hardware["devices"][0]["name"].replace(" ", "-")
    pod = (
        objects[0]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        if plan.nodes > 1
        else objects[0]["spec"]["template"]
    )
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": product}
    assert objects[0]["kind"] == ("LeaderWorkerSet" if plan.nodes > 1 else "Deployment")


def test_plan_verb_sizes_for_vllm_when_the_target_is_kubernetes_but_not_for_another_engine():
    assert make_plan("llama-3.1-8b", "h100_80gb", ["launch.target=kubernetes"]).engine["name"] == "vllm"
    assert make_plan("llama-3.1-8b", "h100_80gb", []).engine["name"] != "vllm"
