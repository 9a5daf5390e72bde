"""Models named by a Hugging Face hub id (`ORG/NAME`): their config files and tensor table, through huggingface_hub.

A plan needs no weights from the hub, only `config.json` (with `hf_quant_config.json` and
`generation_config.json` where the repo has them) and the table of tensors (name, dtype, shape,
bytes) that the safetensors headers hold. Config files go through `hf_hub_download`, so they land
in the normal HF cache; the headers come from `get_safetensors_metadata` (HTTP range reads of each
file's header, never the weights) and are kept as a small JSON table in huggingface_hub's assets
cache under the commit they describe. The second plan of a model is therefore offline.

With `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, the plan comes from the cache (the real
safetensors headers when a full `hf download` is there); a model that is not cached fails at once
with one line saying how to get it: no request is retried. huggingface_hub is imported here only,
and only for hub ids, so planning a profile never pays for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from planner.errors import ShardwiseError
from planner.model.headers import HEADERS_TABLE  # the table planner.model.headers reads back

_ASSETS_LIBRARY = "shardwise"
_OPTIONAL_FILES = ("hf_quant_config.json", "generation_config.json")
# The hub's own rule for repo ids (huggingface_hub.utils.validate_repo_id), with the namespace required.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a hub model id, `ORG/NAME` (it may still not exist)."""
    name = str(name)
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name and not name.endswith((".", "-"))


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    revision: str  # the commit sha every file and header came from
    config: dict  # config.json
    hf_quant_config: dict | None  # hf_quant_config.json (modelopt checkpoints), None when the repo has none
    generation_config: dict | None  # generation_config.json, None when the repo has none
    tensor_dir: str | None  # a directory planner.model.headers reads: the snapshot's files or the cached table
    provenance: tuple[tuple[str, str, str], ...]  # (what, value, reason): where each input came from


class _Unreachable(Exception):
    """The hub did not answer (no network, a timeout, a 5xx): the cache is the only source."""


def fetch(repo_id: str, revision: str | None = None) -> HubModel:
    """Config files and tensor table of `repo_id` at `revision` (a branch, tag or commit; None: main)."""
    from huggingface_hub import constants

    _quiet_http_logs()
    revision = revision or constants.DEFAULT_REVISION
    network = not constants.is_offline_mode()  # may we ask the hub at all
    why_cached = "" if network else "HF_HUB_OFFLINE is set"
    cached_config = _cached(repo_id, "config.json", revision)
    sha = None
    if _COMMIT.fullmatch(revision) and isinstance(cached_config, str):
        sha = revision  # a commit never changes: nothing to ask the hub
    elif network:
        try:
            sha = _remote_commit(repo_id, revision)
        except _Unreachable as exc:
            network, why_cached = False, f"the hub ({constants.ENDPOINT}) is unreachable ({exc})"
    if sha is None:
        if not isinstance(cached_config, str):
            raise _not_cached(repo_id, revision, why_cached)
        sha = Path(cached_config).parent.name  # .../snapshots/<commit>/config.json
    from_cache = isinstance(_cached(repo_id, "config.json", sha), str)
    # Downloading under the name asked for (a branch or tag) records it in the cache's refs/, which is
    # how an offline plan of the same name finds the commit again.
    config_path = _file(repo_id, "config.json", sha if from_cache or not network else revision, network)
    if config_path is None:
        raise _not_cached(repo_id, revision, why_cached)
    sha = Path(config_path).parent.name  # .../snapshots/<commit>/config.json
    where = (
        f"the HF cache (revision {sha}{'; ' + why_cached if why_cached else ''})"
        if from_cache
        else f"the hub (revision {sha})"
    )
    provenance = [("model source", f"{repo_id}@{sha[:12]}", f"config.json from {where}")]
    extras = {}
    for name in _OPTIONAL_FILES:
        path = _file(repo_id, name, sha, network)
        extras[name] = _read_json(path, repo_id) if path else None
        if extras[name] is not None:
            provenance.append((name, "read", f"{name} from {where}"))
    tensor_dir, tensor_reason = _tensor_table(repo_id, sha, Path(config_path).parent, network)
    provenance.append(("tensor table", "safetensors headers" if tensor_dir else "computed", tensor_reason))
    return HubModel(
        repo_id=repo_id,
        revision=sha,
        config=_read_json(config_path, repo_id),
        hf_quant_config=extras["hf_quant_config.json"],
        generation_config=extras["generation_config.json"],
        tensor_dir=tensor_dir,
        provenance=tuple(provenance),
    )


