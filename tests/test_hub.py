"""Publishing a weights root as a Hub model repo (``colorizers.hub``), against the local Hub of ``tests/hub_server.py``:
what is uploaded, through which path, and that the app's loader gets bit-identical models back."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from colorizers import NETWORK_NAMES
from colorizers.hub import PublishError, check_root, main, publish
from tests.helpers import write_random_weights
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_token"
REPO = "colorize/published"


@pytest.fixture
def hub(monkeypatch):
    # Xet storage is a separate service; with it disabled huggingface_hub uploads through the Hub's LFS endpoints.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    disable_progress_bars()
    try:
        with HubServer(token=TOKEN) as server:
            yield server
    finally:
        enable_progress_bars()


def api_for(hub):
    from huggingface_hub import HfApi
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


LOAD_CLIENT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import torch
    import colorizers
    from colorizers.weights import MissingWeightsError
    from tests.helpers import random_image
    torch.set_num_threads(1)
    out = {}
    for source in sys.argv[1:]:
        out[source] = {}
        for name in colorizers.MODEL_NAMES:
            try:
                c = colorizers.load_colorizer(name, source=source, precision="fp32")
            except MissingWeightsError as err:
                out[source][name] = "missing: " + str(err)
                continue
            image = np.asarray(c.colorize(random_image(45, 61, seed=3)))
            out[source][name] = hashlib.sha256(image.tobytes()).hexdigest()
    print(json.dumps(out))
""")


def load_in_child(hub, tmp_path, *sources) -> dict:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("COLORIZERS_WEIGHTS", None)
    proc = subprocess.run([sys.executable, "-c", LOAD_CLIENT, *sources], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_publish_then_load_gives_bit_identical_outputs(hub, tmp_path):
    root = Path(write_random_weights(tmp_path / "weights", seed=5))
    (root / "cnn" / "README.md").write_text("# cnn\n\nits own card\n")
    (root / "cnn" / "checkpoint.pt").write_bytes(b"training state, never published")
    (root / "cnn_classifier" / "README.md").unlink()
    result = publish(root, REPO, private=True, revision="v2", api=api_for(hub))

    repo = hub.repos[REPO]
    assert repo.private and result.revision == "v2" and result.networks == NETWORK_NAMES
    files = repo.files("v2")
    expected = {f"{net}/{name}" for net in NETWORK_NAMES for name in ("config.json", "model.safetensors", "README.md")}
    assert set(files) == expected | {"README.md", ".gitattributes"}
    assert set(repo.files("main")) == {".gitattributes"}  # the branch got the weights, main is untouched
    assert repo.revisions[result.commit][1] == files
    for net in NETWORK_NAMES:
        for name in ("config.json", "model.safetensors"):
            assert files[f"{net}/{name}"] == (root / net / name).read_bytes()
    assert files["cnn/README.md"] == b"# cnn\n\nits own card\n"
    assert b"Architecture" in files["cnn_classifier/README.md"]  # a generated card where the root had none
    # The safetensors went through the LFS batch API and one PUT each, the small text files inline in the commit.
    puts = [path for method, path in hub.requests if method == "PUT"]
    assert len(puts) == len(NETWORK_NAMES)
    assert {hashlib.sha256((root / n / "model.safetensors").read_bytes()).hexdigest() for n in NETWORK_NAMES} \
        == set(hub.lfs_objects)
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: colorizers\nlicense: mit\n")
    assert all(f"`{net}`" in card for net in NETWORK_NAMES) and "colorize/published@v2" in card

    out = load_in_child(hub, tmp_path, str(root), f"{REPO}@v2", REPO)
    local = out[str(root)]
    assert all(len(digest) == 64 for digest in local.values())  # every model loaded locally
    assert out[f"{REPO}@v2"] == local  # bit-identical outputs, model by model
    assert all(value.startswith("missing: ") for value in out[REPO].values())  # main has no weights


def test_publishing_again_uploads_only_what_changed_and_drops_what_the_root_lost(hub, tmp_path):
    root = Path(write_random_weights(tmp_path / "weights", seed=1))
    api = api_for(hub)
    first = publish(root, REPO, api=api)
    commits, puts = len(hub.repos[REPO].history), sum(m == "PUT" for m, _ in hub.requests)
    again = publish(root, REPO, api=api)  # nothing changed: no upload, no new commit
    assert again.commit == first.commit and len(hub.repos[REPO].history) == commits
    assert sum(m == "PUT" for m, _ in hub.requests) == puts

    shutil.rmtree(root / "attention_ugan")
    write_random_weights(root, ["cnn"], seed=9)
    third = publish(root, REPO, api=api)
    files = hub.repos[REPO].files("main")
    assert not any(path.startswith("attention_ugan/") for path in files)  # the revision holds exactly the root
    assert files["cnn/model.safetensors"] == (root / "cnn" / "model.safetensors").read_bytes()
    assert hub.repos[REPO].history[-1]["changed"] == ["README.md", "cnn/model.safetensors"]
    assert sum(m == "PUT" for m, _ in hub.requests) == puts + 1 and third.commit != first.commit


def test_a_broken_root_uploads_nothing_and_says_what_is_wrong(hub, tmp_path, capsys):
    root = Path(write_random_weights(tmp_path / "weights"))
    (root / "cnn" / "model.safetensors").unlink()  # a missing file
    config = root / "attention_ugan" / "config.json"
    config.write_text(json.dumps({"base_width": 32}))  # a config that does not match the checkpoint
    (root / "paracolorizer-fg").mkdir()  # a misspelt network folder
    with pytest.raises(PublishError) as err:
        publish(root, REPO, api=api_for(hub))
    message = str(err.value)
    assert "nothing was uploaded" in message
    assert "cnn/: model.safetensors missing" in message
    assert "attention_ugan/: does not load" in message and "size mismatch" in message
    assert "paracolorizer-fg/: not a network folder" in message
    assert hub.requests == [] and REPO not in hub.repos  # not one request reached the Hub

    assert main(["publish", str(root), REPO]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and "cnn/: model.safetensors missing" in stderr
    assert hub.requests == []

    networks, problems = check_root(tmp_path / "empty")
    assert networks == [] and "is not a folder" in problems[0]


def test_the_repo_card_lists_the_metrics_it_is_given(tmp_path):
    root = Path(write_random_weights(tmp_path / "weights", ["cnn", "paracolorizer_fg"]))
    card = publish(root, REPO, dry_run=True)
    assert "None were given for these weights" in card  # metrics of other weights are never claimed
    metrics = ROOT / "assets" / "results" / "metrics.csv"
    card = publish(root, REPO, metrics=metrics, dry_run=True)
    cnn_fid = next(row["fid"] for row in csv.DictReader(open(metrics)) if row["method"] == "cnn")
    assert f"| CNN baseline (DTU 3.1) | {cnn_fid} |" in card and "ParaColorizer foreground GAN (III-A)" in card
    assert "Attention UGAN" not in card  # only the models the repo provides, with the floor and the truth
    assert "Grayscale input (floor)" in card and "## Licence" in card and "MIT" in card
    with pytest.raises(PublishError, match="--metrics nowhere.csv: no such file"):
        publish(root, REPO, metrics="nowhere.csv", dry_run=True)
