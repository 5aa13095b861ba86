"""One process against two torchrun ranks (gloo, one thread each) on this machine: collect (4 trunks), evaluate
(N = 200) and train, each timed as a whole command; the ratio, and whether the results are identical.

Prints one JSON line. Usage: python bench/distributed.py [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], ranks: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    t0 = time.perf_counter()
    out = subprocess.run([*launcher, "-m", "pdiff", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} on {ranks} rank(s) failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def _digest(path: Path, skip=("timings_s", "ranks", "wall_s")) -> str:
    """A file's content digest; for JSON, without its timings (and rank count), which differ by nature; for
    safetensors, of the tensors alone (the header's metadata may record how the file was made)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path)
        h = hashlib.sha256()
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data = {k: v for k, v in data.items() if k not in skip}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a first look")
    a = ap.parse_args()
    subset = ["--train-subset", "6000" if a.quick else "15000", "--device", "cpu"]
    tmp = Path(tempfile.mkdtemp(prefix="pdiff-dist-"))
    out = {"name": "distributed", "device": "cpu", "threads_per_rank": 1, "backend": "gloo", "cores": os.cpu_count(),
           "load_average_before": os.getloadavg()[0]}
    if out["load_average_before"] > 0.5:  # two ranks on a busy machine measure the other jobs as much as ours
        out["note"] = f"measured beside other jobs (load average {out['load_average_before']:.1f} before)"
    # collect: four trunks trained from scratch (the many-trunk case: each trunk a whole training run)
    collect = ["collect", "--trunks", "4", "--trunk-mode", "scratch", "--epochs", "1", "--k", "40", *subset, "--seed", "0"]
    times = {r: _run([*collect, "--out", str(tmp / f"collect{r}")], r) for r in (1, 2)}
    same = all(_digest(tmp / "collect1" / f) == _digest(tmp / "collect2" / f)
               for f in ("checkpoints.safetensors", "base.safetensors", "trunk-3.safetensors"))
    out["collect"] = {"trunks": 4, "one_s": times[1], "two_ranks_s": times[2], "speedup": times[1] / times[2],
                      "identical": same}
    # evaluate: N = 200 generated sets (and the baselines) on the shipped bundle's clean model, 10k test images
    evaluate = ["evaluate", "--bundle", "fmnist-convnet", "--sets", "200", "--sampler", "ddim", "--steps", "20",
                "--no-tsne", "--device", "cpu"]
    times = {r: _run([*evaluate, "--json", str(tmp / f"eval{r}.json")], r) for r in (1, 2)}
    out["evaluate"] = {"n": 200, "one_s": times[1], "two_ranks_s": times[2], "speedup": times[1] / times[2],
                       "identical": _digest(tmp / "eval1.json") == _digest(tmp / "eval2.json")}
    # train: the autoencoder and the denoiser under DistributedDataParallel, on the first collection
    steps = ["--ae-steps", "300" if a.quick else "1000", "--ddpm-steps", "600" if a.quick else "2000"]
    train = ["train", "--collection", str(tmp / "collect1"), *steps, "--no-recon-eval", "--device", "cpu"]
    times = {r: _run([*train, "--out", str(tmp / f"bundle{r}")], r) for r in (1, 2)}
    out["train"] = {**dict(zip(("ae_steps", "ddpm_steps"), map(int, steps[1::2]))), "one_s": times[1],
                    "two_ranks_s": times[2], "speedup": times[1] / times[2],
                    "identical": _digest(tmp / "bundle1" / "denoiser_ema.safetensors")
                    == _digest(tmp / "bundle2" / "denoiser_ema.safetensors")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
