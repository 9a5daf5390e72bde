"""`shardwise probe`: show what this machine has (NVML), optionally record it as a snapshot.

shardwise probe                      # readable table
shardwise probe probe.json=true      # JSON (Hardware.to_dict()) on stdout
shardwise probe probe.save=box.json  # also record a snapshot; replay elsewhere with
                                     #   shardwise plan hardware=snapshot hardware.path=box.json
"""

from __future__ import annotations

import sys

from planner.hardware.devices import Hardware
from planner.jsonfile import dumps_json
from planner.units import GIB


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f}"


def _processes_text(processes: tuple) -> str:
    return "\n".join(f"{p.get('name') or 'pid'} {p['pid']}: {_gib(p['used_bytes'])} GiB" for p in processes) or "-"


def _nvlink_text(hw: Hardware) -> str:
    whole = sum(1 for d in hw.devices if not d.mig)
    if not hw.nvlink_pairs:
        return "none"
    if whole > 2 and len(hw.nvlink_pairs) == whole * (whole - 1) // 2:
        return f"every pair of the {whole} GPUs ({len(hw.nvlink_pairs)} pairs)"
    return ", ".join(f"{i}-{j}" for i, j in hw.nvlink_pairs)


def render(hw: Hardware, console) -> None:
    """Print `hw` as a table plus one line per fact (driver, links, host, notes)."""
    from rich.table import Table

    if hw.devices:
        table = Table(title=f"GPUs ({hw.source})", title_justify="left")
        for column in ("id", "name", "total GiB", "free GiB", "reserved GiB", "cc", "processes", "MIG", "PCI bus id"):
            table.add_column(column, justify="right" if "GiB" in column or column == "id" else "left")
        for d in hw.devices:
            table.add_row(
                str(d.id), d.name, _gib(d.total_bytes), _gib(d.free_bytes), _gib(d.reserved_bytes),
                d.compute_capability, _processes_text(d.processes), "slice" if d.mig else "-", d.pci_bus_id,
            )  # fmt: skip
        console.print(table)
        console.print(
            f"driver {hw.driver_version or '?'}, CUDA {hw.cuda_driver_version or '?'}; interconnect {hw.interconnect}"
        )
        console.print(f"NVLink: {_nvlink_text(hw)}")
    else:
        console.print("GPUs: none (planning for CPU)")
    console.print(f"host: {_gib(hw.host_ram_bytes)} GiB RAM, {hw.cpu_count} CPUs")
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(hw.installed.items())) or "none (triton, kernels not installed)"
    console.print(f"kernel packages: {kernels}")
    console.print(f"fingerprint: {hw.fingerprint()}")
    for note in hw.notes:
        console.print(f"note: {note}", markup=False)


def task(cfg) -> None:
    from rich.console import Console

    from planner.hardware.probe import probe, save_snapshot
    from planner.hardware.tiers import with_host_speed

    hw = probe()
    if not hw.devices:  # a CPU machine: its memory bandwidth (one thread, all cores) and matmul rate, for CPU plans
        hw = with_host_speed(hw)
    settings = cfg.probe
    if settings.json:
        print(dumps_json(hw.to_dict(), "hardware"))
    else:
        render(hw, Console())
    if settings.save:
        path = save_snapshot(hw, settings.save)
        message = f"snapshot saved to {path}: replay with hardware=snapshot hardware.path={path}"
        print(message, file=sys.stderr if settings.json else sys.stdout)


def run(argv: list[str]) -> None:
    from shardwise.verbs.app import run_verb

    run_verb("probe", "probe", task, argv)
