"""The general path's result kept on disk, so that planning a model outside the fast path needs no torch.

A model_type outside the fast path (planner.model.architectures) is described by building its
transformers class on the meta device (planner.model.meta): seconds, most of them spent importing
torch and transformers. The description depends only on the config, the installed transformers
and shardwise's own builder, so `describe()` looks for it before building:

1. shipped in the wheel for every profile in conf/model (planner/model/descriptions/), written by

       python -m planner.model.regenerate

   to be rerun after changing transformers, the builder (builder_sources()) or a profile;
   (`--check` lists stale files; tests/test_described.py fails, naming the command, while any is);
2. written under the HF cache (huggingface_hub's assets cache, so HF_HOME and HF_ASSETS_CACHE
   apply) after the first build of any other config: the second plan of a config.json is as
   fast as a profile's.

A file holds its key (schema, builder digest, transformers version, model_type, config, dtype) and
is used only when that key equals the wanted one: another transformers or another builder misses,
rebuilds, and the plan's decisions say so. Shipped files are named by the config alone, so a stale
one can be told from an absent one; in the HF cache each builder and transformers version has its
own folder. A corrupt, foreign, oversized or unreadable file is a miss; a cache directory that
cannot be written costs only the build. The stored form does not depend on the compute dtype
(planner.model.describe_codec): one file serves bfloat16, float16 and float32 plans.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from planner.errors import ShardwiseError
from planner.model import describe_codec as codec
from planner.model.architectures import ArchDescription

SCHEMA_VERSION = 1  # of the file layout; the codec and the builder are covered by builder_digest()
# planner/model modules that only read inputs or this cache and never shape a description; every other module
# there counts as the builder (a new one included without an edit here): editing one makes stored files stale
NOT_BUILDER = ("__init__.py", "config_check.py", "described.py", "headers.py", "hub.py", "regenerate.py", "source.py")
SHIPPED_DIR = Path(__file__).with_name("descriptions")
MAX_FILE_BYTES = 32 * 1024 * 1024  # the largest profile's description is ~120 kB
REGENERATE = "python -m planner.model.regenerate"
DTYPES = ("bfloat16", "float16", "float32")  # what a dtype-dependent description is shipped for

Decision = tuple[str, str, str]  # (what, value, reason), as planner.planfile.plan.Notes.decide takes them


@dataclass(frozen=True)
class _Key:
    text: str  # canonical JSON of everything the description depends on
    file_name: str  # digest of model_type, config and dtype alone: one name across transformers versions


def builder_sources() -> list[Path]:
    """The source files of the general path: meta.py, the dataclasses, the codec and whatever else sits beside them."""
    return sorted(p for p in Path(__file__).parent.glob("*.py") if p.name not in NOT_BUILDER)


@cache
def builder_digest() -> str:
    """Digest of the schema and the builder's source: a new shardwise misses what an old one stored."""
    digest = hashlib.sha256(f"schema {SCHEMA_VERSION}".encode())
    for path in builder_sources():
        digest.update(f"\0{path.name}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def transformers_version() -> str | None:
    """The installed transformers' version, from its metadata: importing transformers takes seconds."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _key(model_type: str, arch: dict, dtype: str | None) -> _Key:
    """dtype None: the dtype-free form. TypeError / ValueError when the config does not write as JSON."""
    config = {"model_type": model_type, "config": arch, "dtype": dtype}
    built_by = {"schema": SCHEMA_VERSION, "builder": builder_digest(), "transformers": transformers_version()}
    name = hashlib.sha256(_canonical(config).encode()).hexdigest()[:32]
    return _Key(_canonical({**built_by, **config}), f"{name}.json")


def _local_dir() -> Path | None:
    """This builder's and transformers' folder in huggingface_hub's assets cache; None when it cannot be made."""
    from huggingface_hub import cached_assets_path, constants

    built_by = [SCHEMA_VERSION, builder_digest(), transformers_version()]
    version = hashlib.sha256(_canonical(built_by).encode()).hexdigest()[:16]
    try:  # assets_dir read now, not at huggingface_hub's import: the constant is what HF_HOME set
        return cached_assets_path(
            "shardwise", namespace="described", subfolder=version, assets_dir=constants.HF_ASSETS_CACHE
        )
    except (OSError, ValueError):  # unwritable HF_HOME, or a file in the way (ValueError): no cache, the plan goes on
        return None


def _read(path: Path, key: _Key) -> tuple[ArchDescription | None, dict | None]:
    """(description, None) when `path` holds `key`; (None, the key it holds) when another; (None, None) else."""
    from planner.jsonfile import read_json

    try:
        payload = read_json(path, "cached description", dict, max_bytes=MAX_FILE_BYTES)
    except ShardwiseError:  # absent, unreadable, oversized, not JSON: a miss
        return None, None
    if payload.get("key") != key.text:
        try:
            return None, json.loads(payload["key"])
        except (KeyError, TypeError, ValueError):
            return None, None
    try:
        found = codec.decode(payload["description"])
    except Exception:  # whatever a damaged or foreign file makes the codec raise, it is a miss, never a traceback
        return None, None
    return (found, None) if isinstance(found, ArchDescription) else (None, None)


def _lookup(folder: Path, keys: list[_Key], dtype: str) -> tuple[ArchDescription | None, dict | None]:
    """The description for `dtype` in `folder` (keys: dtype-free first), or None and a stale file's key."""
    stale = None
    for key in keys:
        found, other = _read(folder / key.file_name, key)
        if found is not None:
            return (codec.for_dtype(found, dtype) if key is keys[0] else found), None
        stale = stale or other
    return None, stale


def _build(model_type: str, arch: dict, dtype: str) -> tuple[ArchDescription, ArchDescription | None]:
    """A fresh meta-device build in `dtype`, and its dtype-free form (None when it depends on the dtype).

    The dtype-free form is kept only when it gives back the build in every dtype a plan may load in:
    two dtypes that agree say nothing about the third (the general path may probe a cache in bfloat16).
    """
    import copy

    from planner.model.meta import describe_on_meta

    # the general path refuses encoder and encoder-decoder types (transformers' mappings); only builds are stored
    # transformers' config classes rewrite nested dicts they are given (rope_scaling): the caller's config,
    # and so its key, must stay as the planner read it
    builds = {dtype: describe_on_meta(model_type, copy.deepcopy(arch), dtype)}
    try:
        for other in DTYPES:
            builds.setdefault(other, describe_on_meta(model_type, copy.deepcopy(arch), other))
    except ShardwiseError:
        return builds[dtype], None
    twin_dtype = next(d for d in DTYPES if d != dtype)
    free = codec.neutral(builds[dtype], dtype, builds[twin_dtype], twin_dtype)
    if free is None or any(codec.for_dtype(free, d) != built for d, built in builds.items()):
        return builds[dtype], None
    return builds[dtype], free


def _write(folder: Path, key: _Key, desc: ArchDescription) -> bool:
    """Store `desc` under `key` in `folder`, atomically; False when it cannot be stored exactly or at all."""
    from planner.jsonfile import write_text_atomic

    try:
        encoded = codec.encode(desc)
    except TypeError:  # a field of a type the codec does not write
        return False
    if codec.decode(json.loads(json.dumps(encoded))) != desc:
        return False  # it would not read back equal: never store an approximation
    text = json.dumps({"key": key.text, "description": encoded}, separators=(",", ":"))
    if len(text) > MAX_FILE_BYTES:
        return False
    try:
        write_text_atomic(folder / key.file_name, text)
    except OSError:
        return False
    return True


_MEMO: dict[str, tuple[ArchDescription, Decision]] = {}  # key text -> result: a plan re-plans a model many times
_MEMO_MAX = 16


def forget() -> None:
    """Drop this process's memory of looked-up descriptions (tests that swap the HF cache directory)."""
    _MEMO.clear()


def describe(model_type: str, arch: dict, dtype: str) -> tuple[ArchDescription, Decision]:
    """The general path's description of `arch` in `dtype`, and a decision saying where it came from."""
    try:
        keys = [_key(model_type, arch, None), _key(model_type, arch, dtype)]
    except (TypeError, ValueError):  # a config that does not write as JSON has nothing to key it by
        return _build(model_type, arch, dtype)[0], _built(model_type, None, None)
    if keys[1].text not in _MEMO:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[keys[1].text] = _describe(model_type, arch, dtype, keys)
    return _MEMO[keys[1].text]


def _describe(model_type: str, arch: dict, dtype: str, keys: list[_Key]) -> tuple[ArchDescription, Decision]:
    found, stale = _lookup(SHIPPED_DIR, keys, dtype)
    if found is not None:
        return found, _hit(model_type, "shipped description", "shipped with shardwise for this profile")
    folder = _local_dir()
    if folder is not None:
        found, _ = _lookup(folder, keys, dtype)
        if found is not None:
            return found, _hit(model_type, "cached description", f"cached in {folder} by an earlier plan")
    desc, free = _build(model_type, arch, dtype)
    stored = folder is not None and (
        _write(folder, keys[0], free) if free is not None else _write(folder, keys[1], desc)
    )
    return desc, _built(model_type, stale, folder if stored else None)


def _hit(model_type: str, value: str, where: str) -> Decision:
    return (
        "architecture",
        value,
        f"{model_type} is outside the fast path: its modules and cache layers were built on the meta device "
        f"under transformers {transformers_version()} and {where}",
    )


def _built(model_type: str, stale: dict | None, stored_in: Path | None) -> Decision:
    if stale is not None and stale.get("transformers") != transformers_version():
        why = f"the shipped description was made with transformers {stale.get('transformers')}"
    elif stale is not None:
        why = "the shipped description was made by another version of shardwise's builder"
    else:
        why = "no description of this config is cached"
    kept = f"stored in {stored_in} for the next plan" if stored_in else "not stored: the next plan builds it again"
    return (
        "architecture",
        "built on the meta device",
        f"{model_type} is outside the fast path and {why}: built under transformers {transformers_version()}, {kept}",
    )


def shipped(model_type: str, arch: dict, dtype: str) -> tuple[ArchDescription | None, dict | None]:
    """The shipped description of `arch` for `dtype`, or None and the key of a stale shipped file."""
    return _lookup(SHIPPED_DIR, [_key(model_type, arch, None), _key(model_type, arch, dtype)], dtype)


def ship(model_type: str, arch: dict) -> tuple[str, list[Path]]:
    """Build `arch` on the meta device and write its shipped description(s): ("dtype-free" | "per dtype", files)."""
    desc, free = _build(model_type, arch, "bfloat16")
    if free is not None:
        entries = [(None, free)]
    else:  # the description depends on the dtype: one file per dtype a plan may load in
        entries = [(dtype, _build(model_type, arch, dtype)[0]) for dtype in DTYPES]
    written = []
    for dtype, value in entries:
        key = _key(model_type, arch, dtype)
        if not _write(SHIPPED_DIR, key, value):
            raise ShardwiseError(f"{model_type}: its description does not read back equal from JSON; fix the codec")
        written.append(SHIPPED_DIR / key.file_name)
    return ("dtype-free" if free is not None else "per dtype"), written
