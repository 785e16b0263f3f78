"""Turns include/triattn.h into a cffi cdef.

The cdef is always derived from the real header (never a hand-kept copy): comments, preprocessor
conditionals (the export-macro block, the extern "C" guard), includes and the TRIATTN_API marker are
removed; integer #defines such as TRIATTN_ABI_VERSION are kept as cffi integer constants.
Used at build time by tools/gen_cdef.py and, in a source checkout without a built package, at run time.
"""
from __future__ import annotations

import re

_INT_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+(\(?-?(?:0x[0-9A-Fa-f]+|\d+)[uUlL]*\)?)\s*$")


def _strip_comments(text: str) -> str:
    # Keep string literals intact (extern "C"), drop block and line comments.
    out, i = [], 0
    for m in re.finditer(r'"(?:\\.|[^"\\])*"|/\*.*?\*/|//[^\n]*', text, re.S):
        out.append(text[i:m.start()])
        tok = m.group(0)
        if tok.startswith('"'):
            out.append(tok)
        else:
            out.append("\n" * tok.count("\n") if tok.startswith("/*") else "")
        i = m.end()
    out.append(text[i:])
    return "".join(out)


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").split("\n")


def generate_cdef(header_text: str) -> str:
    """Returns the cdef for cffi from the text of triattn.h."""
    out: list[str] = []
    keep: list[bool] = []   # one entry per open conditional; only the include guard is kept
    guard_done = False
    for raw in _logical_lines(_strip_comments(header_text)):
        line = raw.strip()
        if line.startswith("#"):
            directive = line[1:].strip()
            word = directive.split(None, 1)[0] if directive else ""
            if word in ("if", "ifdef", "ifndef"):
                is_guard = not keep and not guard_done and word == "ifndef"
                guard_done = guard_done or is_guard
                keep.append(is_guard)
            elif word == "endif" and keep:
                keep.pop()
            elif word == "define" and all(keep):
                m = _INT_DEFINE.match(line)
                if m:
                    out.append(f"#define {m.group(1)} {re.sub(r'[uUlL]+', '', m.group(2))}")
            continue  # #include, #else, #elif, #error, the guard's own #define: dropped
        if not all(keep):
            continue
        if re.match(r'^extern\s+"C"', line) or line == "}":
            continue  # a bare "}" closes only an extern "C" block (structs and enums end with "};")
        out.append(raw.rstrip())
    text = re.sub(r"\bTRIATTN_API\b\s*", "", "\n".join(out))
    return re.sub(r"\n\s*\n+", "\n\n", text).strip() + "\n"


def abi_version(cdef: str) -> int:
    """TRIATTN_ABI_VERSION as written in a cdef (or header)."""
    m = re.search(r"#\s*define\s+TRIATTN_ABI_VERSION\s+(\d+)", cdef)
    if not m:
        raise ValueError("TRIATTN_ABI_VERSION not found")
    return int(m.group(1))


def function_names(header_text: str) -> list[str]:
    """Names of the functions the header declares with TRIATTN_API (for checks)."""
    text = _strip_comments(header_text)
    names = re.findall(r"TRIATTN_API\b[^;{]*?\b(triattn_\w+)\s*\(", text, re.S)
    return [n for n in names]
