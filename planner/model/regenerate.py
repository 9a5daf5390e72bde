"""Rewrite, or check, the meta-device descriptions shipped for every profile (planner.model.described).

    python -m planner.model.regenerate            # rebuild planner/model/descriptions/ (imports torch, ~1 min)
    python -m planner.model.regenerate --check    # list stale files without building (exit 1 if any)

Run after upgrading transformers, editing the general path (planner.model.described.builder_sources)
or a profile in conf/model; commit planner/model/descriptions/. Kept apart from
planner.model.described because it reads every profile through planner.config, which the
planner's core (and so the inventory that looks descriptions up) must not import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.model import described


def profiles() -> list[tuple[str, str, dict]]:
    """(profile, model_type, config) of every profile in conf/model that carries its own config.json numbers."""
    from planner.config.reader import profile_names, profile_spec, read_option
    from planner.model.architectures import model_type_of

    found = []
    for name in profile_names("model"):
        option = read_option("model", name)
        if not option.get("architecture") or option.get("revision"):
            continue  # `auto`, and profiles read from the hub: nothing to describe without a download
        arch = profile_spec(name).architecture
        found.append((name, model_type_of(arch), arch))
    return found


def stale_profiles() -> list[tuple[str, str]]:
    """(profile, why) for every profile whose shipped description is missing or made for something else."""
    stale = []
    for name, model_type, arch in profiles():
        results = [described.shipped(model_type, arch, dtype) for dtype in described.DTYPES]
        if all(found is not None for found, _ in results):
            continue
        other = next((key for _, key in results if key is not None), None)
        if other is None:
            why = "no shipped description"
        elif other.get("transformers") != described.transformers_version():
            why = f"made with transformers {other.get('transformers')}, {described.transformers_version()} is installed"
        elif other.get("builder") != described.builder_digest():
            names = ", ".join(p.name for p in described.builder_sources())
            why = f"made by another version of the builder ({names})"
        else:
            why = "made for another config or schema"
        stale.append((name, why))
    return stale


def regenerate() -> list[Path]:
    """Rebuild every profile's shipped description on the meta device; remove files no profile uses."""
    described.SHIPPED_DIR.mkdir(exist_ok=True)
    written = []
    for name, model_type, arch in profiles():
        form, files = described.ship(model_type, arch)
        written += files
        print(f"{name}: {model_type}, {form}", flush=True)
    for path in described.SHIPPED_DIR.glob("*.json"):
        if path not in written:
            path.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m planner.model.regenerate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list stale shipped descriptions (exit 1 if any)")
    args = parser.parse_args(argv)
    if not args.check:
        written = regenerate()
        print(
            f"{len(written)} descriptions in {described.SHIPPED_DIR} (transformers {described.transformers_version()})"
        )
        return 0
    stale = stale_profiles()
    for name, why in stale:
        print(f"{name}: {why}")
    print(f"{len(stale)} stale: run `{described.REGENERATE}`" if stale else "every shipped description is current")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
