"""Offline checks of rendered Kubernetes objects: the LWS CRD schema made strict, core kinds via kubernetes-validate.

`tests/data/k8s/leaderworkerset.schema.json` is the CRD's openAPIV3Schema (kubernetes-sigs/lws
config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml at commit 060ab4d, Apache-2.0).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

LWS_SCHEMA = Path(__file__).parent / "data" / "k8s" / "leaderworkerset.schema.json"
# Kubernetes releases whose published schemas the core kinds must pass (kubernetes-validate ships them)
CORE_VERSIONS = ("1.29.0", "1.37.0")


def strict(schema):
    """`schema` with additionalProperties: false wherever it lists properties and leaves other keys open.

    What a strict validator does (kubectl's --validate=strict): a misspelled key fails instead of being
    dropped. Objects marked x-kubernetes-preserve-unknown-fields, or with their own additionalProperties
    (maps such as labels and resource limits), keep what the schema says.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def lws_validator():
    import jsonschema

    crd = json.loads(LWS_SCHEMA.read_text())
    schema = strict(copy.deepcopy(crd["openAPIV3Schema"]))
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


def validate(obj: dict) -> None:
    """Raise when `obj` breaks its schema: the strict LWS CRD schema, or the published core schemas."""
    if obj["kind"] == "LeaderWorkerSet":
        assert obj["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
        lws_validator().validate(obj)
        return
    import kubernetes_validate

    for version in CORE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def flag(argv: list[str], name: str) -> str:
    """The value of `--name` in an argv, written `--name=value` or `--name value`; exactly once."""
    found = []
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            found.append(arg.split("=", 1)[1])
        elif arg == name and i + 1 < len(argv):
            found.append(argv[i + 1])
    assert len(found) == 1, f"{name} appears {len(found)} times in {argv}"
    return found[0]


def serving_container(workload: dict) -> dict:
    """The container that runs `vllm serve` with HTTP: the Deployment's, or the LWS leader's."""
    spec = workload["spec"]
    if workload["kind"] == "LeaderWorkerSet":
        return spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    return spec["template"]["spec"]["containers"][0]


def vllm_argv(container: dict) -> list[str]:
    """`vllm serve ...` from a container: its command, or the part after `exec` of a `sh -c` line."""
    import shlex

    command = list(container["command"])
    if command[:2] == ["sh", "-c"]:
        command = shlex.split(command[2].split("&& exec ", 1)[1])
    assert command[:2] == ["vllm", "serve"], command
    return command


def numbers(objects: list[dict]) -> dict:
    """What the manifests ask for, read back from them: pods per group, GPUs per pod, vLLM's sizes."""
    workload = objects[0]
    container = serving_container(workload)
    argv = vllm_argv(container)
    if workload["kind"] == "LeaderWorkerSet":
        template = workload["spec"]["leaderWorkerTemplate"]
        pods = template["size"]
        worker_gpus = template["workerTemplate"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        assert worker_gpus == container["resources"]["limits"]["nvidia.com/gpu"]
    else:
        pods = 1
    return {
        "pods_per_group": pods,
        "gpus_per_pod": int(container["resources"]["limits"]["nvidia.com/gpu"]),
        "tp": int(flag(argv, "--tensor-parallel-size")),
        "pp": int(flag(argv, "--pipeline-parallel-size")),
        "max_model_len": int(flag(argv, "--max-model-len")),
        "max_num_seqs": int(flag(argv, "--max-num-seqs")),
        "replicas": workload["spec"]["replicas"],
    }
