"""Paired comparison of two policies' KL(full || policy) from the tail log-probs bench/kl_tail.py keeps with
--lp-dir (and full attention's with --full-cache): the mean difference over every position of one or more
windows and a 95% block-bootstrap interval (blocks of consecutive positions, resampled with replacement).

    python bench/kl_paired.py --full full-w0.npy,full-w1.npy --a w0/triattention-prompt-1024.npy,w1/... \\
        --b w0/triattention+recall256-prompt-1024.npy,w1/...
"""
import argparse

import numpy as np


def position_kl(full: np.ndarray, lp: np.ndarray) -> np.ndarray:
    f = full.astype(np.float64)
    return (np.exp(f) * (f - lp.astype(np.float64))).sum(axis=-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", required=True, help="full attention's tail log-probs, one .npy per window (comma list)")
    ap.add_argument("--a", required=True, help="policy A's, in the same window order")
    ap.add_argument("--b", required=True, help="policy B's, in the same window order")
    ap.add_argument("--block", type=int, default=32, help="positions per bootstrap block (default 32)")
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    paths = [p.split(",") for p in (a.full, a.a, a.b)]
    if len({len(p) for p in paths}) != 1:
        raise SystemExit("--full, --a and --b need the same number of windows")
    ka, kb, blocks = [], [], []
    for f, x, y in zip(*paths):
        full = np.load(f)
        da, db = position_kl(full, np.load(x)), position_kl(full, np.load(y))
        ka.append(da.mean())
        kb.append(db.mean())
        d = db - da
        nb = len(d) // a.block
        blocks.append(d[:nb * a.block].reshape(nb, a.block).mean(axis=1))
        print(f"{x}: KL A {da.mean():.4f}, B {db.mean():.4f}")
    bl = np.concatenate(blocks)
    rng = np.random.default_rng(a.seed)
    boot = np.array([bl[rng.integers(0, len(bl), len(bl))].mean() for _ in range(a.resamples)])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"windows {len(blocks)}: KL A {np.mean(ka):.4f}, B {np.mean(kb):.4f}, B - A {bl.mean():+.4f} "
          f"[{lo:+.4f}, {hi:+.4f}] (95%, block bootstrap of {a.block} positions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
