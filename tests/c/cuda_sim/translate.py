"""cuda/<op>.cu -> C++ for the host simulator (sim.h): python translate.py IN OUT

  kernel<<<grid, block, smem, stream>>>(args)  ->  tri_sim_launch(kernel, grid, block, smem, stream)(args)
  extern __shared__ T name[];                  ->  T * name = (T *) tri_sim_dyn_smem();
  __shared__ T a[N], b;                        ->  static T a[N], b; tri_sim_shared_fresh(&a, sizeof a); ...

A static stands for the block's copy (one block runs at a time); tri_sim_shared_fresh fills it with NaN bits the
first time a thread of a new block reaches it, so reading what no thread of the block wrote shows.
"""
import os
import re
import sys


def split_top(s):
    """Splits a declarator list at commas outside brackets and parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([" and 1 or (ch in ")]" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def shared(m):
    decl = m.group(1)
    parts = split_top(decl)
    first = re.match(r"(.*?)(\w+)\s*((?:\[[^\]]*\])*)\s*$", parts[0], re.S)
    if not first:
        raise SystemExit(f"translate.py: cannot read the shared declaration '{decl}'")
    names = [first.group(2)] + [re.match(r"\s*(\w+)", p).group(1) for p in parts[1:]]
    fresh = " ".join(f"tri_sim_shared_fresh(&{n}, sizeof {n});" for n in names)
    return f"static {decl}; {fresh}"


def translate(src):
    src = re.sub(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<", r"tri_sim_launch(\1, ", src)
    src = src.replace(">>>(", ")(")
    src = re.sub(r"extern __shared__ ([\w ]*\w) (\w+)\[\];", r"\1 * \2 = (\1 *) tri_sim_dyn_smem();", src)
    return re.sub(r"(?<!extern )__shared__ ([^;{}]*);", shared, src)


if __name__ == "__main__":
    src_path, out_path = sys.argv[1], sys.argv[2]
    with open(src_path) as f:
        out = translate(f.read())
    with open(out_path + ".tmp", "w") as f:
        f.write(f'#line 1 "{src_path}"\n{out}')
    os.replace(out_path + ".tmp", out_path)
