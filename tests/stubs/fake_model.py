"""A fake model with vLLM's stream shapes, for the front proxy's tests (the stub server streams it with
STUB_STREAM=model; the property test of front/continuation.py runs it in-process).

Its next token is a function of the whole context (prompt ids + tokens so far), as a real model's is: a
continuation that got the context wrong gives other tokens. Shapes as vLLM 0.32 streams them with
`return_token_ids`: completions carry the prompt ids in the first choice, chat in its first (role) chunk.
"""
from __future__ import annotations

EOS = 0
MAX_MODEL_LEN = 64


def encode(text: str) -> list[int]:
    return [1 + (ord(c) % 40) for c in text]


def next_token(context: list[int]) -> int:
    h = 7
    for t in context:
        h = (h * 31 + t) % 1_000_003
    return h % 23  # EOS (0) about one time in 23


def text_of(token: int) -> str:
    return "" if token == EOS else chr(ord("a") + token % 26)


def events(path: str, body: dict, model: str = "m", max_model_len: int = MAX_MODEL_LEN) -> list[dict]:
    """The events vLLM would stream for this request (its chat template: the messages' text, encoded)."""
    chat = path.endswith("/chat/completions")
    head = {"id": "chatcmpl-1" if chat else "cmpl-1", "created": 100, "model": body.get("model", model),
            "object": "chat.completion.chunk" if chat else "text_completion"}
    if chat:
        prompt = encode("".join(str(m.get("content", "")) for m in body["messages"]))
        limit = body.get("max_completion_tokens", body.get("max_tokens")) or max_model_len - len(prompt)
    else:
        prompt = body["prompt"] if isinstance(body["prompt"], list) else encode(str(body["prompt"]))
        limit = body.get("max_tokens", 16)
    ids = bool(body.get("return_token_ids"))
    out_events: list[dict] = []
    if chat:
        out_events.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}],
                           **({"prompt_token_ids": prompt} if ids else {})})
    out: list[int] = []
    while True:
        t = next_token(prompt + out)
        out.append(t)
        done = "stop" if t == EOS and not body.get("ignore_eos") and len(out) >= body.get("min_tokens", 0) else (
            "length" if len(out) >= limit or len(prompt) + len(out) >= max_model_len else None)
        if chat:
            choice = {"index": 0, "delta": {"content": text_of(t)} if text_of(t) else {}, "logprobs": None,
                      "finish_reason": done}
        else:
            choice = {"index": 0, "text": text_of(t), "logprobs": None, "finish_reason": done}
            if ids and len(out) == 1:
                choice["prompt_token_ids"] = prompt
        if done:
            choice["stop_reason"] = None
        if ids:
            choice["token_ids"] = [t]
        out_events.append({**head, "choices": [choice]})
        if done:
            break
    if (body.get("stream_options") or {}).get("include_usage"):
        out_events.append({**head, "choices": [], "usage": {"prompt_tokens": len(prompt),
                                                            "completion_tokens": len(out),
                                                            "total_tokens": len(prompt) + len(out)}})
    return out_events
