"""The OpenAI Chat Completions surface: one protocol module, the HTTP app, its request queue and the serve verb."""
