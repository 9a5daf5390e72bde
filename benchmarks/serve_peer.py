"""`transformers serve` as serve_load.py's peer: started from another Python environment on loopback.

    with PeerServer("/work/peer-venv/bin/python", model_dir, continuous_batching=True, threads=1, serving=s) as peer:
        ... POST peer.url + "/v1/chat/completions" with "model": peer.model ...

The shardwise venv need not have transformers' serving extras (fastapi, uvicorn): the peer runs under
`--peer-python`, a separate environment with `transformers[serving]` of the same version (checked and
printed). Facts of transformers 5.24's server that the comparison relies on (transformers/cli/serve.py,
cli/serving/): it preloads a model given as the positional argument (a local directory works) and then
answers only requests whose `model` is that exact string (or none); `--continuous-batching` serves through
one `ContinuousBatchingManager` whose sampling settings come from the first request (every request here is
greedy), sized by `--cb-block-size/--cb-num-blocks/--cb-max-batch-tokens` (given here: otherwise it takes a
share of free memory); plain `serve` runs `model.generate` on one persistent inference thread per model.
It has no thread-count option, so a small launcher sets torch's threads before handing over to its CLI.
Its streams end with a chunk carrying finish_reason and usage together, with no `data: [DONE]`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

# argv: threads, then the `transformers` command line; torch's thread count is set before the server starts
LAUNCHER = (
    "import sys, torch\n"
    "threads = int(sys.argv[1])\n"
    "if threads: torch.set_num_threads(threads)\n"
    "print(f'peer: torch {torch.__version__}, {torch.get_num_threads()} threads', file=sys.stderr, flush=True)\n"
    "from transformers.cli.transformers import main\n"
    "sys.argv = ['transformers', *sys.argv[2:]]\n"
    "sys.exit(main())\n"
)


def peer_versions(python: str) -> str:
    """'transformers X, torch Y' of the peer environment; SystemExit when it cannot serve."""
    probe = (
        "import torch, transformers; from transformers.utils.import_utils import is_serve_available; "
        "print(transformers.__version__, torch.__version__, is_serve_available())"
    )
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"serve_load: error: --peer-python {python} cannot import torch and transformers ({exc})")
    transformers_version, torch_version, serving = out.split()
    if serving != "True":
        raise SystemExit(
            f"serve_load: error: {python} lacks transformers' serving extras: pip install 'transformers[serving]'"
        )
    return f"transformers {transformers_version}, torch {torch_version}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PeerServer:
    """`transformers serve MODEL_DIR [--continuous-batching]` on 127.0.0.1, stopped (by its pid) on exit."""

    def __init__(
        self, python: str, model_dir: Path, *, continuous_batching: bool, threads: int, serving, log_dir: Path
    ):
        self.model = str(model_dir)  # the server only answers requests naming its preloaded model exactly
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.label = "transformers serve" + (" --continuous-batching" if continuous_batching else "")
        args = [self.model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--dtype", "float32"]
        args += ["--attn-implementation", "sdpa", "--log-level", "error"]
        if continuous_batching:  # the shardwise engine's paged cache, so neither side probes free memory
            args += ["--continuous-batching", "--cb-block-size", str(serving.page_size_tokens)]
            args += ["--cb-num-blocks", str(serving.num_blocks), "--cb-max-batch-tokens", str(serving.max_batch_tokens)]
        self.command = [python, "-c", LAUNCHER, str(threads), "serve", *args]
        self.log_path = log_dir / f"peer-{'cb' if continuous_batching else 'plain'}.log"
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.pop("PYTHONPATH", None)  # the peer imports its own environment's packages only
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise SystemExit(f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{self.label} was not ready in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def threads_line(self) -> str:
        """The launcher's 'peer: torch X, N threads' line."""
        return next(
            (line for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("peer:")), ""
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()

    def __enter__(self) -> PeerServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def check_peer_stream(events: list[str], case) -> tuple[str, str, int, str | None]:
    """(problem or "", text, completion tokens, id) for a stream of transformers serve: the role chunk first,
    content deltas, one chunk with finish_reason and usage; no [DONE] (its documented shape in 5.24)."""
    try:
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
    except json.JSONDecodeError as exc:
        return f"a data line is not JSON ({exc})", "", 0, None
    if any("error" in c for c in chunks):
        return f"error event: {next(c['error'] for c in chunks if 'error' in c)}", "", 0, None
    if not chunks or chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "first chunk does not carry the assistant role", "", 0, None
    finishes = [c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if len(finishes) != 1 or not usage:
        return f"{len(finishes)} finish chunks, {len(usage)} usage (want 1 and 1)", "", 0, None
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    return "", text, usage[-1]["completion_tokens"], chunks[0].get("id")
