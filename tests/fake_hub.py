"""A fake Hugging Face hub on 127.0.0.1 for tests: the endpoints huggingface_hub uses to resolve and read files.

    hub = FakeHub()
    sha = hub.add("org/tiny", {"config.json": b"{...}", "model.safetensors": blob})
    with hub:                                   # serves on http://127.0.0.1:<port>
        env = hub.env(tmp_path)                 # HF_ENDPOINT, HF_HOME, no token: for a subprocess

It answers `HEAD`/`GET /{org}/{name}/resolve/{revision}/{file}` as the hub does for what the
library reads: `X-Repo-Commit` (the commit a branch or tag names), `ETag`, `Content-Length`, byte
ranges with 206 (safetensors headers are read by range requests), the two `/api/models/...`
listings `hf download` asks for, and errors carried in `X-Error-Code` (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo). Every request is logged with its Range header, so a
test can check that no weights were downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class Repo:
    commits: dict = field(default_factory=dict)  # sha -> {file name: bytes}
    refs: dict = field(default_factory=dict)  # branch or tag -> sha
    gated: bool = False  # answer GatedRepo: 401 without a token, 403 with one (no token here has access)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, files: dict[str, bytes], ref: str = "main", gated: bool = False) -> str:
        """Commit `files` to `repo_id` and point `ref` at the commit; returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.gated = repo.gated or gated
        digest = hashlib.sha1(repo_id.encode() + ref.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo.commits[digest] = dict(files)
        repo.refs[ref] = digest
        return digest

    # ---- server lifecycle -----------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start the hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, home: Path, **extra: str) -> dict:
        """Environment for a process that should use this hub and an HF cache under `home`."""
        import os

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING_FACE_")) and k != "TRANSFORMERS_OFFLINE"
        }
        env.update(
            HF_ENDPOINT=self.url if self._server else "http://127.0.0.1:9",
            HF_HOME=str(home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
            COLUMNS="160",
        )
        env.update(extra)
        return env

    def weight_reads(self) -> list[Request]:
        """GETs of .safetensors files that were not header range reads (a download of the weights)."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.path.endswith(".safetensors") and not (r.range or "").startswith("bytes=")
        ]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.fake.requests.append(Request(self.command, self.path, self.headers.get("Range")))
        parts = self.path.split("?", 1)[0].split("/")
        if parts[1:3] == ["api", "models"] and len(parts) >= 7:
            return self._api(f"{parts[3]}/{parts[4]}", parts[5], unquote(parts[6]))
        # /{org}/{name}/resolve/{revision}/{file...}
        if len(parts) < 6 or parts[3] != "resolve":
            return self._error(404, "RepoNotFound", "not a resolve URL")
        repo_id, revision, filename = f"{parts[1]}/{parts[2]}", unquote(parts[4]), "/".join(parts[5:])
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated:  # no token: 401; a token without access to this repo: 403, as the hub answers
            status = 403 if self.headers.get("Authorization") else 401
            return self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
        sha = revision if revision in repo.commits else repo.refs.get(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        files = repo.commits[sha]
        if filename not in files:
            return self._error(404, "EntryNotFound", "Entry not found", commit=sha)
        data = files[filename]
        status, payload, extra = 200, data, {}
        wanted = self.headers.get("Range")
        if wanted and body:
            start_text, _, end_text = wanted.removeprefix("bytes=").partition("-")
            start = int(start_text)
            end = min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
            status, payload = 206, data[start : end + 1]
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_response(status)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(payload) if body else len(data)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _api(self, repo_id: str, what: str, revision: str) -> None:
        """What `hf download` (snapshot_download) asks first: the commit a revision names, then its file list."""
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if repo.gated and not self.headers.get("Authorization"):
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        sha = revision if revision in repo.commits else repo.refs.get(revision)
        if sha is None or what not in ("revision", "tree"):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        files = repo.commits[sha]
        if what == "revision":
            body = {"id": repo_id, "sha": sha, "private": False, "siblings": [{"rfilename": f} for f in files]}
        else:
            body = [
                {"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for f, data in files.items()
            ]
        text = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        text = f'{{"error": "{message}"}}'.encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)


def llama_repo_files(num_layers: int = 2, shards: int = 1, hidden: int = 64, vocab: int = 256) -> dict[str, bytes]:
    """config.json and float16 safetensors (tiny tensors, real headers) of a Llama-shaped model, as in a hub repo.

    shards > 1 splits the tensors over `model-0000i-of-0000n.safetensors` files with an index, as large models ship.
    """

    import numpy as np
    from safetensors.numpy import save

    heads, kv_heads, inter = 4, 2, 2 * hidden
    head_dim = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    tensors = {name: np.zeros(shape, dtype=np.float16) for name, shape in shapes.items()}
    files = {"config.json": json.dumps(config).encode()}
    if shards == 1:
        files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
        return files
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        files[shard] = save(part, metadata={"format": "pt"})
        weight_map |= {n: shard for n in part}
    total = sum(t.nbytes for t in tensors.values())
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}
    ).encode()
    return files


def tensor_bytes(files: dict[str, bytes]) -> int:
    """Data bytes of every safetensors file in `files`, read back from their headers."""
    import struct

    total = 0
    for name, blob in files.items():
        if name.endswith(".safetensors"):
            (length,) = struct.unpack("<Q", blob[:8])
            header = json.loads(blob[8 : 8 + length])
            total += sum(
                end - start for key, v in header.items() if key != "__metadata__" for start, end in [v["data_offsets"]]
            )
    return total
