#!/usr/bin/env python3
"""The fuzz corpora as text: one input per line, base64, in tests/fuzz/corpus/<target>.b64 (lines starting with '#'
are comments). replay.c reads these files as they are; libFuzzer wants folders, so:

  python tests/fuzz/corpus.py unpack json /tmp/json          # corpus/json.b64 -> one file per input
  python tests/fuzz/corpus.py pack json /tmp/json-min [--note TEXT FILE...]
                                                             # a folder (e.g. after -merge=1) -> corpus/json.b64,
                                                             # keeping the file's comment-marked inputs
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def read(path: Path) -> list[tuple[str | None, bytes]]:
    """(comment above it or None, input) for each input line of a .b64 file."""
    out, note = [], None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            note = line[1:].strip()
        elif line.strip():
            out.append((note, base64.b64decode(line.strip(), validate=True)))
            note = None
    return out


def write(path: Path, items: list[tuple[str | None, bytes]]) -> None:
    lines = []
    for note, data in items:
        if note:
            lines.append("# " + note)
        lines.append(base64.b64encode(data).decode())
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unpack", help="write each input of corpus/TARGET.b64 as a file in DIR")
    u.add_argument("target")
    u.add_argument("dir", type=Path)
    p = sub.add_parser("pack", help="replace the unmarked inputs of corpus/TARGET.b64 by the files of DIR")
    p.add_argument("target")
    p.add_argument("dir", type=Path)
    p.add_argument("--note", nargs="+", metavar=("TEXT", "FILE"),
                   help="add FILE(s) as inputs kept whatever a merge says, under the comment TEXT")
    a = ap.parse_args(argv)
    f = CORPUS / f"{a.target}.b64"
    if a.cmd == "unpack":
        a.dir.mkdir(parents=True, exist_ok=True)
        items = read(f)
        for _, data in items:
            (a.dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{len(items)} inputs of {f} written to {a.dir}")
        return 0
    kept = [(n, d) for n, d in read(f) if n] if f.exists() else []
    if a.note:
        kept += [(a.note[0], Path(x).read_bytes()) for x in a.note[1:]]
    seen = {d for _, d in kept}
    merged = [(None, p.read_bytes()) for p in sorted(a.dir.iterdir()) if p.is_file()]
    items = kept + [(n, d) for n, d in merged if d not in seen and not seen.add(d)]
    write(f, items)
    print(f"{f}: {len(kept)} marked inputs, {len(items) - len(kept)} others")
    return 0


if __name__ == "__main__":
    sys.exit(main())
