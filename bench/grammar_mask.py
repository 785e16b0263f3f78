"""Cost of constrained output (response_format / json_schema) on the default model.

Two measurements:
  1. the full token mask alone (tests/c/tool_grammar mask): for the matcher state after every byte of a few
     documents, the time to walk the model's token trie and mark every allowed token, and the time of one
     token check (the path taken when the sampler's own pick is allowed);
  2. generation end to end through pytriattn.Llama: decode ms/token and tokens/s without a constraint, with a
     json_schema and with json_object, at temperature 1 with the default sampler and with top_k/top_p/min_p off
     (the sampler's pick is then disallowed more often, so full masks are computed more often).

    python bench/grammar_mask.py --tool build/ctest/tool_grammar --runs 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                    "required": ["city"]},
    },
    "required": ["name", "age", "role", "address"],
}
DOCS = [
    '{"name": "Alice Smith", "age": 31, "role": "admin", "address": {"city": "Paris"}}',
    '{"role":"guest","tags":["new","eu"],"name":"Bo","age":7,"address":{"city":"Lyon"}}',
]
MESSAGES = [{"role": "system", "content": "Reply with JSON only."},
            {"role": "user", "content": "Describe a user of a web shop as a JSON object."}]


def mask_cost(tool: str, model: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(SCHEMA, f)
    try:
        inp = "".join(d.encode().hex() + "\n" for d in DOCS)
        out = subprocess.run([tool, "mask", f.name, model], input=inp, capture_output=True, text=True,
                             check=True).stdout.split()
    finally:
        os.unlink(f.name)
    v = dict(zip(out[5::2], out[6::2]))  # after "masks N mask_ms MEAN MAX"
    return {"masks": int(out[1]), "mask_ms_mean": float(out[3]), "mask_ms_max": float(out[4]),
            "check_us": float(v["check_us"]), "allowed_mean": float(v["allowed"]),
            "trie_nodes": int(v["trie_nodes"]), "trie_build_ms": float(v["trie_ms"])}


def generation(model: str, runs: int, threads: int, max_tokens: int) -> list[dict]:
    from pytriattn import Llama

    llm = Llama(model, n_ctx=512, n_threads=threads, verbose=False)
    llm.create_chat_completion(MESSAGES, max_tokens=4, response_format={"type": "json_object"})  # builds the trie
    rows = []
    cases = [("none", None), ("json_schema", {"type": "json_schema", "json_schema": {"schema": SCHEMA}}),
             ("json_object", {"type": "json_object"})]
    for sampler, skw in (("default", {}), ("top_k/top_p/min_p off", dict(top_k=0, top_p=1.0, min_p=0.0))):
        toks = {name: 0 for name, _ in cases}
        ms = {name: 0.0 for name, _ in cases}
        for seed in range(runs):  # the cases interleaved, so that drifting machine load hits them alike
            for name, rf in cases:
                llm.create_chat_completion(MESSAGES, max_tokens=max_tokens, temperature=1.0, seed=seed,
                                           response_format=rf, **skw)
                toks[name] += llm.last_result["completion_tokens"]
                ms[name] += llm.last_result["decode_ms"]
        for name, _ in cases:
            rows.append({"sampler": sampler, "constraint": name, "tokens": toks[name],
                         "ms_per_token": ms[name] / max(toks[name], 1),
                         "tokens_per_s": 1e3 * toks[name] / max(ms[name], 1e-9)})
    llm.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF (default: the default model)")
    ap.add_argument("--tool", default="build/ctest/tool_grammar", help="tests/c/tool_grammar from a test build")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from pytriattn import ensure_default_model
        model = str(ensure_default_model())
    m = mask_cost(args.tool, model)
    print(f"token trie: {m['trie_nodes']} nodes, built once per model in {m['trie_build_ms']:.0f} ms")
    print(f"full mask over the vocabulary: {m['mask_ms_mean']:.2f} ms mean, {m['mask_ms_max']:.2f} ms max over "
          f"{m['masks']} states ({m['allowed_mean']:.0f} tokens allowed on average); "
          f"one token check: {m['check_us']:.2f} us")
    print()
    print("| sampler | constraint | tokens | decode ms/token | tokens/s |")
    print("|---|---|---:|---:|---:|")
    for r in generation(model, args.runs, args.threads, args.max_tokens):
        print(f"| {r['sampler']} | {r['constraint']} | {r['tokens']} | {r['ms_per_token']:.1f} | "
              f"{r['tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()
