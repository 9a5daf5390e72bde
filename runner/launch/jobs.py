"""Hydra callback for `shardwise launch -m hydra/launcher=submitit_*|slurm_*`: what the jobs printed, on this terminal.

submitit runs each job in its own process (a SLURM task, or a local one) and keeps its stdout in
`<sweep dir>/.submitit/<job>/<job>_0_log.out`; Hydra itself prints only where the sweep went. So after the jobs end
this prints each job's own output (a dry run's command lines, a chat's answers) on stdout, and exits non-zero with
one line when a job did not complete or none ran: a launch that started nothing must not look like a success.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

DONE = "Job completed successfully"  # submitit's own line once a job's function returned


class JobReport(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if "submitit" not in launcher:
            return
        logs = sorted(Path(config.hydra.sweep.dir, ".submitit").glob("*/*_log.out"))
        if not logs:
            _fail(f"no job ran (nothing in {config.hydra.sweep.dir}/.submitit): see the lines above")
        failed = []
        for out in logs:
            err = out.with_name(out.name.replace("_log.out", "_log.err"))
            text = out.read_text(errors="replace")
            errors = err.read_text(errors="replace") if err.is_file() else ""
            print(f"# job {out.parent.name} (log: {out})")
            for line in text.splitlines():
                if not line.startswith("submitit "):  # submitit's bookkeeping, not the job's output
                    print(line)
            if DONE not in text + errors:
                failed.append(f"{out.parent.name} (see {err})")
        sys.stdout.flush()
        if failed:
            _fail(f"{len(failed)} of {len(logs)} job(s) did not complete: {', '.join(failed)}")


def _fail(message: str) -> None:
    print(f"shardwise launch: error: {message}", file=sys.stderr)
    raise SystemExit(1)
