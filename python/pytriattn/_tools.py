"""Tool calls for Llama.create_chat_completion: the library renders tools and tool turns into the prompt
(triattn_chat_apply_tools), gives a forced call's JSON Schema, and parses the reply into OpenAI tool_calls
(triattn_tool_parser), exactly as triattn-server does."""
from __future__ import annotations

import json
import random
from typing import Iterator, Sequence

from . import _lib
from ._errors import ERR_INVALID_ARG, TriattnError


def wants_tools(messages: Sequence[dict], tools, tool_choice) -> bool:
    """The request needs the tool-aware renderer (tools given, or tool turns in the conversation)."""
    return tools is not None or tool_choice is not None or any(
        isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages)


def _content(m: dict) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    if not isinstance(c, str):
        raise TriattnError(ERR_INVALID_ARG, f"message content must be a string, got {type(c).__name__}")
    return c


class ToolRequest:
    """One chat request's tools: prompt rendering, the forced-call constraint and the reply parser."""

    def __init__(self, model, chat_format: str | None, tools, tool_choice, parallel_tool_calls: bool = True,
                 strict: bool = False):
        self._ffi, self._lib = _lib.load()
        ffi, lib = self._ffi, self._lib
        self._model = model
        self._keep = []
        self._fmt = self._c(chat_format) if chat_format else ffi.NULL
        self.opts = ffi.new("struct triattn_tool_options *")
        lib.triattn_tool_options_init(self.opts)
        if tools is not None:
            if not isinstance(tools, (list, tuple)):
                raise TriattnError(ERR_INVALID_ARG, "tools must be a list of {'type': 'function', 'function': ...}")
            self.opts.tools = self._c(json.dumps(list(tools), ensure_ascii=False))
        if tool_choice is not None:
            self.opts.tool_choice = self._c(json.dumps(tool_choice, ensure_ascii=False))
        self.opts.parallel_tool_calls = bool(parallel_tool_calls)
        self.opts.strict_tool_calls = bool(strict)
        self.opts.id_seed = random.getrandbits(64)
        self.has_tools = tools is not None

    def _c(self, s: str):
        b = self._ffi.new("char[]", s.encode("utf-8"))
        self._keep.append(b)
        return b

    def _err(self):
        e = self._ffi.new("char[]", 512)
        self._keep.append(e)
        return e

    def prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        ffi, lib = self._ffi, self._lib
        if not messages:
            raise TriattnError(ERR_INVALID_ARG, "messages must not be empty")
        arr = ffi.new("struct triattn_chat_tool_message[]", len(messages))
        size = 1024
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m:
                raise TriattnError(ERR_INVALID_ARG, f"each message must be a dict with 'role', got {m!r}")
            content = _content(m)
            arr[i].role, arr[i].content = self._c(str(m["role"])), self._c(content)
            size += 2 * len(content.encode("utf-8"))
            if m.get("tool_calls"):
                text = json.dumps(m["tool_calls"], ensure_ascii=False)
                arr[i].tool_calls = self._c(text)
                size += 2 * len(text)
            if m.get("tool_call_id") is not None:
                arr[i].tool_call_id = self._c(str(m["tool_call_id"]))
            if m.get("name") is not None:
                arr[i].name = self._c(str(m["name"]))
        size += 2 * len(ffi.string(self.opts.tools)) if self.opts.tools != ffi.NULL else 0
        n, err = ffi.new("size_t *"), self._err()
        for _ in range(2):
            buf = ffi.new("char[]", size)
            st = lib.triattn_chat_apply_tools(self._model, self._fmt, arr, len(messages), self.opts,
                                              bool(add_generation_prompt), buf, size, n, err, len(err))
            _lib.check(st, ffi.string(err).decode("utf-8", "replace") or None)
            if n[0] < size:
                return ffi.string(buf, n[0]).decode("utf-8", "replace")
            size = n[0] + 1
        raise TriattnError(ERR_INVALID_ARG, "chat template output changed length between calls")

    def schema(self) -> str | None:
        """The forced call's JSON Schema, or None when tool_choice forces nothing."""
        ffi, lib = self._ffi, self._lib
        n, err = ffi.new("size_t *"), self._err()
        _lib.check(lib.triattn_tool_call_schema(self._model, self._fmt, self.opts, ffi.NULL, 0, n, err, len(err)),
                   ffi.string(err).decode("utf-8", "replace") or None)
        if n[0] == 0:
            return None
        buf = ffi.new("char[]", n[0] + 1)
        _lib.check(lib.triattn_tool_call_schema(self._model, self._fmt, self.opts, buf, n[0] + 1, n, err, len(err)))
        return ffi.string(buf).decode()

    def constrain(self, gp, keep: list) -> None:
        """The one place a forced call is wired to constrained sampling (gp.json_schema)."""
        s = self.schema()
        if s is not None:
            b = self._ffi.new("char[]", s.encode())
            keep.append(b)
            gp.json_schema = b

    def parser(self) -> "ToolParser":
        return ToolParser(self)


class ToolParser:
    """Generated text → OpenAI chat deltas and the final message."""

    def __init__(self, req: ToolRequest):
        ffi, lib = req._ffi, req._lib
        self._ffi, self._lib = ffi, lib
        out, err = ffi.new("triattn_tool_parser **"), req._err()
        _lib.check(lib.triattn_tool_parser_create(req._model, req._fmt, req.opts, out, err, len(err)),
                   ffi.string(err).decode("utf-8", "replace") or None)
        self._p = ffi.gc(out[0], lib.triattn_tool_parser_free)
        self._d, self._dn = ffi.new("const char **"), ffi.new("size_t *")

    def feed(self, text: str, final: bool = False) -> list[dict]:
        data = text.encode("utf-8")
        _lib.check(self._lib.triattn_tool_parser_feed(self._p, data, len(data), bool(final), self._d, self._dn))
        return json.loads(self._ffi.unpack(self._d[0], self._dn[0]).decode("utf-8"))

    def message(self) -> dict:
        n = self._ffi.new("size_t *")
        p = self._lib.triattn_tool_parser_message(self._p, n)
        return json.loads(self._ffi.unpack(p, n[0]).decode("utf-8"))

    @property
    def n_calls(self) -> int:
        return int(self._lib.triattn_tool_parser_n_calls(self._p))


def reply_message(req: ToolRequest, text: str) -> tuple[dict, bool]:
    """The assistant message of a whole reply and whether it holds tool calls."""
    if not req.has_tools:
        return {"role": "assistant", "content": text}, False
    p = req.parser()
    p.feed(text, final=True)
    return {"role": "assistant", **p.message()}, p.n_calls > 0


def reply_deltas(req: ToolRequest, pieces: Iterator[str], state: dict) -> Iterator[dict]:
    """Chat deltas of a streamed reply; state["tool_calls"] tells whether calls were made."""
    if not req.has_tools:
        for piece in pieces:
            yield {"content": piece}
        state["tool_calls"] = False
        return
    p = req.parser()
    for piece in pieces:
        yield from p.feed(piece)
    yield from p.feed("", final=True)
    state["tool_calls"] = p.n_calls > 0
