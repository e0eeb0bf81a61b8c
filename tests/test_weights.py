"""Loading weights: local roots, the Hub protocol through a local server, and missing weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import colorizers
from colorizers.weights import MissingWeightsError
from tests.helpers import write_random_weights
from tests.hub_server import HubRepo, HubServer

ROOT = Path(__file__).resolve().parents[1]


def test_save_pretrained_round_trip_keeps_config_and_weights(tmp_path):
    net = colorizers.build_model("attention_ugan", base_width=4)
    net.save_pretrained(tmp_path / "attention_ugan")
    assert json.loads((tmp_path / "attention_ugan" / "config.json").read_text()) == {"base_width": 4}
    loaded = colorizers.load_network("attention_ugan", tmp_path)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training


def test_fp16_checkpoints_load_into_float32_networks(tmp_path):
    from safetensors.torch import save_file
    net = colorizers.build_model("cnn", width=8)
    net.save_pretrained(tmp_path / "cnn")
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(half, tmp_path / "cnn" / "model.safetensors")
    loaded = colorizers.load_network("cnn", tmp_path)
    p = next(loaded.parameters())
    assert p.dtype == torch.float32
    assert torch.allclose(p, next(net.parameters()), atol=1e-3)


def test_missing_weights_raise_a_clear_error_and_never_fall_back(tmp_path):
    write_random_weights(tmp_path, ["paracolorizer_fg", "paracolorizer_bg"])
    with pytest.raises(MissingWeightsError) as err:
        colorizers.load_colorizer("paracolorizer", source=tmp_path)
    msg = str(err.value)
    assert "paracolorizer_fusion" in msg and "model.safetensors" in msg
    with pytest.raises(MissingWeightsError, match="'cnn'"):
        colorizers.load_colorizer("cnn", source=tmp_path / "nowhere")


def test_broken_checkpoints_make_only_their_models_unavailable(tmp_path):
    write_random_weights(tmp_path)
    weights = tmp_path / "cnn" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    (tmp_path / "attention_ugan" / "config.json").write_text(json.dumps({"base_width": 32}))  # config/weights mismatch
    (tmp_path / "paracolorizer_fusion" / "config.json").write_text(json.dumps({"width": "sixteen"}))  # bad config
    with pytest.raises(Exception):
        colorizers.load_colorizer("cnn", source=tmp_path)
    available, unavailable = colorizers.load_colorizers(source=tmp_path)
    assert set(unavailable) == {"cnn", "attention_ugan", "paracolorizer"}
    assert set(available) == {"cnn_classifier", "paracolorizer_fg", "paracolorizer_bg"}
    assert all("\n" not in reason and len(reason) <= 300 for reason in unavailable.values())
    assert "paracolorizer_fusion" not in unavailable and "TypeError" in unavailable["paracolorizer"]


def test_which_models_load_does_not_depend_on_the_order_asked(tmp_path):
    write_random_weights(tmp_path, ["paracolorizer_bg", "paracolorizer_fusion"])
    for names in (["paracolorizer", "paracolorizer_bg"], ["paracolorizer_bg", "paracolorizer"]):
        available, unavailable = colorizers.load_colorizers(names, source=tmp_path)
        assert list(available) == ["paracolorizer_bg"] and list(unavailable) == ["paracolorizer"]
        assert "paracolorizer_fg" in unavailable["paracolorizer"]


def test_load_colorizers_reports_unavailable_models_and_loads_the_rest(tmp_path):
    write_random_weights(tmp_path, ["cnn", "paracolorizer_fg", "paracolorizer_bg", "paracolorizer_fusion"])
    available, unavailable = colorizers.load_colorizers(source=tmp_path)
    assert set(available) == {"cnn", "paracolorizer_fg", "paracolorizer_bg", "paracolorizer"}
    assert set(unavailable) == {"cnn_classifier", "attention_ugan"}
    assert "cnn_classifier" in unavailable["cnn_classifier"]
    # paracolorizer shares its generators with the single models: loaded once
    assert available["paracolorizer"].model.foreground is available["paracolorizer_fg"].model


def test_environment_variable_overrides_the_bundled_root(tmp_path, monkeypatch):
    monkeypatch.setenv(colorizers.WEIGHTS_ENV, str(tmp_path))
    assert colorizers.default_source() == str(tmp_path)
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        colorizers.load_colorizer("cnn")
    write_random_weights(tmp_path, ["cnn"])
    assert colorizers.load_colorizer("cnn").name == "cnn"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        colorizers.load_colorizer("deoldify")
    with pytest.raises(ValueError, match="choose one of"):
        colorizers.build_model("paracolorizer")  # a pipeline, not a trainable network


HUB_CLIENT = textwrap.dedent("""
    import json, sys
    import colorizers
    from colorizers.weights import MissingWeightsError
    from tests.helpers import random_image
    out = {}
    for source in sys.argv[1:]:
        try:
            c = colorizers.load_colorizer("paracolorizer", source=source)
            w = next(c.model.fusion.parameters()).flatten()[:4].tolist()
            out[source] = {"size": c.colorize(random_image(37, 91)).size, "w": w}
        except MissingWeightsError as err:
            out[source] = {"error": str(err)}
    print(json.dumps(out))
""")


def test_hub_repo_round_trip_through_a_local_hub_server(tmp_path):
    """save_pretrained -> a Hub repo (two revisions) -> load_colorizer('owner/name@rev') via HF_ENDPOINT."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write_random_weights(v1, seed=1)
    write_random_weights(v2, seed=2)
    repo = HubRepo()
    repo.add_revision(["v1"], v1)
    repo.add_revision(["main"], v2)
    with HubServer() as hub:
        hub.repos["colorize/paper-models"] = repo
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
        env.pop("HF_HUB_OFFLINE", None)
        sources = ["colorize/paper-models", "colorize/paper-models@v1", "colorize/other", "colorize/paper-models@v9"]
        proc = subprocess.run([sys.executable, "-c", HUB_CLIENT, *sources], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {}
    for name, folder in (("colorize/paper-models", v2), ("colorize/paper-models@v1", v1)):
        net = colorizers.load_network("paracolorizer_fusion", folder)
        expected[name] = next(net.parameters()).flatten()[:4].tolist()
        assert out[name]["size"] == [91, 37]  # PIL: (width, height)
        assert out[name]["w"] == pytest.approx(expected[name])
    assert expected["colorize/paper-models"] != pytest.approx(expected["colorize/paper-models@v1"])
    assert "paracolorizer_fg" in out["colorize/other"]["error"] and "Hub repo" in out["colorize/other"]["error"]
    assert "error" in out["colorize/paper-models@v9"]
    # the files were fetched per network subfolder, as the weights-root layout says
    assert any("/resolve/v1/paracolorizer_fusion/model.safetensors" in p for _, p in hub.requests)


def test_an_unreachable_hub_is_asked_once_not_once_per_network(tmp_path, monkeypatch):
    """Offline, an id-shaped source that is not a local folder fails fast for every network after the first."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    calls = []

    def offline(repo_id, filename, **kwargs):
        calls.append((repo_id, kwargs.get("subfolder"), filename))
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    monkeypatch.chdir(tmp_path)
    available, unavailable = colorizers.load_colorizers(source="runs/weights")
    assert not available and set(unavailable) == set(colorizers.MODEL_NAMES)
    assert len(calls) == 1
    assert "not a local folder" in unavailable["cnn"]
    assert unavailable["cnn_classifier"].startswith("no weights for 'cnn_classifier': not fetched")