def _quiet_http_logs() -> None:
    """The HTTP client logs each request at INFO, which Hydra's handler prints on stdout: keep stdout for the plan."""
    import logging

    for name in ("httpx2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _cached(repo_id: str, filename: str, revision: str):
    """A path, the library's 'known absent' marker, or None (unknown), from the HF cache alone."""
    from huggingface_hub import try_to_load_from_cache

    return try_to_load_from_cache(repo_id, filename, revision=revision)


def _remote_commit(repo_id: str, revision: str) -> str:
    """The commit `revision` names now: one HEAD request, not retried, so an offline machine fails at once."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(repo_id, "config.json", revision=revision)
    try:
        meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status == 429:
            raise _Unreachable(f"HTTP {status}") from None
        raise _hub_error(exc, repo_id, revision) from None
    except (*_transport_errors(), OSError) as exc:  # no route, refused, timed out, offline mode
        raise _Unreachable(type(exc).__name__) from None
    if not meta.commit_hash:
        raise ShardwiseError(
            f"{constants.ENDPOINT} answered for {repo_id} without an X-Repo-Commit header: "
            "HF_ENDPOINT must point at a Hugging Face hub"
        )
    return meta.commit_hash


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's network errors (huggingface_hub moved from requests to httpx, then httpx2)."""
    for module in ("httpx2", "httpx"):
        try:
            return (__import__(module).TransportError,)
        except (ImportError, AttributeError):
            continue
    return ()


def _file(repo_id: str, filename: str, sha: str, online: bool) -> str | None:
    """Local path of `filename` at commit `sha`, downloaded when online and not cached; None when the repo lacks it."""
    cached = _cached(repo_id, filename, sha)
    if isinstance(cached, str):
        return cached
    if cached is not None or not online:  # the hub said it is absent, or we cannot ask
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, revision=sha)
    except RemoteEntryNotFoundError:
        return None
    except HfHubHTTPError as exc:
        raise _hub_error(exc, repo_id, sha) from None
    except (*_transport_errors(), OSError) as exc:  # the network went away after the first request
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ShardwiseError(
            f"cannot download {filename} of {repo_id} ({first}): check the network and plan again"
        ) from None


def _read_json(path: str, repo_id: str) -> dict:
    """A cached JSON file of `repo_id` through the same safe reader as a local one (size, nesting, digits, FIFOs)."""
    from planner.jsonfile import read_json

    return read_json(path, f"{Path(path).name} of {repo_id}", dict, "delete it from the HF cache and plan again")


# ---- the tensor table -------------------------------------------------------------------------
def _tensor_table(repo_id: str, sha: str, snapshot: Path, online: bool) -> tuple[str | None, str]:
    """(directory whose headers give the exact tensors, where they came from); (None, why) when none."""
    if _complete_safetensors(snapshot):
        return str(snapshot), "tensor table from the safetensors headers of the files in the HF cache"
    table_dir = _assets_dir(repo_id, sha)
    table = table_dir / HEADERS_TABLE if table_dir else None
    if table is not None and table.is_file():
        return _table_result(table, "cached")
    if not online:
        return None, (
            "tensor table not in the HF cache: bytes computed from config.json "
            f"(plan once online, or `hf download {repo_id}`, for the safetensors headers)"
        )
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    try:
        meta = get_safetensors_metadata(repo_id, revision=sha)
    except NotASafetensorsRepoError:
        files, note = {}, "the repo has no safetensors files"
    except SafetensorsParsingError as exc:
        return None, f"safetensors headers unreadable ({str(exc).splitlines()[0]}): bytes computed from config.json"
    except (*_transport_errors(), OSError) as exc:  # HfHubHTTPError too: config.json came, the headers did not
        return None, f"safetensors headers not fetched ({type(exc).__name__}): bytes computed from config.json"
    else:
        files, note = {name: _header_dict(m) for name, m in meta.files_metadata.items()}, ""
    if table is None:
        return None, "the HF assets cache is not writable: bytes computed from config.json"
    _write_atomic(table, {"repo_id": repo_id, "revision": sha, "note": note, "files": files})
    return _table_result(table, "fetched")


def _table_result(table: Path, how: str) -> tuple[str | None, str]:
    from planner.jsonfile import read_json

    try:
        data = read_json(table, "cached tensor table", dict)
    except ShardwiseError:
        return None, f"the cached tensor table {table} is unreadable (delete it): bytes computed from config.json"
    if not isinstance(data, dict) or not data.get("files"):
        return None, f"{data.get('note') or 'no safetensors headers'}: bytes computed from config.json"
    source = "read by range requests from the hub" if how == "fetched" else "cached from the hub"
    return str(table.parent), f"tensor table from the safetensors headers, {source}"


def _header_dict(file_metadata) -> dict:
    """One file's header in the safetensors JSON layout, from huggingface_hub's parsed form."""
    header = {
        name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
        for name, t in file_metadata.tensors.items()
    }
    if file_metadata.metadata:
        header["__metadata__"] = dict(file_metadata.metadata)
    return header


