"""Architecture contracts from the papers."""
from __future__ import annotations

import pytest
import torch

import colorizers
from colorizers.networks import AttentionGate, AttentionUNet, DenseFuse, PatchDiscriminator, SelfAttention
from colorizers.networks.densefuse import fuse_features


def test_public_names():
    assert colorizers.MODEL_NAMES == ("cnn", "cnn_classifier", "attention_ugan", "paracolorizer_fg",
                                      "paracolorizer_bg", "paracolorizer")
    assert set(colorizers.NETWORKS) == set(colorizers.NETWORK_NAMES)


@pytest.mark.parametrize("name", ["cnn", "attention_ugan", "paracolorizer_fg", "paracolorizer_bg"])
def test_generators_map_l_to_ab_at_the_input_resolution(name):
    net = colorizers.build_model(name).eval()
    out = net(torch.rand(2, 1, 256, 256) * 2 - 1)
    assert out.shape == (2, 2, 256, 256)
    assert out.abs().max() <= 1.0


def test_cnn_is_resnet18_cut_after_its_sixth_child():
    enc = colorizers.build_model("cnn").encoder
    assert [n for n, _ in enc.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    assert enc.conv1.in_channels == 1
    assert enc(torch.zeros(1, 1, 256, 256))[-1].shape == (1, 128, 32, 32)


def test_patchgan_maps_lab_256_to_30x30():
    assert PatchDiscriminator()(torch.randn(2, 3, 256, 256)).shape == (2, 1, 30, 30)


def test_attention_gate_follows_equations_4_and_5():
    gate = AttentionGate(f_g=16, f_l=8, f_int=4)
    assert gate.w_x.kernel_size == gate.w_g.kernel_size == gate.psi.kernel_size == (1, 1)
    assert gate.w_x.bias is None and gate.w_g.bias is not None and gate.psi.out_channels == 1
    x, g = torch.randn(2, 8, 32, 32), torch.randn(2, 16, 32, 32)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (2, 1, 32, 32) and (alpha > 0).all() and (alpha < 1).all()
    manual = torch.sigmoid(gate.psi(torch.relu(gate.w_x(x) + gate.w_g(g))))
    assert torch.allclose(gate(x, g), x * manual)


def test_attention_unet_gates_every_skip():
    net = AttentionUNet(base_width=4)
    assert len(net.dec) == 4 and all(isinstance(b.gate, AttentionGate) for b in net.dec)
    seen = []
    for block in net.dec:
        block.gate.register_forward_hook(lambda m, inp, out: seen.append((inp[0].shape, out.shape)))
    net(torch.zeros(1, 1, 256, 256))
    assert [s[1][-1] for s in seen] == [32, 64, 128, 256]
    assert all(a == b for a, b in seen)  # gated skip keeps the skip's shape


def test_iizuka_takes_224_and_returns_colour_and_class_logits():
    net = colorizers.build_model("cnn_classifier", width=16, num_classes=7).eval()
    ab, logits = net(torch.zeros(3, 1, 224, 224))
    assert ab.shape == (3, 2, 224, 224) and logits.shape == (3, 7)
    assert net.native_size == 224
    assert net.low_level(torch.zeros(1, 1, 224, 224)).shape[-2:] == (28, 28)
    with pytest.raises(ValueError, match="224"):
        net(torch.zeros(1, 1, 256, 256))


def test_iizuka_classification_loss_does_not_reach_mid_level_fusion_or_colorization():
    net = colorizers.build_model("cnn_classifier", width=8, num_classes=3)
    _, logits = net(torch.randn(2, 1, 224, 224))
    logits.sum().backward()
    for part in (net.mid_level, net.fusion, net.colorization, net.global_to_fusion):
        assert all(p.grad is None for p in part.parameters())
    assert all(p.grad is not None for p in net.low_level.parameters())


def test_self_attention_starts_as_identity_and_mixes_positions():
    sa = SelfAttention(16)
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(sa(x), x)
    with torch.no_grad():
        sa.gamma.fill_(1.0)
    y1 = sa(x)
    x2 = x.clone()
    x2[..., 0, 0] += 5  # change one position: every other position's output moves
    assert (sa(x2) - y1)[..., 7, 7].abs().sum() > 0


def test_foreground_has_self_attention_and_background_does_not():
    fg, bg = colorizers.build_model("paracolorizer_fg"), colorizers.build_model("paracolorizer_bg")
    assert any(isinstance(m, SelfAttention) for m in fg.modules())
    assert not any(isinstance(m, SelfAttention) for m in bg.modules())


def test_densefuse_encoder_decoder_and_both_strategies():
    net = DenseFuse()
    assert len(net.encoder[1].layers) == 3
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.decoder.modules()) == 4
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    fa, fb = net.encode(a), net.encode(b)
    assert fa.shape == (1, 64, 32, 32)
    assert torch.allclose(fuse_features([fa, fb], "addition"), fa + fb)
    fused = fuse_features([fa, fb], "l1_norm")
    # L1-norm strategy: a convex, per-pixel weighting of the inputs
    lo, hi = torch.minimum(fa, fb), torch.maximum(fa, fb)
    assert ((fused >= lo - 1e-5) & (fused <= hi + 1e-5)).all()
    assert torch.allclose(fuse_features([fa, fa], "l1_norm"), fa, atol=1e-6)
    for strategy in ("addition", "l1_norm"):
        out = net.fuse([a, b], strategy)
        assert out.shape == a.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="strategy"):
        net.fuse([a, b], "max")


def test_paracolorizer_runs_both_generators_and_fuses(random_weights_root):
    c = colorizers.load_colorizer("paracolorizer", source=random_weights_root)
    out = c.model.predict_all(torch.rand(1, 1, 256, 256) * 100)
    assert set(out) == {"paracolorizer_fg", "paracolorizer_bg", "paracolorizer"}
    assert all(v.shape == (1, 2, 256, 256) for v in out.values())
    assert not torch.allclose(out["paracolorizer"], out["paracolorizer_fg"])


def test_weighted_overlay_mixes_the_two_colourings_and_refuses_weights_outside_0_1(random_weights_root):
    """Table V's baseline: alpha * foreground + (1 - alpha) * background, in RGB, no fusion network."""
    from colorizers.color import lab_to_rgb
    from colorizers.paracolorizer import WeightedOverlay
    para = colorizers.load_colorizer("paracolorizer", source=random_weights_root, precision="fp32").model
    l = torch.rand(1, 1, 64, 64) * 60 + 20
    parts = para.predict_all(l)
    rgb = {name: lab_to_rgb(torch.cat([l, parts[name]], dim=1)) for name in ("paracolorizer_fg", "paracolorizer_bg")}
    for alpha in (0.0, 0.3, 1.0):
        ab = WeightedOverlay(para.foreground, para.background, alpha).predict_ab(l)
        mixed = alpha * rgb["paracolorizer_fg"] + (1 - alpha) * rgb["paracolorizer_bg"]
        assert torch.allclose(lab_to_rgb(torch.cat([l, ab], dim=1)), mixed, atol=0.02), alpha
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            WeightedOverlay(para.foreground, para.background, alpha)


def test_default_widths_fit_the_250_mb_fp16_budget(tmp_path):
    """The six networks at their default widths, exported as training exports them, ship in 250 MB at most."""
    from train.engine import export
    for name in colorizers.NETWORK_NAMES:
        export(colorizers.build_model(name), tmp_path / name)
    sizes = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in colorizers.NETWORK_NAMES}
    assert sum(sizes.values()) < 250e6, sizes
