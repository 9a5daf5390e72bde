"""Read safetensors headers without torch: the exact bytes a model directory ships.

A .safetensors file starts with an 8-byte little-endian header length, then a JSON header
mapping tensor names to {dtype, shape, data_offsets}; the tensor data follows. A directory
holds one `model.safetensors` or shards listed by `model.safetensors.index.json` (any other
*.safetensors files are read when neither is there). Only the headers are read. A hub model's
headers, fetched by range requests, are kept as one JSON table and read the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from planner.errors import ShardwiseError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
HEADERS_TABLE = "safetensors_headers.json"  # written by planner.model.hub (same name there)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: "BF16", "F32", "U8", ...
    shape: tuple[int, ...]
    nbytes: int  # data bytes (from data_offsets)
    file: str  # file name inside the directory

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class Coverage:
    """How the checkpoint's tensor names line up with the inventory's modules."""

    unmatched_tensors: tuple[str, ...]  # tensor names under no module
    modules_without_tensors: tuple[str, ...]  # modules with parameters that no tensor belongs to

    @property
    def ok(self) -> bool:
        return not self.unmatched_tensors and not self.modules_without_tensors

    def warnings(self) -> list[str]:
        notes = []
        if self.unmatched_tensors:
            shown = ", ".join(self.unmatched_tensors[:3])
            notes.append(
                f"checkpoint has {len(self.unmatched_tensors)} tensors under no planned module (e.g. {shown}): "
                "their bytes are in checkpoint_bytes but not in any module"
            )
        if self.modules_without_tensors:
            shown = ", ".join(self.modules_without_tensors[:3])
            notes.append(
                f"{len(self.modules_without_tensors)} modules have no tensors in the checkpoint (e.g. {shown}): "
                "transformers will initialize them randomly; check that model.path matches the architecture"
            )
        return notes


@dataclass(frozen=True)
class SafetensorsIndex:
    directory: str
    tensors: tuple[TensorInfo, ...]
    header_bytes: int  # all files' 8-byte length prefixes and JSON headers

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def bytes_by_module(self, module_names: list[str], no_tensors_expected=()) -> tuple[dict[str, int], Coverage]:
        """Shipped bytes per module name, and the coverage check.

        Checkpoints may omit the base-model prefix (old gpt2 files say `h.0.attn...` for
        `transformer.h.0.attn...`): a name that matches no module is retried with each
        module's first component in front. `no_tensors_expected`: modules that ship nothing
        (a tied lm_head, a rotary embedding with buffers only), left out of the coverage check.
        """
        prefixes = sorted({n.split(".", 1)[0] for n in module_names if "." in n})
        by_module = {n: 0 for n in module_names}
        # longest names first so "model.layers.1" never claims "model.layers.10.x"
        ordered = sorted(module_names, key=len, reverse=True)
        seen: set[str] = set()
        unmatched = []
        for t in self.tensors:
            owner = _owner(t.name, ordered)
            if owner is None:
                for prefix in prefixes:
                    owner = _owner(f"{prefix}.{t.name}", ordered)
                    if owner is not None:
                        break
            if owner is None:
                unmatched.append(t.name)
                continue
            by_module[owner] += t.nbytes
            seen.add(owner)
        return by_module, Coverage(
            tuple(unmatched), tuple(n for n in module_names if n not in seen and n not in no_tensors_expected)
        )


def _owner(name: str, ordered_modules: list[str]) -> str | None:
    for module in ordered_modules:
        if name.startswith(module + ".") or name == module:
            return module
    return None


def read_header(path: Path) -> tuple[dict, int]:
    """(JSON header, header bytes including the 8-byte prefix) of one .safetensors file."""
    from planner.files import open_regular
    from planner.jsonfile import loads_json

    try:
        with open_regular(path, "safetensors file", "a model directory holds regular files only") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise ShardwiseError(f"{path} is not a safetensors file (shorter than 8 bytes); re-download it")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise ShardwiseError(
                    f"{path}: header length {length} is not plausible; the file is not safetensors or is corrupt"
                )
            raw = f.read(length)
    except OSError as err:
        raise ShardwiseError(f"cannot read {path}: {err.strerror or err}; check model.path") from None
    if len(raw) != length:
        raise ShardwiseError(f"{path}: the file ends inside its safetensors header; re-download it")
    header = loads_json(raw, f"{path}: safetensors header", dict, "the file is corrupt, re-download it")
    return header, 8 + length


def _tensor(path: Path, name: str, info, data_bytes: int | None) -> TensorInfo:
    """One header entry, checked: a dtype, a shape of counts, and data_offsets inside the file's data."""

    def bad(why: str) -> ShardwiseError:
        return ShardwiseError(f"{path}: tensor {name[:80]!r} {why}; the file is corrupt, re-download it")

    if not isinstance(info, dict):
        raise bad(f"is described by {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"has dtype {dtype!r:.40}, not a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r:.60}, not a list of sizes >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"has data_offsets {offsets!r:.60}, not [start, end]")
    start, end = offsets
    if not 0 <= start <= end or (data_bytes is not None and end > data_bytes):
        raise bad(f"has data_offsets [{start}, {end}] outside the {data_bytes} data bytes of the file")
    return TensorInfo(name, dtype, tuple(shape), end - start, path.name)


