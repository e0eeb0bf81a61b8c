"""Which start is worth the CPU: a Res-UNet at width 32 from random weights, or at width 64 from ImageNet?

    python -m train.encoder_experiment run a --out runs/encoders      # one arm, in chunks of CPU-minutes
    python -m train.encoder_experiment score --out runs/encoders      # every snapshot on the whole val split
    python -m train.encoder_experiment plot --out runs/encoders --png docs/encoder-init.png
    python -m train.encoder_experiment grid a/03 b/03 shipped --out runs/encoders --png grid.jpg   # on val photos

The ParaColorizer generators (III-A, III-B) are "a UNet that uses a pre-trained ResNet-18 network as its
encoder". This experiment measures what that start is worth at equal compute, on ``paracolorizer_bg``'s L1
pre-training (its recipe's ``pretrain`` phase and data, at 128 x 128, one torch thread per arm):

- ``a``: ``width=32`` from random weights (the width the project shipped first);
- ``b``: ``width=64`` (torchvision's widths) with the ImageNet encoder (``--encoder-init imagenet``), fine-tuned
  from the first step;
- ``c``: the same start with the encoder frozen for a warm-up (``--freeze-encoder-steps``; no backward pass
  through it, so those steps are cheaper), then fine-tuned.
- ``b_rebalanced``: ``b``'s start pre-trained on the rebalanced L1 (``losses.RebalancedL1``, Zhang et al. 2016 2.2,
  the colour prior mixed with a uniform one at 0.8) instead of plain L1, which keeps ``b``'s colours near half the
  truth's (run after the three above had decided the start).
- ``b_perceptual``: ``b``'s start pre-trained on L1 plus a feature loss through the frozen ImageNet ResNet-18
  (``losses.PerceptualLoss``, Johnson et al. 2016; weight ``PERCEPTUAL_WEIGHT``), the "NoGAN" idea of
  pre-training a colorizer on features instead of on a,b alone.
- ``fg_perceptual``: ``b_perceptual``'s start and losses for the foreground generator (III-A), on full images and
  the object-proposal crops of ``train.proposals`` (``runs/proposals.npz``, made first).
- ``bg_adversarial``: the adversarial phase (III-B's second stage) from the shipped background generator
  (``--init``): LSGAN + 300 x the rebalanced L1 (mix 0.7) + the feature loss at its pre-training ratio, batch 16.

Each arm runs in chunks of ``--chunk`` CPU-minutes of its own process (``python -m train --cpu-minutes``, then
``--resume``), so arms that share the cores get equal work, and each chunk's export is kept as a snapshot.
``score`` evaluates every snapshot on the whole val split at 256 x 256 (FID, LPIPS, colourfulness, as
``train.evaluate``; the ground truth's Inception features computed once) into ``scores.csv``; ``plot`` draws
FID and LPIPS against CPU-minutes.

The same question for the DTU report's ``cnn`` (3.1: ResNet-18 through ``layer2``), whose shipped weights are
already trained: is it cheaper to keep training them, or to start again from ImageNet's conv1-layer2? Both of its
arms run release 0.5.0's rebalanced L1 (``train.plan.REBALANCED``) at the plan's batch of 16, at 128 x 128 for four
15-minute chunks, then a fifth at 256 x 256 (``run ARM --chunks 5 --size 256``), as the plan finishes the shipped
``cnn``:

- ``cnn_shipped``: today's weights (``assets/weights/cnn``) continued;
- ``cnn_imagenet``: ImageNet's conv1-layer2 (``--encoder-init imagenet``) and a new head.

The DTU report's ``cnn_classifier`` (3.2) had the least training of the six (2.4 epochs' worth, 62 CPU-minutes,
where the report's best model is its 110th epoch): ``cnn_classifier_shipped`` continues its shipped weights on
the plan's last stage for it (the rebalanced L1, batch 16, 224 x 224: its only size).

``--out`` should hold one network's arms, so that a plot compares like with like.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from train.plan import LAMBDA_300, REBALANCED, rebalanced_gan

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "colorize256" / "manifest.csv")
SCORES = "scores.csv"


@dataclass(frozen=True)
class Arm:
    title: str
    args: tuple[str, ...]
    network: str = "paracolorizer_bg"
    size: int = 128                  # training size unless ``run --size`` gives one


#: ``paracolorizer_bg``'s arms run its recipe's pre-training phase only (``--pretrain-share 1``), at its batch of 32.
BG_PRETRAIN = ("--pretrain-share", "1")
#: ``cnn``'s arms run as the plan's stages made the shipped weights: the rebalanced L1, batch 16 (``train.plan.COMMON``).
CNN_REBALANCED = ("--batch-size", "16", *REBALANCED)
#: ``b_perceptual``'s weight on ``losses.PerceptualLoss``: about L1's size at the start (the feature term of a grey
#: result is ~0.38 against L1's ~0.10 on val images at 128 x 128).
PERCEPTUAL_WEIGHT = "0.25"
#: The feature loss in an adversarial phase, kept at its pre-training ratio to the reconstruction term (which the
#: adversarial phase weighs at lambda 300): 300 x 0.25.
ADVERSARIAL_PERCEPTUAL_WEIGHT = "75"
#: ``b_perceptual``'s pre-training, which ``fg_perceptual`` repeats for the foreground generator.
PERCEPTUAL_PRETRAIN = (*BG_PRETRAIN, "--config", "width=64", "--encoder-init", "imagenet",
                       "--loss-weight", f"perceptual={PERCEPTUAL_WEIGHT}")
#: The object proposals ``fg_perceptual`` trains on (``train.plan.PROPOSALS_COMMAND`` makes them).
PROPOSALS = str(REPO / "runs" / "proposals.npz")

ARMS = {
    "a": Arm("width 32, random init", (*BG_PRETRAIN, "--config", "width=32")),
    "b": Arm("width 64, ImageNet encoder, fine-tuned from the start",
             (*BG_PRETRAIN, "--config", "width=64", "--encoder-init", "imagenet")),
    "c": Arm("width 64, ImageNet encoder frozen for 250 steps, then fine-tuned",
             (*BG_PRETRAIN, "--config", "width=64", "--encoder-init", "imagenet", "--freeze-encoder-steps", "250")),
    "b_rebalanced": Arm("width 64, ImageNet encoder, pre-trained on the rebalanced L1 (mix 0.8)",
                        (*BG_PRETRAIN, "--config", "width=64", "--encoder-init", "imagenet",
                         "--rebalance-mix", "0.8", "--loss-weight", "l1=0", "--loss-weight", "l1_rebalanced=1")),
    "b_perceptual": Arm("width 64, ImageNet encoder, pre-trained on L1 + ImageNet-feature loss", PERCEPTUAL_PRETRAIN),
    "fg_perceptual": Arm("foreground: width 64, ImageNet encoder, pre-trained on L1 + ImageNet-feature loss",
                         (*PERCEPTUAL_PRETRAIN, "--proposals", PROPOSALS), network="paracolorizer_fg"),
    "bg_adversarial": Arm("background: the shipped width-64 generator's adversarial phase (rebalanced L1, mix 0.7, "
                          "lambda 300, + feature loss)",
                          ("--init", str(REPO / "assets" / "weights"), *rebalanced_gan("0.7"), *LAMBDA_300,
                           "--loss-weight", f"perceptual={ADVERSARIAL_PERCEPTUAL_WEIGHT}", "--lr", "5e-5",
                           "--batch-size", "16")),
    "cnn_shipped": Arm("today's cnn weights, continued", ("--init", str(REPO / "assets" / "weights"), *CNN_REBALANCED),
                       network="cnn"),
    "cnn_imagenet": Arm("cnn from ImageNet conv1-layer2", ("--encoder-init", "imagenet", *CNN_REBALANCED),
                        network="cnn"),
    "cnn_classifier_shipped": Arm("today's cnn_classifier weights, continued",
                                  ("--init", str(REPO / "assets" / "weights"), *CNN_REBALANCED),
                                  network="cnn_classifier", size=224),
}


def train_command(arm: str, out: Path, data: str, chunk: float, size: int, threads: int, resume: bool,
                  extra: list[str]) -> list[str]:
    """One chunk of an arm, stopped after ``chunk`` CPU-minutes."""
    command = [sys.executable, "-m", "train", ARMS[arm].network, "--data", data, "--out", str(out / arm),
               "--size", str(size), "--steps", "1000000", "--threads", str(threads), "--cpu-minutes", str(chunk),
               "--checkpoint-every", "1000000", *ARMS[arm].args, *extra]
    return command + ["--resume"] if resume else command


def history(run_dir: Path) -> list[dict]:
    path = run_dir / ARMS[run_dir.name].network / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    snapshots = out / args.arm / "snapshots"
    for chunk in range(len(history(out / args.arm)) + 1, args.chunks + 1):
        command = train_command(args.arm, out, args.data, args.chunk, args.size or ARMS[args.arm].size, args.threads,
                                resume=chunk > 1, extra=args.extra)
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        done = history(out / args.arm)
        network = ARMS[args.arm].network
        target = snapshots / f"{chunk:02d}" / network
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(out / args.arm / network / name, target / name)
        (target.parent / "progress.json").write_text(json.dumps({
            "arm": args.arm, "chunk": chunk, "step": done[-1]["to_step"],
            "images": sum(h["images"] for h in done), "cpu_minutes": round(sum(h["cpu_minutes"] for h in done), 2)}))


def snapshot_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/snapshots/*/progress.json"))


def write_row(path: Path, row: dict) -> None:
    """Add one snapshot's scores to ``scores.csv`` (read again under a lock, so scorers may run side by side)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = list(csv.DictReader(open(path))) if path.is_file() else []
        rows = [r for r in rows if (r["arm"], int(r["chunk"])) != (row["arm"], int(row["chunk"]))] + [row]
        rows.sort(key=lambda r: (r["arm"], int(r["chunk"])))
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, list(row))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)


