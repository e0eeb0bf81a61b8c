"""``train.gpu``: pack -> receive -> run --dry-run (the device script on the CPU, tiny steps) -> unpack, on tiny
generated data: a colorize256-like manifest with tar shards, proposals, an ImageNet ResNet-18, an FID network and
an LPIPS backbone of the right shapes but random weights (the real ones are large; the plumbing is what is tested)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

import colorizers
from tests.helpers import write_random_weights
from train import gpu
from train.data import read_images
from train.proposals import crop_and_resize

PART_MIB = 2.0


class TinyInception(torch.nn.Module):
    """Stands in for the TF-Inception graph: 2048 features per image."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)).reshape(x.shape[0], 2048, 1, 1)


def _webp(rng: np.random.Generator) -> bytes:
    image = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 64), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "WEBP", quality=75)
    return out.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_inputs")
    rng = np.random.default_rng(0)
    data = root / "colorize256"
    data.mkdir()
    rows, kinds = [], ("object", "mixed", "scene")
    for shard, split, numbers in (("train-00.tar", "train", range(0, 6)), ("train-01.tar", "train", range(6, 10)),
                                  ("val.tar", "val", range(4))):
        with tarfile.open(data / shard, "w") as tar:
            for i in numbers:
                name = f"{split}/{i:05d}.webp"
                payload = _webp(rng)
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                rows.append({"file": name, "split": split, "shard": shard, "source": "test", "label": "",
                             "kind": kinds[i % 3]})
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # proposals as train.proposals writes them: crops cut from the images read at 256
    images = read_images([str(data / "manifest.csv")], split="train", size=256, cache=None)
    crop_boxes = np.array([[0, 0, 128, 128], [64, 32, 224, 192], [10, 10, 250, 250]], np.int32)
    picks = [0, 3, 7]
    crops = np.stack([crop_and_resize(images.images[i], tuple(map(int, b)), 256).numpy()
                      for i, b in zip(picks, crop_boxes)])
    np.savez(root / "proposals.npz", crops=crops, boxes=crop_boxes.astype(np.float32), crop_boxes=crop_boxes,
             scores=np.ones(3, np.float32), classes=np.zeros(3, np.int64),
             image_names=np.array([images.names[i] for i in picks]))
    torch.manual_seed(0)
    resnet = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
              if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")}
    save_file(resnet, str(root / "resnet18.safetensors"))
    torch.jit.script(TinyInception()).save(str(root / "inception.pt"))
    torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), root / "alexnet.pth")
    write_random_weights(root / "weights", networks=["paracolorizer_fg", "paracolorizer_bg", "paracolorizer_fusion"])
    return root


def pack_args(inputs, out, plan="continue_shipped", *extra) -> list[str]:
    return ["pack", "--plan", plan, "--out", str(out), "--data", str(inputs / "colorize256" / "manifest.csv"),
            "--proposals", str(inputs / "proposals.npz"), "--weights", str(inputs / "weights"),
            "--resnet18", str(inputs / "resnet18.safetensors"), "--fid-network", str(inputs / "inception.pt"),
            "--lpips-backbone", str(inputs / "alexnet.pth"), "--max-mib", str(PART_MIB), *extra]


@pytest.fixture(scope="module")
def packed(inputs, tmp_path_factory):
    payload = tmp_path_factory.mktemp("device") / ".gpu"
    assert gpu.main(pack_args(inputs, payload)) == 0
    return payload


def test_pack_cuts_the_payload_into_parts_under_the_limit_and_lists_every_file(packed, inputs):
    manifest = json.loads((packed / "part-01" / gpu.MANIFEST).read_text())
    parts = sorted(packed.glob("part-*"))
    assert len(parts) == len(manifest["parts"]) >= 3
    for part in parts:  # what one call carries: the part's folder, its data and its copy of the manifest
        assert sum(f.stat().st_size for f in part.iterdir()) <= PART_MIB * gpu.MiB
        assert (part / gpu.MANIFEST).read_text() == (packed / "part-01" / gpu.MANIFEST).read_text()
    paths = {item["path"] for item in manifest["items"]}
    assert {"data/manifest.csv", "data/train-00.tar", "data/train-01.tar", "data/val.tar", gpu.BOXES_FILE,
            gpu.FID_FILE, gpu.LPIPS_FILE, "site/lpips/__init__.py", "init/paracolorizer_fg/model.safetensors",
            "init/paracolorizer_bg/config.json", "init/paracolorizer_fusion/model.safetensors"} <= paths
    assert gpu.RESNET18_FILE not in paths  # this plan continues trained weights: no ImageNet encoder to carry
    assert "python3 -m train.gpu run" in (packed / "calls.md").read_text()
    # the boxes travel, not the crops
    with np.load(io.BytesIO(gpu.proposal_boxes(inputs / "proposals.npz"))) as boxes:
        assert "crops" not in boxes.files and int(boxes["crop_size"]) == 256


