"""Publish a weights root on the Hugging Face Hub as a model repo that ``load_colorizer`` and the app load from.

    python -m colorizers.hub publish ROOT owner/name [--private] [--revision REV] [--metrics CSV] [--dry-run]

The root is checked first: every network folder must hold ``config.json`` and ``model.safetensors`` that load
strictly (``load_network``: a checkpoint that does not match its config is an error), and every folder must be a
known network. If any check fails, nothing is uploaded and the message lists every problem. Otherwise one commit
(``HfApi.create_commit``) puts each network's ``config.json``, ``model.safetensors`` and model card
(``README.md``) in ``<network>/``, and a repo-level ``README.md`` that lists the networks, the models they make up,
their validation metrics (``--metrics``, by default ``assets/results/metrics.csv`` when ROOT is the bundled
weights) and the licence. Network files already in the repo that the root no longer has are deleted in the same
commit, so the revision holds exactly the root. ``--revision`` commits to that branch (created from ``main`` when
missing); the commit's id is printed, for pinning. The token comes from ``HF_TOKEN`` (or ``hf auth login``);
``HF_ENDPOINT`` applies. Then::

    COLORIZERS_WEIGHTS=owner/name@REV python app.py
    colorizers.load_colorizer("paracolorizer", source="owner/name@REV")
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .registry import NETWORKS
from .weights import BUNDLED_WEIGHTS, WEIGHT_FILES, load_network

CARD_FILE = "README.md"
LICENSE = "mit"  # the project's licence (LICENSE); the weights are published under it
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_METRICS = PROJECT_ROOT / "assets" / "results" / "metrics.csv"
METRIC_COLUMNS = (("fid", "FID ↓"), ("lpips", "LPIPS ↓"), ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"),
                  ("colourfulness", "Colourfulness"), ("delta_colourfulness", "Δ Colourful ↓"))


class PublishError(ValueError):
    """The root cannot be published; the message lists every problem. Nothing was uploaded."""


@dataclass(frozen=True)
class Published:
    repo_id: str
    revision: str
    commit: str
    networks: tuple[str, ...]
    url: str


def check_root(root: str | Path) -> tuple[list[str], list[str]]:
    """The networks of a weights root and the problems that stop it from being published (empty when none).
    Every folder must be a known network whose files load strictly; files at the top level are not published."""
    from . import NETWORK_NAMES
    root = Path(root).expanduser()
    if not root.is_dir():
        return [], [f"{root} is not a folder"]
    networks, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in NETWORKS:
            problems.append(f"{folder.name}/: not a network folder (networks: {', '.join(NETWORK_NAMES)})")
            continue
        missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
        if missing:
            problems.append(f"{folder.name}/: {', '.join(missing)} missing")
            continue
        try:
            load_network(folder.name, root)
        except Exception as err:  # noqa: BLE001 - any reason it does not load is a reason not to publish
            lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [""]
            reason = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "Error(s) in ...:" + the first
            problems.append(f"{folder.name}/: does not load: {type(err).__name__}: {reason[:300]}")
            continue
        networks.append(folder.name)
    if not networks and not problems:
        problems.append(f"{root} has no network folder (<root>/<network>/config.json and model.safetensors)")
    order = {name: i for i, name in enumerate(NETWORK_NAMES)}
    return sorted(networks, key=lambda n: order.get(n, len(order))), problems


def default_metrics(root: str | Path) -> Path | None:
    """The validation metrics that describe ``root``'s weights: the bundled results for the bundled weights only."""
    if Path(root).expanduser().resolve() == BUNDLED_WEIGHTS.resolve() and BUNDLED_METRICS.is_file():
        return BUNDLED_METRICS
    return None


def _parameters(folder: Path) -> int:
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def network_card(network: str, folder: Path) -> str:
    """A minimal model card for a network folder that has none."""
    config = json.loads((folder / "config.json").read_text())
    return (f"---\nlibrary_name: colorizers\nlicense: {LICENSE}\ntags: [image-colorization]\n---\n\n# `{network}`\n\n"
            f"- **Architecture**: `colorizers.build_model('{network}', **config)`, config: `{json.dumps(config)}`\n"
            "- **Training record**: none was published with these weights.\n")