def scored(path: Path) -> set[tuple[str, int]]:
    return {(r["arm"], int(r["chunk"])) for r in csv.DictReader(open(path))} if path.is_file() else set()


def score(args: argparse.Namespace) -> None:
    """Every snapshot of ``--arms`` not yet in ``scores.csv``, scored on the val split against one set of truth
    features (computed once and kept in ``truth.pt``); with ``--until N``, waits for each arm's N-th snapshot."""
    import time

    import torch

    import colorizers
    from colorizers.color import rgb_to_l
    from train import metrics
    from train.data import read_images
    from train.evaluate import GROUND_TRUTH, Evaluation

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / SCORES
    images = read_images([args.data], split="val", size=256, num_threads=args.threads, cache=args.cache)
    batches = [images.images[start:start + 16].float() / 255.0 for start in range(0, len(images.images), 16)]
    lpips_net, fid_net = metrics.LPIPSMetric(device="cpu"), metrics.FIDMetric("cpu")
    truth_file = out / "truth.pt"
    if truth_file.is_file():
        truth = torch.load(truth_file, weights_only=False)
    else:
        evaluation = Evaluation(fid_net, lpips_net, "cpu")
        for batch in batches:
            evaluation.add(GROUND_TRUTH, batch)
        truth = {"per_image": {k: list(v) for k, v in evaluation.per_image[GROUND_TRUTH].items()},
                 "features": list(evaluation.features[GROUND_TRUTH]), "images": len(images)}
        torch.save(truth, truth_file)
    if truth["images"] != len(images):
        raise ValueError(f"{truth_file} holds {truth['images']} images, the val split {len(images)}: delete it")
    while True:
        done = scored(path)
        todo = [d for d in snapshot_dirs(out) if d.parent.parent.name in args.arms
                and (d.parent.parent.name, int(d.name)) not in done]
        for snapshot in todo:
            progress = json.loads((snapshot / "progress.json").read_text())
            network = ARMS[progress["arm"]].network
            model = colorizers.load_colorizer(network, source=str(snapshot), device="cpu")
            evaluation = Evaluation(fid_net, lpips_net, "cpu")
            evaluation.per_image[GROUND_TRUTH].update(truth["per_image"])
            evaluation.features[GROUND_TRUTH] = truth["features"]
            for batch in batches:  # as train.evaluate: the model colours the ground truth's L
                evaluation.add(network, model.colorize_l(rgb_to_l(batch)), batch)
            result, reference = evaluation.results()[0], evaluation.results()[-1]
            row = {**progress, "fid": round(result.fid, 3), "lpips": round(result.lpips, 4),
                   "colourfulness": round(result.colourfulness, 2),
                   "truth_colourfulness": round(reference.colourfulness, 2), "psnr": round(result.psnr, 3)}
            write_row(path, row)
            print(row, flush=True)
        done = scored(path)
        if not args.until or all((arm, args.until) in done for arm in args.arms):
            return
        if not todo:
            time.sleep(60)


