"""Property: a stream cut anywhere by a vLLM crash and continued on the restarted vLLM (front/continuation.py)
reads, for the client, as the one uninterrupted stream: the same text, token ids, finish reason and usage.

The model here is a fake with vLLM's stream shapes (completions: prompt ids in the first choice; chat: a role
chunk carrying the prompt ids): its next token is a function of the whole context, as a real model's is, so a
continuation that got the context wrong would give other tokens."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint.front.continuation import CHAT, COMPLETIONS, Stream, unresumable, upstream_body

from stubs.fake_model import MAX_MODEL_LEN
from stubs.fake_model import events as engine


def heard(events: list[dict], path: str) -> dict:
    """What a client reads from a stream: text, token ids, finish reason, usage, and the stream's id and model."""
    text, ids, finish, usage, heads = "", [], None, None, set()
    for e in events:
        heads.add((e["id"], e["model"], e["object"], e["created"]))
        for c in e.get("choices") or []:
            text += (c.get("delta") or {}).get("content", "") if path == CHAT else c.get("text", "")
            ids += c.get("token_ids") or []
            finish = c.get("finish_reason") or finish
            assert "prompt_token_ids" not in c or path == COMPLETIONS
        usage = e.get("usage") or usage
    return {"text": text, "ids": ids, "finish": finish, "usage": usage, "heads": heads}


requests = st.fixed_dictionaries(
    {"path": st.sampled_from([COMPLETIONS, CHAT]),
     "prompt": st.text(alphabet="abcdefghij ", min_size=1, max_size=20),
     "max_tokens": st.one_of(st.none(), st.integers(1, 30)),
     "min_tokens": st.integers(0, 5),
     "ignore_eos": st.booleans(),
     "usage": st.booleans(),
     "ids": st.booleans()})


def make_body(r: dict) -> dict:
    body: dict = {"model": "m", "stream": True, "min_tokens": r["min_tokens"], "ignore_eos": r["ignore_eos"]}
    if r["path"] == CHAT:
        body["messages"] = [{"role": "user", "content": r["prompt"]}]
    else:
        body["prompt"] = r["prompt"]
    if r["max_tokens"] is not None:
        body["max_tokens"] = r["max_tokens"]
    if r["usage"]:
        body["stream_options"] = {"include_usage": True}
    if r["ids"]:
        body["return_token_ids"] = True
    return body


@settings(max_examples=400, deadline=None)
@given(requests, st.floats(0, 1))
def test_a_stream_cut_anywhere_reads_as_one_uninterrupted_stream(r, where):
    path, body = r["path"], make_body(r)
    assert unresumable(path, body) is None
    whole = engine(path, upstream_body(path, body))
    expected = heard([Stream(path, body).for_client(e) for e in whole], path)

    cut = round(where * len(whole))  # events that reached the client before vLLM died
    s = Stream(path, body)
    client = [s.observe(e) for e in whole[:cut]]
    if s.resend_whole:  # nothing sent: the whole request again
        client += [s.observe(e) for e in engine(path, upstream_body(path, body))]
    elif s.finish_reason is not None:  # every token sent: only the end of the stream is owed
        client += s.closing()
    else:
        assert s.can_continue()
        more = s.continuation(MAX_MODEL_LEN)
        assert more["prompt"][:len(s.prompt_ids)] == s.prompt_ids and more["return_token_ids"] is True
        client += [e for e in (s.rest(e) for e in engine(COMPLETIONS, more)) if e is not None]

    got = heard(client, path)
    assert got == expected, (cut, len(whole))
    assert len(got["heads"]) == 1
    if not r["ids"]:
        assert got["ids"] == []  # the ids the proxy asked for itself never reach a client that did not


@given(st.sampled_from(sorted({"n", "best_of", "seed", "logprobs", "stop", "echo", "presence_penalty",
                               "response_format", "tools", "suffix"})))
def test_what_cannot_be_continued_faithfully_is_named(field):
    value = {"n": 2, "best_of": 3, "seed": 1, "logprobs": 1, "stop": ["x"], "echo": True, "presence_penalty": 0.5,
             "response_format": {"type": "json_object"}, "tools": [{"type": "function"}], "suffix": "s"}[field]
    why = unresumable(COMPLETIONS, {"model": "m", "prompt": "p", field: value})
    assert why and len(why) > 5
    # the neutral values of the same fields keep a request resumable
    neutral = {"n": 1, "best_of": 1, "seed": None, "logprobs": None, "stop": [], "echo": False,
               "presence_penalty": 0, "response_format": None, "tools": [], "suffix": None}[field]
    assert unresumable(COMPLETIONS, {"model": "m", "prompt": "p", field: neutral}) is None


def test_batches_and_other_paths_are_not_resumable():
    assert "batch" in unresumable(COMPLETIONS, {"prompt": ["a", "b"]})
    assert unresumable(COMPLETIONS, {"prompt": [[1, 2]]}) is None
    assert unresumable("/v1/embeddings", {"input": "x"})
    assert unresumable(CHAT, {"messages": []}, reasoning_parser=True)
