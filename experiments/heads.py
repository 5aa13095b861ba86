"""The equivariant head generator on trunks it never saw: train it on some trunks, then ask it for heads for held-out
trunks from K labelled shots per class and an unlabelled pool, beside every data-fit control on the same images.

Trunks: 0-19 of checkpoints/fmnist-convnet-trunks (2 epochs each, 25 head checkpoints) and the zoo's complete
trunks (checkpoints/fmnist-convnet-zoo/parts: 8 epochs, 10 head checkpoints), named trunk-T.

    python experiments/heads.py train --trunks 0-15 --out runs/heads/t16          # ten minutes on one thread
    python experiments/heads.py study --generator runs/heads/t16 --held 16-19 --json results/heads/t16.json
    python experiments/heads.py ship --generator runs/heads/t40 --out checkpoints/fmnist-convnet-trunks/heads
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.collection.folder import Collection  # noqa: E402
from pdiff.core.files import write_json  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.generator.equivariant import HeadGenConfig, HeadGenerator, pack_heads, train_heads  # noqa: E402
from pdiff.models.heads import form_of, own_head  # noqa: E402
from pdiff.studies.heads import (FeatureCache, HeadStudySpec, Trunk, generator_images, head_lines,  # noqa: E402
                                 head_study, training_examples)

TRUNKS = ROOT / "checkpoints" / "fmnist-convnet-trunks"
ZOO = ROOT / "checkpoints" / "fmnist-convnet-zoo" / "parts"
CACHE = ROOT / "runs" / "heads-features"
IMAGES_PER_CLASS, IMAGES_SEED = 250, 1000  # the generator's own images: shot and pool candidates per class


def numbers(text: str) -> list[int]:
    """'0-15,20,22-24' -> [0, ..., 15, 20, 22, 23, 24]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def load_trunks(ids: list[int]) -> tuple[Collection, list[Trunk]]:
    coll = Collection.load(TRUNKS)
    form = form_of(coll.layout)
    out = []
    for t in ids:
        if t < len(coll.trunks):
            out.append(Trunk(f"trunk-{t}", coll.trunks[t], coll.rows_of_trunk(t)))
        elif (ZOO / f"trunk-{t}.json").is_file():
            heads = load_file(ZOO / f"trunk-{t}.heads.safetensors")
            out.append(Trunk(f"trunk-{t}", load_file(ZOO / f"trunk-{t}.safetensors"), pack_heads(heads, form)))
        else:
            raise SystemExit(f"trunk {t} is neither in {TRUNKS} nor complete in {ZOO}")
    return coll, out


def trunk_file(t: int) -> Path:
    """Trunk t's whole-model file: the collection's, else the zoo's."""
    from pdiff.collection.folder import trunk_file as collection_file

    if (TRUNKS / collection_file(t)).is_file():
        return TRUNKS / collection_file(t)
    return ZOO / f"trunk-{t}.safetensors"


def ship(args) -> None:
    """A trained generator as a kit (generator.headkit): its weights, config and the files of its training trunks
    (by path and SHA-256, not copied), for `python -m pdiff heads`."""
    from pdiff.generator.headkit import save_kit

    model = HeadGenerator.load(args.generator)
    coll = Collection.load(TRUNKS, trunks=False)
    files = {n: trunk_file(int(n.split("-")[1])) for n in model.meta["trunks"]}
    save_kit(model, coll.task, files, args.out)
    print(f"saved {args.out}: {len(files)} training trunks")


def train(args) -> None:
    # load the trunks and the training split
    coll, trunks = load_trunks(numbers(args.trunks))
    form = form_of(coll.layout)
    data = Split.load("fashion-mnist", "train")
    cache = FeatureCache(coll.task, form, folder=CACHE)
    # every trunk's features of the generator's own images
    t0 = time.perf_counter()
    images = generator_images(data.labels, IMAGES_PER_CLASS, form.classes, IMAGES_SEED)
    examples = training_examples(trunks, cache, data, images)
    print(f"features of {len(trunks)} trunks: {time.perf_counter() - t0:.0f} s", flush=True)
    # train and save
    cfg = HeadGenConfig(width=args.width, depth=args.depth, steps=args.steps, batch_size=args.batch,
                        lr=args.lr, drop=args.drop, refine=args.refine, prior=args.prior, quality=args.quality)
    t0 = time.perf_counter()
    model = train_heads(examples, form, cfg, torch.Generator().manual_seed(args.seed),
                        log=lambda s, loss: print(f"step {s}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)",
                                                  flush=True))
    model.meta.update(seed=args.seed, seconds=time.perf_counter() - t0, images_per_class=IMAGES_PER_CLASS,
                      images_seed=IMAGES_SEED, command="python experiments/heads.py " + " ".join(sys.argv[1:]))
    model.save(args.out)
    print(f"saved {args.out}")