def plot(args: argparse.Namespace) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(Path(args.out) / SCORES)))
    networks = {ARMS[r["arm"]].network for r in rows}
    if len(networks) != 1:
        raise SystemExit(f"{args.out} holds arms of {sorted(networks)}: plot one network's arms at a time")
    network = networks.pop()
    phase, what = (("rebalanced L1, 128², from 60 on at 256²", "the CNN") if network == "cnn"
                   else ("128², L1 pre-training", "the Res-UNet"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "fid", "FID (val, 699 images, 256²) ↓"), (axes[1], "lpips", "LPIPS ↓")):
        for arm, spec in ARMS.items():
            points = sorted((float(r["cpu_minutes"]), float(r[metric])) for r in rows if r["arm"] == arm)
            if points:
                ax.plot(*zip(*points), marker="o", label=f"({arm}) {spec.title}")
        if args.grey_fid and metric == "fid":
            ax.axhline(args.grey_fid, color="grey", linestyle="--", label="grey input")
        ax.set(xlabel=f"CPU-minutes of training ({phase})", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{network}: where to start {what}, at equal CPU time")
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100)
    print(f"wrote {args.png}")


def snapshot_title(out: Path, name: str) -> str:
    if name == "shipped":
        return "shipped weights"
    progress = json.loads((out / name / "progress.json").read_text())
    return f"({progress['arm']}) {progress['cpu_minutes']:.0f} CPU-min, {progress['images'] / 1000:.1f}k images"


