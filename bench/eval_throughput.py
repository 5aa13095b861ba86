"""Batched evaluation vs. the reference tool's loop (one model at a time, DataLoader batch 64), and the batched
evaluator's cache-sized image chunks against memory-sized ones.

Prints one JSON line. Usage: python bench/eval_throughput.py [--bundle B] [--n 200] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdiff.generator.locate import load_bundle  # noqa: E402
from pdiff.core.runtime import resolve_device  # noqa: E402
from pdiff.data.datasets import load_split, normalize  # noqa: E402
from pdiff.models.staged import BatchedEvaluator  # noqa: E402
from pdiff.generator.sampling import sample  # noqa: E402
from pdiff.core.splice import splice, stacked_params  # noqa: E402
from pdiff.models.tasks import build_model  # noqa: E402


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def reference_loop(bundle, vectors, images, labels, device):
    """As the reference tool does it: build each model, run the whole net over a DataLoader."""
    preds = []
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=False)
    for v in vectors:
        model = build_model(bundle.task)
        model.load_state_dict(splice(bundle.base_state, v, bundle.layout))
        model.to(device).eval()
        out = []
        with torch.no_grad():
            for x, _ in loader:
                out.append(model(x.to(device)).argmax(-1).cpu())
        preds.append(torch.cat(out))
    return torch.stack(preds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ref-n", type=int, default=None, help="models the reference loop runs (default: all n)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    bundle = load_bundle(args.bundle)
    images, labels = load_split(bundle.task.dataset, "test")
    x = normalize(images, bundle.task.dataset)
    vectors = sample(bundle, args.n, "ddim", 20, torch.Generator().manual_seed(0))

    # batched engine: trunk once (included in the time), the generated tail under vmap
    _sync(device)
    t0 = time.perf_counter()
    model = build_model(bundle.task)
    model.load_state_dict(bundle.base_state)
    evaluator = BatchedEvaluator(model, x.to(device), bundle.names, device)
    batched = evaluator.predict_many(stacked_params(vectors, bundle.layout, bundle.base_state))
    _sync(device)
    batched_s = time.perf_counter() - t0

    # the same evaluator with image chunks as large as memory allows (before: 2.5x slower on a CPU, whose cache
    # the activations of a big chunk overflow); predictions must not change
    stacked = stacked_params(vectors, bundle.layout, bundle.base_state)
    tails_s = {}
    for name, elements in (("cache", evaluator.CACHE_ELEMENTS), ("memory", evaluator.max_elements)):
        evaluator.CACHE_ELEMENTS = elements
        t0 = time.perf_counter()
        preds = evaluator.predict_many(stacked)
        _sync(device)
        tails_s[name] = time.perf_counter() - t0
        if name == "memory":
            by_memory = preds
    del evaluator.CACHE_ELEMENTS

    ref_n = args.ref_n or args.n
    t0 = time.perf_counter()
    ref = reference_loop(bundle, vectors[:ref_n], x, labels, device)
    _sync(device)
    ref_s = (time.perf_counter() - t0) * args.n / ref_n  # scaled to n models when --ref-n is smaller
    agree = bool(torch.equal(ref, batched[:ref_n]))
    mismatches = int((ref != batched[:ref_n]).sum())
    print(json.dumps({"name": "eval_throughput", "task": bundle.task.name, "device": device, "n": args.n,
                      "images": len(labels), "batched_s": round(batched_s, 3), "reference_s": round(ref_s, 3),
                      "reference_models_run": ref_n, "speedup": round(ref_s / batched_s, 1),
                      "ms_per_model_batched": round(1000 * batched_s / args.n, 3),
                      "ms_per_model_reference": round(1000 * ref_s / args.n, 3),
                      "tail_cache_sized_chunks_s": round(tails_s["cache"], 3),
                      "tail_memory_sized_chunks_s": round(tails_s["memory"], 3),
                      "cache_sized_speedup": round(tails_s["memory"] / tails_s["cache"], 2),
                      "chunks_agree": bool(torch.equal(by_memory, batched)),
                      "predictions_agree": agree, "mismatched_predictions": mismatches}))


if __name__ == "__main__":
    main()
