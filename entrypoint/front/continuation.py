"""Continuing a stream that vLLM dropped (it crashed mid-answer) on the restarted vLLM, so that the client keeps
one uninterrupted stream: what the front proxy asks the new vLLM for, and how the continuation's events become
the rest of the client's stream.

Exact, not approximate: the proxy asks vLLM for token ids (`return_token_ids`, vLLM's own extension) and strips
them again where the client did not ask for them. The continuation is a `/v1/completions` request whose prompt
is the original prompt's token ids plus the ids of every token already sent, so the new vLLM computes the next
token from exactly the context the dead one had (the prompt's KV is in LMCache: a hit, not a recompute). A chat
stream continues the same way, its completion events rewritten as chat deltas.

What cannot be continued faithfully is refused up front (`unresumable`): such a stream gets one error event
when vLLM dies after its first token, as before. Before the first token nothing was sent, so any request can be
sent again whole (`Stream.resend_whole`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
# Fields of a chat request that a completions request takes with the same meaning (vLLM's SamplingParams).
SAMPLING_FIELDS = ("model", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
                   "ignore_eos", "logit_bias", "allowed_token_ids", "bad_words", "skip_special_tokens",
                   "spaces_between_special_tokens", "include_stop_str_in_output", "user", "priority", "cache_salt",
                   "stream_options", "vllm_xargs")
# Why a field makes a stream impossible to continue faithfully (its value is other than the neutral one).
UNFAITHFUL = {
    "n": "n > 1 (several choices in one stream)",
    "best_of": "best_of > 1",
    "use_beam_search": "beam search",
    "echo": "echo (the prompt is part of the answer)",
    "logprobs": "logprobs (their text offsets and ranks are per request)",
    "top_logprobs": "logprobs (their text offsets and ranks are per request)",
    "prompt_logprobs": "prompt logprobs",
    "seed": "a seed (the continuation would draw other random numbers than the uninterrupted stream)",
    "presence_penalty": "presence/frequency penalties (they count the generated tokens, which restart at the cut)",
    "frequency_penalty": "presence/frequency penalties (they count the generated tokens, which restart at the cut)",
    "stop": "stop strings (vLLM holds back text that may start one; that text would be lost at the cut)",
    "suffix": "a suffix",
    "truncate_prompt_tokens": "prompt truncation",
    "response_format": "structured output (the grammar's state at the cut is lost)",
    "structured_outputs": "structured output (the grammar's state at the cut is lost)",
    "guided_json": "structured output (the grammar's state at the cut is lost)",
    "guided_regex": "structured output (the grammar's state at the cut is lost)",
    "guided_choice": "structured output (the grammar's state at the cut is lost)",
    "guided_grammar": "structured output (the grammar's state at the cut is lost)",
    "tools": "tools (vLLM's tool parser keeps state across the stream)",
    "functions": "tools (vLLM's tool parser keeps state across the stream)",
    "prompt_embeds": "prompt embeddings",
    "mm_payload": "multimodal input",
    "thinking_token_budget": "a thinking budget (it counts the generated tokens)",
    "repetition_detection": "repetition detection (it watches the generated tokens)",
}
NEUTRAL: dict[str, tuple] = {"n": (None, 1), "best_of": (None, 1), "use_beam_search": (None, False),
                             "echo": (None, False), "logprobs": (None, False), "top_logprobs": (None, 0),
                             "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
                             "stop": (None, [], ""), "suffix": (None, ""), "tools": (None, []),
                             "functions": (None, [])}
# Fields of the events the proxy adds for itself, removed from what the client sees unless it asked for them.
ID_FIELDS = ("token_ids", "prompt_token_ids")


def unresumable(path: str, body: Any, reasoning_parser: bool = False) -> str | None:
    """Why a stream of this request cannot be continued faithfully after a crash, or None when it can."""
    if path not in (COMPLETIONS, CHAT):
        return f"{path} is not a completions or chat completions request"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    for name, why in UNFAITHFUL.items():
        if name in body and body[name] not in NEUTRAL.get(name, (None,)):
            return why
    if path == CHAT and reasoning_parser:
        return "a reasoning parser (it keeps state across the stream)"
    if path == CHAT and body.get("messages") and not isinstance(body.get("messages"), list):
        return "messages is not a list"
    if path == COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))):
            return "a batch of prompts (several choices in one stream)"
    return None


def upstream_body(path: str, body: dict) -> dict:
    """The request as the proxy forwards it: the same, asking for token ids too (stripped again for the client)."""
    return {**body, "return_token_ids": True} if path in (COMPLETIONS, CHAT) else body


def parse_event(data: str) -> dict | None:
    """One server-sent event's `data:` payload: its JSON object, or None for `[DONE]` and what is not an object."""
    if data.strip() == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