def grid(args: argparse.Namespace) -> None:
    """Grey input, each snapshot (``ARM/CHUNK``, e.g. ``b/03``; ``shipped``: the bundled weights of the arms'
    network) and the truth on the first ``--rows`` val photos at 256 x 256, as ``train.evaluate``'s examples."""
    import torch

    import colorizers
    from colorizers.color import gray_to_rgb_from_l, rgb_to_l
    from train.data import read_images
    from train.evaluate import GRAYSCALE, GROUND_TRUTH, write_examples

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    names = [name if name == "shipped" else f"{name.split('/')[0]}/snapshots/{name.split('/')[1]}"
             for name in args.snapshots]
    missing = [n for n in names if n != "shipped" and not (out / n / "progress.json").is_file()]
    if missing:
        raise SystemExit(f"no snapshot {', '.join(missing)} under {out}")
    networks = {ARMS[json.loads((out / n / "progress.json").read_text())["arm"]].network for n in names
                if n != "shipped"}
    if len(networks) != 1:
        raise SystemExit(f"the snapshots are of {sorted(networks) or 'no network'}: grid one network's at a time")
    network = networks.pop()
    images = read_images([args.data], split="val", size=256, max_images=args.rows, num_threads=args.threads,
                         cache=None)
    truth = images.images.float() / 255.0
    l = rgb_to_l(truth)
    columns = {GRAYSCALE: gray_to_rgb_from_l(l)}
    for name in names:
        source = str(REPO / "assets" / "weights") if name == "shipped" else str(out / name)
        model = colorizers.load_colorizer(network, source=source, device="cpu")
        columns[snapshot_title(out, name)] = torch.cat([model.colorize_l(l[i:i + 8]) for i in range(0, len(l), 8)])
    columns[GROUND_TRUTH] = truth
    write_examples(Path(args.png), columns, images.names)
    print(f"wrote {args.png}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.encoder_experiment", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one arm in chunks of CPU-minutes, keeping a snapshot per chunk")
    r.add_argument("arm", choices=sorted(ARMS))
    r.add_argument("--chunks", type=int, default=4)
    r.add_argument("--chunk", type=float, default=15.0, help="CPU-minutes per chunk (default: %(default)s)")
    r.add_argument("--size", type=int, default=None, help="training size (default: the arm's, 128 but for "
                   "cnn_classifier's 224)")
    r.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `python -m train` options")
    s = sub.add_parser("score", help="score every new snapshot on the val split (scores.csv)")
    s.add_argument("--cache", default=None, help="decoded-image cache (default: the training default)")
    s.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=sorted(ARMS))
    s.add_argument("--until", type=int, default=0, metavar="N", help="keep scoring until each arm's N-th snapshot is")
    g = sub.add_parser("plot", help="FID and LPIPS against CPU-minutes")
    g.add_argument("--png", required=True)
    g.add_argument("--grey-fid", type=float, default=None, help="draw the grey input's FID as a line")
    d = sub.add_parser("grid", help="grey input, snapshots and truth on the first val photos (a PNG or JPEG)")
    d.add_argument("snapshots", nargs="+", metavar="ARM/CHUNK", help="e.g. b/03; 'shipped': the bundled weights")
    d.add_argument("--rows", type=int, default=12)
    d.add_argument("--png", required=True)
    for q in (r, s, g, d):
        q.add_argument("--out", required=True)
        q.add_argument("--data", default=DEFAULT_DATA)
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.command == "score" and args.cache is None:
        from train.data import default_cache_dir
        args.cache = str(default_cache_dir())
    {"run": run, "score": score, "plot": plot, "grid": grid}[args.command](args)


if __name__ == "__main__":
    main()
