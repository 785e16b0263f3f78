"""OpenAI-shaped "logprobs" objects of generated tokens, as create_completion / create_chat_completion return them.

An entry is (token id, its log-probability, [(alternative id, log-probability), ...] most likely first, the
characters of generated text released before the token); the log-probabilities are the model's own (softmax of the
raw logits, before any logit_bias or penalty)."""
from __future__ import annotations

from typing import Callable, Sequence

Entry = tuple[int, float, list[tuple[int, float]], int]


def completion(piece: Callable[[int], bytes], entries: Sequence[Entry], k: int, base_offset: int = 0) -> dict:
    """text_completion's {"tokens", "token_logprobs", "top_logprobs", "text_offset"} with k alternatives each;
    offsets count from base_offset (the echoed prompt's length)."""
    text = lambda t: piece(t).decode("utf-8", "replace")  # noqa: E731
    return {"tokens": [text(t) for t, _, _, _ in entries],
            "token_logprobs": [lp for _, lp, _, _ in entries],
            "top_logprobs": [{text(a): alp for a, alp in tops[:k]} for _, _, tops, _ in entries],
            "text_offset": [base_offset + off for _, _, _, off in entries]}


def chat(piece: Callable[[int], bytes], entries: Sequence[Entry], k: int) -> dict:
    """chat.completion's {"content": [{"token", "logprob", "bytes", "top_logprobs"}, ...]} with k alternatives."""
    def one(t: int, lp: float) -> dict:
        b = piece(t)
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in tops[:k]]}
                        for t, lp, tops, _ in entries]}