def _files(directory: Path) -> list[Path]:
    from planner.jsonfile import read_json

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "safetensors index", dict, "the index is corrupt, re-download it").get(
            "weight_map"
        )
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) and v and not Path(v).is_absolute() and ".." not in Path(v).parts
            for v in weight_map.values()
        ):
            raise ShardwiseError(
                f"{index} has no weight_map of tensor -> shard file name; the index is corrupt, re-download it"
            )
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise ShardwiseError(f"{directory}: shards {missing[:3]} listed in the index are missing; download them")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(directory.glob("*.safetensors"))


def read_index(model_dir: str) -> SafetensorsIndex | None:
    """Every tensor's dtype, shape and bytes in a model directory; None when it holds no safetensors.

    A directory without .safetensors files may hold the header table that planner.model.hub keeps
    for a hub model (`safetensors_headers.json`: each file's header as fetched by range requests).
    """
    directory = Path(model_dir)
    if directory.is_file():
        directory = directory.parent  # a config.json path
    if not directory.is_dir():
        raise ShardwiseError(f"model.path={model_dir!r} is not a directory; give the directory with config.json")
    files = _files(directory)
    if not files:
        return _read_table(directory / HEADERS_TABLE)
    headers = []
    for path in files:
        header, header_bytes = read_header(path)
        headers.append((path.name, header, header_bytes))
    return _index(str(directory), headers)


def _read_table(table: Path) -> SafetensorsIndex | None:
    if not table.is_file():
        return None
    from planner.jsonfile import read_json

    files = read_json(table, "header table", dict, f"delete {table} and plan again").get("files") or {}
    if not isinstance(files, dict):
        raise ShardwiseError(f"{table} is not a header table; delete it and plan again")
    # The table keeps the parsed headers, not their encoded length: header bytes are unknown (0) here.
    return _index(str(table.parent), [(name, header, 0) for name, header in sorted(files.items())]) if files else None


def _index(directory: str, headers: list[tuple[str, dict, int]]) -> SafetensorsIndex:
    tensors, header_total = [], 0
    for file_name, header, header_bytes in headers:
        header_total += header_bytes
        path = Path(directory) / file_name
        if not isinstance(header, dict):
            raise ShardwiseError(f"{path}: the safetensors header is not an object; the file is corrupt: re-download")
        # a cached header table (hub) has no file beside it: its offsets cannot be checked against a size
        data_bytes = path.stat().st_size - header_bytes if header_bytes and path.is_file() else None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            tensors.append(_tensor(path, name, info, data_bytes))
    return SafetensorsIndex(str(directory), tuple(tensors), header_total)