def test_shards_option_cuts_the_manifest_to_the_shards_carried(inputs):
    items = gpu.data_items(inputs / "colorize256" / "manifest.csv", ["train-01"])
    assert [i.path for i in items] == ["data/manifest.csv", "data/train-01.tar", "data/val.tar"]
    rows = list(csv.DictReader(io.StringIO(items[0].data.decode())))
    assert {r["shard"] for r in rows} == {"train-01.tar", "val.tar"} and len(rows) == 8
    with pytest.raises(ValueError, match="train-07"):
        gpu.data_items(inputs / "colorize256" / "manifest.csv", ["train-07"])


def test_the_imagenet_plan_carries_the_resnet18_and_points_the_engine_at_it(inputs, tmp_path):
    """The width-64 plan starts its generators from the ImageNet ResNet-18, which the engine finds through
    ``$COLORIZERS_RESNET18`` there (no ``../shared`` on that machine)."""
    payload = tmp_path / ".gpu"
    assert gpu.main(pack_args(inputs, payload, "imagenet64", "--no-lpips")) == 0
    manifest = gpu.read_manifest(payload)
    paths = {item["path"] for item in manifest["items"]}
    assert gpu.RESNET18_FILE in paths and gpu.LPIPS_FILE not in paths
    assert "init/paracolorizer_fusion/model.safetensors" in paths and "init/paracolorizer_fg/config.json" not in paths
    files = gpu.assemble(payload, manifest)
    assert (files / gpu.RESNET18_FILE).read_bytes() == (inputs / "resnet18.safetensors").read_bytes()
    lanes = gpu.plan_lanes("imagenet64")
    counts = {}
    first = gpu.stage_command(lanes[0], 0, tmp_path / "runs", files / "data" / "manifest.csv", files / "init", None,
                              gpu.DryRun(), counts)
    assert first[first.index("--encoder-init") + 1] == "imagenet" and "width=64" in first
    assert first[first.index("--loss-weight") + 1] == "perceptual=0.25"  # pre-trained as 1.0.0's bg generator
    assert first[first.index("--device") + 1] == "cpu" and first[first.index("--size") + 1] == "32"
    adversarial = gpu.stage_command(lanes[0], 2, tmp_path / "runs", files / "data" / "manifest.csv",
                                    files / "init", 1.5, None, {})
    assert adversarial[adversarial.index("--init") + 1] == str(tmp_path / "runs" / "fg64_pre")
    assert adversarial[-3:] == ["1.5", "--out", str(tmp_path / "runs" / "fg64_adv")]
    found = subprocess.run([sys.executable, "-c", "from train import imagenet_init; print(imagenet_init.DEFAULT_RESNET18)"],
                           cwd=gpu.REPO, env=gpu.device_env(files, tmp_path), capture_output=True, text=True, check=True)
    assert found.stdout.strip() == str(files / gpu.RESNET18_FILE)


