"""Chat prompts: the template, and fitting a conversation inside the context window.

    prompt = ChatPrompt(tokenizer, profile_template=plan.model.chat_template, system_prompt=None)
    ids, dropped = prompt.fit(messages, context_tokens=4096, max_tokens=256, cancel=event)

One module for every path that builds a prompt (ChatSession, the tensor-parallel rank), so they
render and cut conversations the same way:
- the template is the tokenizer's own, else the plan's profile template, else one plain
  "Role: text" template (gpt2); a model on the plain template writes the next "User:" turn
  itself, so that line is a stop string (`template_stops`);
- fitting keeps the prompt plus room for the reply inside the context: the oldest non-system
  messages are dropped whole (never the last one, never leaving an assistant reply first);
  a conversation that cannot fit even then raises ContextLengthError, never a silent cut of
  the prompt's head;
- fitting is linear in the conversation: each message is rendered and tokenized once, the
  number to drop comes from prefix sums over those counts, and only the kept tail is encoded
  again to check it (a conversation of thousands of short messages must not hold a server).
  A cancellation event is checked between steps.
"""

from __future__ import annotations

import threading
from itertools import accumulate

from planner.errors import ShardwiseError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Models without a template (gpt2) happily write the next user turn themselves.
FALLBACK_STOPS = ("\nUser:",)


class ContextLengthError(ShardwiseError):
    """A single message (with the system prompt) does not fit in the context window."""


class PromptCancelled(Exception):
    """The caller cancelled while the prompt was being fitted (nothing was generated)."""


def context_tokens(plan, model_config) -> int:
    """Prompt + reply tokens per turn: the plan's limit, else the model's own maximum (2048 when unknown)."""
    planned = plan.limits.context_tokens if plan is not None else 0
    own = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None) or 2048
    return min(planned, own) if planned else own


def reply_room(context: int, max_tokens: int) -> int:
    """Tokens kept free for the reply while fitting: max_tokens, but never more than a quarter of the context."""
    return max(1, min(max_tokens, context // 4))


def max_new_tokens(context: int, prompt_tokens: int, max_tokens: int, plan_max_new_tokens: int = 0) -> int:
    """New tokens for a turn: max_tokens, capped by the room left in the context and the plan's max_new_tokens."""
    budget = min(max_tokens, context - prompt_tokens)
    return min(budget, plan_max_new_tokens) if plan_max_new_tokens else budget


class ChatPrompt:
    """A tokenizer with its chat template and the conversation's system prompt."""

    def __init__(self, tokenizer, *, profile_template: str | None = None, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template or profile_template or FALLBACK_TEMPLATE
        self.template_stops = FALLBACK_STOPS if self.template == FALLBACK_TEMPLATE else ()
        self.system_prompt = system_prompt

    def with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt and not any(m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def render(self, messages: list[dict], *, generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=generation_prompt
        )

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt ids for exactly these messages (no system prompt added), ready for the reply."""
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    def token_count(self, messages: list[dict]) -> int:
        return len(self.encode(self.with_system(messages)))

    def _message_costs(self, messages: list[dict]) -> list[int]:
        """Tokens each message adds when rendered alone, less what the template adds to any render."""
        try:
            base = len(self.tokenizer(self.render([], generation_prompt=False), add_special_tokens=False)["input_ids"])
        except Exception:  # a template that refuses an empty conversation: no shared part to subtract
            base = 0
        texts = []
        for message in messages:
            try:
                texts.append(self.render([message], generation_prompt=False))
            except Exception:  # a template that refuses a lone assistant turn: price it as a user turn
                try:
                    texts.append(self.render([{**message, "role": "user"}], generation_prompt=False))
                except Exception:
                    texts.append(str(message.get("content", "")))
        counts = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [max(1, len(ids) - base) for ids in counts]

    def fit(
        self, messages: list[dict], *, context_tokens: int, max_tokens: int, cancel: threading.Event | None = None
    ) -> tuple[list[int], int]:
        """Prompt ids inside the context window, and how many of the oldest messages were dropped."""
        room = reply_room(context_tokens, max_tokens)
        kept = self.with_system(messages)
        ids = self.encode(kept)
        if len(ids) + room <= context_tokens:
            return ids, 0
        # Messages that may go, oldest first: never a system message, never the last message.
        droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
        _check(cancel)
        costs = self._message_costs([kept[i] for i in droppable])
        freed = [0, *accumulate(costs)]  # freed[j]: tokens saved by dropping droppable[:j]
        # Dropping j messages is allowed when the next one kept is not an assistant reply.
        everything = len(droppable)
        allowed = [
            j for j in range(1, everything + 1) if j == everything or kept[droppable[j]].get("role") != "assistant"
        ]
        dropped, excess = 0, len(ids) + room - context_tokens
        while excess > 0 and allowed and allowed[-1] > dropped:
            _check(cancel)
            target = freed[dropped] + excess
            dropped = next((j for j in allowed if j > dropped and freed[j] >= target), allowed[-1])
            gone = set(droppable[:dropped])
            ids = self.encode([m for i, m in enumerate(kept) if i not in gone])
            excess = len(ids) + room - context_tokens
        if len(ids) >= context_tokens:
            last = kept[-1] if kept else {"content": ""}
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens (last message {len(self.encode([last]))} tokens with its template) "
                f"but the context window holds {context_tokens}: shorten the message, or plan a longer context "
                f"(policy.context_tokens)"
            )
        return ids, dropped


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PromptCancelled("cancelled while fitting the prompt")