def study(args) -> None:
    # the generator, the held-out trunks and the training trunks (the stitch's donors)
    model = HeadGenerator.load(args.generator)
    coll, held = load_trunks(numbers(args.held))
    _, donors = load_trunks([int(n.split("-")[1]) for n in model.meta["trunks"]])
    train_split, test = Split.load("fashion-mnist", "train"), Split.load("fashion-mnist", "test")
    cache = FeatureCache(coll.task, model.form, folder=CACHE)
    exclude = torch.cat(generator_images(train_split.labels, model.meta["images_per_class"], model.form.classes,
                                         model.meta["images_seed"]))
    # the study, the report
    spec = HeadStudySpec(ks=tuple(int(k) for k in args.ks.split(",")), pool=args.pool, seed=args.seed, n=args.n,
                         guidance=args.guidance, sampler=args.sampler, steps=args.steps)
    t0 = time.perf_counter()
    report = head_study(model, held, donors, (train_split, test), spec, cache, exclude)
    report["seconds"] = time.perf_counter() - t0
    report["command"] = "python experiments/heads.py " + " ".join(sys.argv[1:])
    if args.json:
        write_json(Path(args.json), report)
    print(head_lines(report))


def sweep(args) -> None:
    """Generated accuracy on the validation split (the last 5,000 training images) at several guidance scales: the
    choice of a scale never reads the test split."""
    from pdiff.core.settings import VALIDATION
    from pdiff.data.shots import draw_fewshot
    from pdiff.measure.fewshot import accuracy_of
    from pdiff.models.heads import head_logits

    model = HeadGenerator.load(args.generator)
    coll, trunks = load_trunks(numbers(args.trunks))
    _, donors = load_trunks([int(n.split("-")[1]) for n in model.meta["trunks"]])
    train_split = Split.load("fashion-mnist", "train")
    validation = train_split.last(VALIDATION)
    cache = FeatureCache(coll.task, model.form, folder=CACHE)
    exclude = torch.cat(generator_images(train_split.labels, model.meta["images_per_class"], model.form.classes,
                                         model.meta["images_seed"]))
    draw = draw_fewshot(train_split.labels, args.k, args.pool, torch.Generator().manual_seed(args.seed),
                        model.form.classes, exclude=exclude)
    lent = [(cache.units(d, train_split, f"pool-{args.seed}", draw.pool), pack_heads(own_head(d.state, model.form),
                                                                                   model.form)[0]) for d in donors]
    out = {"generator": args.generator, "k": args.k, "split": "validation", "trunks": {}}
    for t in trunks:
        units = cache.units(t, validation, "validation")
        asked = model.ask(cache.units(t, train_split, f"shots-{args.seed}-{args.k}", draw.shots),
                          train_split.labels[draw.shots], cache.units(t, train_split, f"pool-{args.seed}", draw.pool),
                          [d for d, dn in zip(lent, donors) if dn.name != t.name] if model.shape.prior else None)
        row = {}
        for scale in (float(x) for x in args.scales.split(",")):
            heads = model.sample(asked, args.n, torch.Generator().manual_seed(args.seed), scale, args.sampler,
                                 args.steps)
            accs = [accuracy_of(lg, validation.labels) for lg in head_logits(units, heads, model.form)]
            mean = accuracy_of(head_logits(units, {n: v.mean(0, keepdim=True) for n, v in heads.items()},
                                           model.form)[0], validation.labels)
            row[str(scale)] = {"generated": sum(accs) / len(accs), "generator_mean": mean}
            print(t.name, scale, f"{row[str(scale)]['generated']:.2f} {mean:.2f}", flush=True)
        out["trunks"][t.name] = row
    if args.json:
        write_json(Path(args.json), out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    t = sub.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--trunks", default="0-15")
    t.add_argument("--out", required=True)
    defaults = HeadGenConfig()
    t.add_argument("--width", type=int, default=48)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--steps", type=int, default=defaults.steps)
    t.add_argument("--batch", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--drop", type=float, default=defaults.drop)
    t.add_argument("--refine", action="store_true", help="the condition also reads class means refined on the pool")
    t.add_argument("--prior", default=defaults.prior, choices=("none", "matched"),
                   help="matched: generate residuals from the training trunks' heads matched on the pool")
    t.add_argument("--quality", action="store_true", help="with a prior: the condition reads each channel's match quality")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=train)
    s = sub.add_parser("study", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--generator", required=True)
    s.add_argument("--held", default="16-19")
    s.add_argument("--ks", default="1,5,20")
    spec = HeadStudySpec()
    s.add_argument("--pool", type=int, default=spec.pool)
    s.add_argument("--n", type=int, default=spec.n)
    s.add_argument("--guidance", type=float, default=spec.guidance)
    s.add_argument("--sampler", default=spec.sampler)
    s.add_argument("--steps", type=int, default=spec.steps)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json")
    s.set_defaults(func=study)
    w = sub.add_parser("sweep", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--generator", required=True)
    w.add_argument("--trunks", default="16-19")
    w.add_argument("--k", type=int, default=5)
    w.add_argument("--scales", default="0.5,1,2,3")
    w.add_argument("--pool", type=int, default=spec.pool)
    w.add_argument("--n", type=int, default=10)
    w.add_argument("--sampler", default=spec.sampler)
    w.add_argument("--steps", type=int, default=spec.steps)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--json")
    w.set_defaults(func=sweep)
    h = sub.add_parser("ship", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    h.add_argument("--generator", required=True)
    h.add_argument("--out", required=True)
    h.set_defaults(func=ship)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