def test_a_missing_or_corrupt_part_stops_the_run_before_any_training(packed, tmp_path, capsys):
    broken = tmp_path / ".gpu"
    for part in sorted(packed.glob("part-*"))[:-1]:  # the last part did not arrive
        (broken / part.name).mkdir(parents=True)
        for f in part.iterdir():
            (broken / part.name / f.name).write_bytes(f.read_bytes())
    assert gpu.main(["receive", "--payload", str(broken)]) == 0
    assert "still to come" in capsys.readouterr().out
    out = tmp_path / "out"
    assert gpu.main(["run", "--payload", str(broken), "--out", str(out), "--dry-run"]) == 2
    last = sorted(packed.glob("part-*"))[-1].name
    assert "parts missing" in capsys.readouterr().err and not (broken / "work").exists()
    data = next((broken / "part-02").glob("payload-*.bin"))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert gpu.main(["receive", "--payload", str(broken)]) == 1
    assert "corrupt part(s)" in capsys.readouterr().err
    assert gpu.main(["run", "--payload", str(broken), "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "part-02" in err and "corrupt" in err and last not in err
    assert not (broken / "work").exists() and not (broken / "files").exists()


def test_dry_run_trains_scores_and_returns_weights_that_unpack_bit_identical(packed, inputs, tmp_path, capsys):
    assert gpu.main(["receive", "--payload", str(packed)]) == 0
    assert "complete" in capsys.readouterr().out
    out = tmp_path / "out"
    rc = gpu.main(["run", "--payload", str(packed), "--out", str(out), "--max-stages", "2", "--keep", "all",
                   "--dry-run"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    work = packed / "work"
    # the files rebuilt there are the ones packed here
    files = packed / "files"
    assert (files / "data" / "train-00.tar").read_bytes() == (inputs / "colorize256" / "train-00.tar").read_bytes()
    with np.load(work / "runs" / "proposals.npz") as rebuilt, np.load(inputs / "proposals.npz") as original:
        assert np.array_equal(rebuilt["crops"], original["crops"])  # the crops, cut again from their boxes
    # every stage ran from the carried weights and left a snapshot; the second stage resumed the first
    stages = json.loads((work / "snapshots.json").read_text())
    assert [(s["id"], s["status"]) for s in stages] == [("fg-1", "ok"), ("fg-2", "ok"), ("bg-1", "ok"), ("bg-2", "ok")]
    assert [s["history"]["to_step"] for s in stages] == [2, 4, 2, 4]
    assert all(s["history"]["device"] == "cpu" for s in stages)
    training = json.loads((work / "runs" / "fg_gpu" / "paracolorizer_fg" / "training_config.json").read_text())
    assert training["config"]["init"] == str(files / "init") and training["config"]["proposals"].endswith("proposals.npz")
    # every snapshot alone, every fg x bg pair fused, the starting weights and the floor were scored
    with open(work / "scores.csv", newline="") as f:
        scores = {row["name"]: row for row in csv.DictReader(f)}
    for name in ("fg-1", "fg-2", "bg-2", "start paracolorizer_fg", "grayscale", "fused fg-2 + bg-1 (start fusion)"):
        assert float(scores[name]["fid"]) > 0 and 0 <= float(scores[name]["lpips"]) < 1, name
    assert sum(row["kind"] == "pair" for row in scores.values()) == 4
    # what comes back fits $OUT: at most 8 flat files of at most 16 MiB, 64 MiB in all
    sent = list(out.iterdir())
    assert len(sent) <= gpu.OUT_FILES and all(f.is_file() for f in sent)
    assert all(f.stat().st_size <= gpu.OUT_FILE_BYTES for f in sent)
    assert sum(f.stat().st_size for f in sent) <= gpu.OUT_BYTES
    assert {"return.json", "scores.md", "scores.csv", "results.tar.001"} <= {f.name for f in sent}
    # unpacked here: the weights are the device's, bit for bit, and load
    here = tmp_path / "here"
    assert gpu.main(["unpack", str(out), "--to", str(here)]) == 0
    for stage in stages:
        ours = here / "snapshots" / stage["id"] / stage["network"] / "model.safetensors"
        assert ours.read_bytes() == (work / "snapshots" / stage["id"] / stage["network"] / "model.safetensors").read_bytes()
        colorizers.load_network(stage["network"], here / "snapshots" / stage["id"])
    colorizer = colorizers.load_colorizer("paracolorizer_fg", source=here / "snapshots" / "fg-2")
    assert colorizer.colorize(Image.new("RGB", (40, 30), (90, 90, 90))).size == (40, 30)
    assert (here / "runs" / "bg_gpu" / "paracolorizer_bg" / "history.jsonl").is_file()
    assert (here / "scores.md").read_text() == (work / "scores.md").read_text()


def test_returns_too_large_for_one_call_come_in_chunks_fetched_by_later_calls(packed, tmp_path, monkeypatch, capsys):
    """Weights larger than one call's $OUT: the first chunks come with the run, the rest with ``fetch`` calls;
    ``unpack`` names the missing chunks (and the fetch that brings them) until all are there."""
    work = packed / "work"
    if not (work / "return").is_dir():
        pytest.skip("needs the dry run above")
    stages = [gpu.StageResult(s["lane"], s["network"], s["index"], s["stage"], s["run"], s["status"],
                              snapshot=s["snapshot"]) for s in json.loads((work / "snapshots.json").read_text())]
    whole = sum(c["bytes"] for c in gpu.write_return(work, stages, ["fg-2", "bg-2"]))
    monkeypatch.setattr(gpu, "RETURN_CHUNK", whole // 10 + 1)  # ten chunks: three calls' worth
    chunks = gpu.write_return(work, stages, ["fg-2", "bg-2"])
    assert len(chunks) == 10
    calls = [tmp_path / "call1"]
    gpu.send(work, calls[0], 1)
    assert gpu.main(["unpack", str(calls[0]), "--to", str(tmp_path / "x")]) == 1
    assert f"--first {gpu.RETURN_CHUNKS + 1}" in capsys.readouterr().err
    for first in range(gpu.RETURN_CHUNKS + 1, len(chunks) + 1, gpu.RETURN_CHUNKS):
        calls.append(tmp_path / f"call{len(calls) + 1}")
        assert gpu.main(["fetch", "--payload", str(packed), "--out", str(calls[-1]), "--first", str(first)]) == 0
        sent = list(calls[-1].iterdir())
        assert len(sent) <= gpu.OUT_FILES and sum(f.stat().st_size for f in sent) <= gpu.OUT_BYTES
    assert len(calls) == 3
    assert gpu.main(["unpack", *map(str, calls), "--to", str(tmp_path / "x")]) == 0
    weights = tmp_path / "x" / "snapshots" / "bg-2" / "paracolorizer_bg" / "model.safetensors"
    assert weights.read_bytes() == (work / "snapshots" / "bg-2" / "paracolorizer_bg" / "model.safetensors").read_bytes()