@dataclass
class Stream:
    """What has reached the client of one stream, learnt from the events as they pass (observe)."""

    path: str
    body: dict
    prompt_ids: list[int] | None = None
    sent_ids: list[int] = field(default_factory=list)
    events_sent: int = 0
    finish_reason: str | None = None
    stop_reason: Any = None
    head: dict = field(default_factory=dict)  # id, object, created, model of the stream
    usage_sent: bool = False
    cut: int = 0  # tokens sent when the continuation was asked for (its counts start there)

    @property
    def client_wants_ids(self) -> bool:
        return bool(self.body.get("return_token_ids"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    @property
    def resend_whole(self) -> bool:
        """Nothing reached the client yet: the original request can simply be sent again."""
        return self.events_sent == 0

    def observe(self, event: dict) -> dict:
        """Learn from an event of the original stream; return it as the client gets it."""
        if not self.head:
            self.head = {k: event[k] for k in ("id", "object", "created", "model") if k in event}
        if self.path == CHAT and isinstance(event.get("prompt_token_ids"), list):
            self.prompt_ids = list(event["prompt_token_ids"])
        for choice in event.get("choices") or []:
            if self.path == COMPLETIONS and isinstance(choice.get("prompt_token_ids"), list):
                self.prompt_ids = list(choice["prompt_token_ids"])
            self.sent_ids += [t for t in choice.get("token_ids") or [] if isinstance(t, int)]
            if choice.get("finish_reason") is not None:
                self.finish_reason, self.stop_reason = choice["finish_reason"], choice.get("stop_reason")
        if event.get("usage") is not None and not event.get("choices"):
            self.usage_sent = True
        self.events_sent += 1
        return self.for_client(event)

    def for_client(self, event: dict) -> dict:
        if self.client_wants_ids:
            return event
        out = {k: v for k, v in event.items() if k not in ID_FIELDS}
        if "choices" in out:
            out["choices"] = [{k: v for k, v in c.items() if k not in ID_FIELDS} for c in out["choices"]]
        return out

    # -- after the crash -------------------------------------------------------------------------------------
    def can_continue(self) -> bool:
        """The events so far say enough to continue: the prompt's token ids are known."""
        return self.prompt_ids is not None

    def continuation(self, max_model_len: int | None = None) -> dict:
        """The /v1/completions request that generates the rest of this stream on the restarted vLLM.
        `max_model_len` (vLLM's /v1/models says it) bounds a chat without a token limit, as vLLM's chat does:
        a completions request without one would stop after 16 tokens."""
        assert self.prompt_ids is not None
        self.cut = len(self.sent_ids)
        src = self.body
        out: dict[str, Any] = {k: src[k] for k in (SAMPLING_FIELDS if self.path == CHAT else src) if k in src}
        for k in ("messages", "max_completion_tokens", "add_generation_prompt", "continue_final_message",
                  "chat_template", "chat_template_kwargs", "add_special_tokens", "echo"):
            out.pop(k, None)
        context = len(self.prompt_ids) + self.cut
        if self.path == CHAT:
            limit = src.get("max_completion_tokens", src.get("max_tokens"))
            if limit is None and max_model_len:
                limit = max_model_len - len(self.prompt_ids)
        else:
            limit = src.get("max_tokens", 16)
        if limit is not None:
            out["max_tokens"] = max(int(limit) - self.cut, 0)
            if max_model_len:
                out["max_tokens"] = min(out["max_tokens"], max(max_model_len - context, 0))
        if src.get("min_tokens"):
            out["min_tokens"] = max(int(src["min_tokens"]) - self.cut, 0)
        out.update(prompt=self.prompt_ids + self.sent_ids, stream=True, return_token_ids=True,
                   add_special_tokens=False)  # the ids are the exact context: no BOS added again
        return out

    def rest(self, event: dict) -> dict | None:
        """A continuation event as the client gets it: the original stream's id and shape, counts that include
        what was sent before the cut. None for what the client must not see twice (the prompt ids)."""
        usage = event.get("usage")
        if isinstance(usage, dict):
            usage = {**usage, "prompt_tokens": len(self.prompt_ids or []),
                     "completion_tokens": usage.get("completion_tokens", 0) + self.cut}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = []
        for c in event.get("choices") or []:
            c = {k: v for k, v in c.items() if k != "prompt_token_ids"}
            if self.path == CHAT:
                text = c.pop("text", "")
                c = {"index": c.get("index", 0), "delta": {"content": text} if text else {},
                     "logprobs": None, "finish_reason": c.get("finish_reason"),
                     **({"stop_reason": c["stop_reason"]} if "stop_reason" in c else {}),
                     **({"token_ids": c["token_ids"]} if "token_ids" in c else {})}
            choices.append(c)
        out = {**{k: v for k, v in event.items() if k not in ("choices", "usage", "prompt_token_ids")},
               **self.head, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return self.observe_rest(out)

    def observe_rest(self, event: dict) -> dict:
        for choice in event.get("choices") or []:
            self.sent_ids += [t for t in choice.get("token_ids") or [] if isinstance(t, int)]
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        self.events_sent += 1
        return self.for_client(event)

    def closing(self) -> list[dict]:
        """vLLM died after the last token but before the end of the stream: the events still owed (the usage
        chunk, when asked for), computed here. The caller then sends `data: [DONE]`."""
        if not self.include_usage or self.usage_sent:
            return []
        prompt, done = len(self.prompt_ids or []), len(self.sent_ids)
        self.usage_sent = True
        return [{**self.head, "choices": [],
                 "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}}]