def repo_card(repo_id: str, revision: str, root: Path, networks: list[str], metrics: Path | None) -> str:
    """The repo-level model card: the networks, the models they make up, their val metrics and the licence."""
    from . import MODEL_NAMES, MODEL_NETWORKS, MODEL_TITLES
    source = repo_id if revision == "main" else f"{repo_id}@{revision}"
    models = [m for m in MODEL_NAMES if all(n in networks for n in MODEL_NETWORKS[m])]
    lines = [
        "---", "library_name: colorizers", f"license: {LICENSE}", "tags: [image-colorization]", "---", "",
        f"# {repo_id.split('/')[-1]}: colorization weights", "",
        "Trained weights of the Colorization Compare models, one folder per network "
        "(`<network>/config.json`, `<network>/model.safetensors`, `<network>/README.md` with how it was trained).",
        "", "## Use", "", "```bash", f"COLORIZERS_WEIGHTS={source} python app.py",
        f"python -m colorizers photos/ --model all --weights {source} --out colorized/", "```", "", "```python",
        "import colorizers", f'c = colorizers.load_colorizer("{models[0] if models else "cnn"}", source="{source}")',
        "```", "", "## Networks", "",
        "| network | parameters | model.safetensors | sha256 | used by |", "|---|---:|---:|---|---|",
    ]
    for net in networks:
        folder = root / net
        users = ", ".join(f"`{m}`" for m in MODEL_NAMES if net in MODEL_NETWORKS[m]) or "-"
        size = (folder / "model.safetensors").stat().st_size
        lines.append(f"| `{net}` | {_parameters(folder) / 1e6:.2f} M | {size / 1e6:.1f} MB | "
                     f"`{_sha256(folder / 'model.safetensors')[:16]}` | {users} |")
    lines += ["", "Models this repo provides: " + (", ".join(f"`{m}` ({MODEL_TITLES[m]})" for m in models)
                                                   if models else "none complete (a model needs all its networks)."),
              "", "## Validation metrics", ""]
    rows = []
    if metrics is not None:
        with open(metrics, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["method"] in models or r["method"] in ("grayscale", "ground_truth")]
    if rows:
        lines += [f"From `{metrics.name}` (`python -m train.evaluate`, val split, 256 x 256, {rows[0]['images']} images).",
                  "", "| model | " + " | ".join(title for _, title in METRIC_COLUMNS) + " |",
                  "|---|" + "---:|" * len(METRIC_COLUMNS)]
        for r in rows:
            lines.append(f"| {r['title']} | " + " | ".join(r.get(key, "") for key, _ in METRIC_COLUMNS) + " |")
    else:
        lines.append("None were given for these weights: `python -m train.evaluate` measures them; publish again "
                     "with `--metrics` to list them here.")
    lines += ["", "## Licence", "", f"MIT ({LICENSE}), as the Colorization Compare project (its `LICENSE` file).", ""]
    return "\n".join(lines)


def publish(root: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            metrics: str | Path | None = None, message: str | None = None, api=None,
            dry_run: bool = False) -> Published | str:
    """Check ``root`` and upload it as the model repo ``repo_id`` (see the module docstring). Raises
    ``PublishError`` with every problem, before any request to the Hub, when the root would not load. With
    ``dry_run``, returns the repo card that would be uploaded instead."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    root = Path(root).expanduser()
    if "/" not in repo_id or repo_id.count("/") != 1 or "@" in repo_id:
        raise PublishError(f"the repo id must be owner/name, got {repo_id!r}")
    networks, problems = check_root(root)
    metrics_path = Path(metrics).expanduser() if metrics else default_metrics(root)
    if metrics and not metrics_path.is_file():
        problems.append(f"--metrics {metrics}: no such file")
    if problems:
        raise PublishError(f"{root} cannot be published; nothing was uploaded:\n" + "\n".join(f"- {p}" for p in problems))
    branch = revision or "main"
    card = repo_card(repo_id, branch, root, networks, metrics_path)
    if dry_run:
        return card

    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    additions = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode())]
    uploaded = {"README.md"}
    for net in networks:
        folder = root / net
        for name in WEIGHT_FILES:
            additions.append(CommitOperationAdd(path_in_repo=f"{net}/{name}", path_or_fileobj=str(folder / name)))
        card_path = folder / CARD_FILE
        content = card_path.read_bytes() if card_path.is_file() else network_card(net, folder).encode()
        additions.append(CommitOperationAdd(path_in_repo=f"{net}/{CARD_FILE}", path_or_fileobj=content))
        uploaded |= {f"{net}/{name}" for name in (*WEIGHT_FILES, CARD_FILE)}
    stale = [path for path in api.list_repo_files(repo_id, revision=branch)
             if path.split("/")[0] in NETWORKS and path not in uploaded]
    info = api.create_commit(
        repo_id, operations=additions + [CommitOperationDelete(path_in_repo=p) for p in stale], revision=branch,
        commit_message=message or f"Publish {len(networks)} network(s): {', '.join(networks)}")
    return Published(repo_id, branch, info.oid, tuple(networks), info.commit_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m colorizers.hub",
                                     description="Publish a weights root on the Hugging Face Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="upload a weights root as a model repo")
    p.add_argument("root", help="weights root: <root>/<network>/{config.json, model.safetensors, README.md}")
    p.add_argument("repo_id", help="owner/name of the model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                          "visibility)")
    p.add_argument("--revision", help="branch to commit to (created from main when missing); default main")
    p.add_argument("--metrics", help="metrics.csv of `python -m train.evaluate` for these weights (default: "
                                     "assets/results/metrics.csv for the bundled weights, none otherwise)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="check the root and print the repo card; upload nothing")
    args = parser.parse_args(argv)
    try:
        result = publish(args.root, args.repo_id, private=args.private, revision=args.revision,
                         metrics=args.metrics, message=args.message, dry_run=args.dry_run)
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the Hub's answer, in one line; a failed commit changes nothing
        print(f"error: the upload failed before its commit, so no file of the repo changed: {type(err).__name__}: "
              f"{(str(err).strip().splitlines() or [''])[0]}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
        return 0
    source = result.repo_id if result.revision == "main" else f"{result.repo_id}@{result.revision}"
    print(f"published {', '.join(result.networks)} to {result.repo_id} (branch {result.revision}, commit "
          f"{result.commit}).\nLoad with COLORIZERS_WEIGHTS={source}, or pin this commit with "
          f"COLORIZERS_WEIGHTS={result.repo_id}@{result.commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