def _complete_safetensors(snapshot: Path) -> bool:
    """A full download: model.safetensors, or the index with every shard it names."""
    if (snapshot / "model.safetensors").is_file():
        return True
    index = snapshot / "model.safetensors.index.json"
    if not index.is_file():
        return False
    from planner.jsonfile import read_json

    try:
        shards = set(read_json(index, "safetensors index")["weight_map"].values())
    except (ShardwiseError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all((snapshot / name).is_file() for name in shards)


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The HF cache's directory of `repo_id` at commit `revision` when it holds config.json and every safetensors
    weight file (a full download), else None; from the cache alone. A commit never changes, so loading from that
    directory is loading what the hub would send, without asking it (a branch name is not trusted)."""
    if not revision or not _COMMIT.fullmatch(revision):
        return None
    config = _cached(repo_id, "config.json", revision)
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if _complete_safetensors(snapshot) else None


def check_weights_reachable(repo_id: str, revision: str | None, name: str = "") -> str:
    """Before a load (and before torch is imported): the weights of `repo_id` are in the HF cache, or the hub answers
    one request now; else a one-line ShardwiseError saying how to get them. transformers would otherwise retry every
    file for a minute or more when the network is down. Returns how the weights will come ("cache" or "hub")."""
    from huggingface_hub import constants

    _quiet_http_logs()
    wanted = revision or constants.DEFAULT_REVISION
    config = _cached(repo_id, "config.json", wanted)
    if isinstance(config, str) and _complete_safetensors(Path(config).parent):
        return "cache"
    label = f"{name} ({repo_id})" if name and name != repo_id else repo_id
    pin = f" --revision {revision}" if revision and revision != constants.DEFAULT_REVISION else ""
    get = f"`hf download {repo_id}{pin}`"
    if constants.HF_HUB_OFFLINE:
        raise ShardwiseError(
            f"{label} is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so nothing is "
            f"downloaded: run {get} with network access (same HF_HOME, HF_HUB_OFFLINE unset), or point model.path=DIR "
            "at a local copy"
        )
    try:
        _remote_commit(repo_id, wanted)
    except _Unreachable as why:
        raise ShardwiseError(
            f"{label} is not in the HF cache ({constants.HF_HUB_CACHE}) and the hub ({constants.ENDPOINT}) cannot be "
            f"reached ({why}): run {get} where there is network (same HF_HOME), or point model.path=DIR at a local copy"
        ) from None
    return "hub"


def cached_config(repo_id: str, revision: str) -> dict | None:
    """config.json of `repo_id` at `revision` if the HF cache holds it (no network), else None."""
    from planner.jsonfile import read_json

    path = _cached(repo_id, "config.json", revision)
    try:
        return read_json(path, "cached config.json") if isinstance(path, str) else None
    except ShardwiseError:
        return None


def _assets_dir(repo_id: str, sha: str) -> Path | None:
    from huggingface_hub import cached_assets_path

    try:
        return cached_assets_path(_ASSETS_LIBRARY, namespace=repo_id.replace("/", "--"), subfolder=sha)
    except OSError:
        return None


def _write_atomic(path: Path, data: dict) -> None:
    import os
    import tempfile

    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


# ---- one line for every way the hub says no --------------------------------------------------
def _hub_error(exc, repo_id: str, revision: str) -> ShardwiseError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{constants.ENDPOINT}/{repo_id}"
    if isinstance(exc, GatedRepoError):
        return ShardwiseError(
            f"{repo_id} is a gated repo: accept its terms at {page}, then set HF_TOKEN to a token of that account "
            "(or run `hf auth login`)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ShardwiseError(
            f"{repo_id} is not on the hub ({constants.ENDPOINT}), or it is private: check the id, "
            "or set HF_TOKEN to a token that can read it"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ShardwiseError(
            f"model.revision={revision} does not exist in {repo_id}: give a branch, tag or commit listed at {page}"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return ShardwiseError(f"{repo_id} has no config.json at {revision}: shardwise plans transformers models")
    status = exc.response.status_code if getattr(exc, "response", None) is not None else "?"
    return ShardwiseError(f"the hub refused {repo_id} (HTTP {status}): {str(exc).splitlines()[0]}")


def _not_cached(repo_id: str, revision: str, why: str) -> ShardwiseError:
    from huggingface_hub import constants

    pin = f" --revision {revision}" if revision != constants.DEFAULT_REVISION else ""
    return ShardwiseError(
        f"{repo_id} is not in the HF cache ({constants.HF_HUB_CACHE}) and {why}: "
        f"get its config with `hf download {repo_id}{pin} --include config.json` (a gated repo needs HF_TOKEN)"
    )
