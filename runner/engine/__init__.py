"""The one engine behind chat, the Python API, the server and every torchrun rank: load, prompt, generate, recover."""
