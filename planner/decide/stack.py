"""The software stack a plan assumes, read from package metadata (nothing is imported).

Two questions live here:
- which versions of transformers, torch, kernels and triton the plan was made against (the
  plan's `software` block), and whether the stack a runner finds differs in a way that changes
  the plan (`drift`);
- what the installed transformers itself requires of a package such as `kernels`: its own
  metadata is the one source (a copy of the range typed in here broke the day transformers moved).
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

STACK_PACKAGES = ("transformers", "torch", "accelerate", "kernels", "triton")


@cache
def installed_version(name: str) -> str | None:
    """The installed release of `name` (read once per process: each read parses the package's METADATA)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def parse_version(text: str | None) -> Version | None:
    """A PEP 440 version, or None for a missing or unreadable one (a local build tag stays readable)."""
    if not text:
        return None
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


@cache
def transformers_requirement(name: str) -> SpecifierSet | None:
    """The version range the installed transformers requires of `name`, from its own metadata.

    A plain requirement wins; otherwise the one behind the extra named like the package (transformers
    lists `kernels` both ways across releases). None: transformers is not installed or names no range.
    """
    wanted = canonicalize_name(name)
    try:
        lines = metadata.requires("transformers") or []
    except metadata.PackageNotFoundError:
        return None
    plain, extra = None, None
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != wanted:
            continue
        if req.marker is None:
            plain = plain or req.specifier
        elif req.marker.evaluate({"extra": name}) and not req.marker.evaluate({"extra": ""}):
            extra = extra or req.specifier
    return plain if plain is not None else extra


def requirement_text(name: str) -> str:
    """`kernels>=0.19.1,<0.20` as pip takes it (the package alone when transformers names no range)."""
    spec = transformers_requirement(name)
    return f"{name}{_ordered(spec)}" if spec else name


def _ordered(spec: SpecifierSet) -> str:
    # lower bounds first, as people write ranges
    return ",".join(sorted((str(s) for s in spec), key=lambda s: (not s.startswith(">"), s)))


def minimum_version(name: str) -> str | None:
    """The lowest release the installed transformers accepts of `name` (its `>=`/`==` bound), None when unbounded."""
    spec = transformers_requirement(name)
    for s in spec or ():
        if s.operator in (">=", "==", "~="):
            return s.version
    return None


def satisfies(name: str, version: str | None) -> bool:
    """True when `version` of `name` is inside what the installed transformers requires (any, when it says nothing)."""
    found = parse_version(version)
    if found is None:
        return False
    spec = transformers_requirement(name)
    return True if spec is None else spec.contains(found, prereleases=True)


def software_block(installed: dict, probed: bool, source: str) -> dict:
    """What the plan assumed: the planning machine's transformers/torch/accelerate, and kernel packages.

    Kernel packages come from the hardware when it was read off a machine (probe or snapshot); a tier
    that was not probed assumes none are known. transformers' own requirement of `kernels` is recorded
    with them so a reader sees the range the plan's MXFP4 decision used.
    """
    block = {name: installed_version(name) for name in ("transformers", "torch", "accelerate")}
    for name in ("kernels", "triton"):
        block[name] = installed.get(name) if probed else None
    block["kernels_required"] = requirement_text("kernels")
    block["source"] = f"kernel packages read off {source}" if probed else f"{source} (not probed): kernels assumed"
    return block


def drift(assumed: dict, quantization_kept: str | None) -> list[str]:
    """One line per way the running stack differs from the plan's `software` block in a way that changes it.

    - transformers of another minor release: its loaders and defaults may size memory differently;
    - an MXFP4 plan that kept the packed weights, run where kernels or triton are missing or out of
      transformers' range: transformers will dequantize them (several times the planned weight memory).
    """
    if not isinstance(assumed, dict) or not assumed:
        return []
    lines = []
    planned, running = parse_version(assumed.get("transformers")), parse_version(installed_version("transformers"))
    if planned and running and planned.release[:2] != running.release[:2]:
        lines.append(
            f"the plan was made with transformers {planned}, this machine runs {running}: memory may differ, "
            "re-plan here (replan=true) to be sure"
        )
    if quantization_kept == "mxfp4":
        kernels = installed_version("kernels")
        if not satisfies("kernels", kernels) or not installed_version("triton"):
            lines.append(
                f"the plan keeps MXFP4 packed, but this machine has kernels {kernels or 'none'} and triton "
                f"{installed_version('triton') or 'none'}: transformers will dequantize the experts "
                f"(pip install '{requirement_text('kernels')}' 'triton>=3.4', or re-plan here)"
            )
    return lines
