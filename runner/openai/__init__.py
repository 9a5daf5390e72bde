"""The OpenAI Chat Completions surface: one protocol module, the HTTP app, its request queue (the serve verb is
shardwise/verbs/serve.py)."""
