"""Parity with torchvision: converted weights give the same logits and stage activations.

Needs torch and torchvision (`pip install .[torch]`); skipped otherwise. Runs on CPU in float32.
"""

import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cxr_jax import convert, models  # noqa: E402

RTOL = 1e-4  # max |jax - torch| / max |torch|, float32

DENSE_STAGES = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                "transition2", "denseblock3", "transition3", "denseblock4", "norm5")
TV_BUILDERS = {
    "densenet121": lambda k: torchvision.models.densenet121(num_classes=k),
    "densenet169": lambda k: torchvision.models.densenet169(num_classes=k),
    "densenet_tiny": lambda k: torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
        num_classes=k),
    "resnet18": lambda k: torchvision.models.resnet18(num_classes=k),
    "resnet34": lambda k: torchvision.models.resnet34(num_classes=k),
    "resnet50": lambda k: torchvision.models.resnet50(num_classes=k),
    "resnet152": lambda k: torchvision.models.resnet152(num_classes=k),
}
MAX_REL: dict[str, float] = {}  # filled by the tests; printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _print_parity_table():
    """Prints the maximum relative errors once the module's tests ran (visible with -s)."""
    yield
    if MAX_REL:
        print("\nmax relative error (logits and every stage), float32, CPU:")
        for k, v in MAX_REL.items():
            print(f"  {k:45s} {v:.2e}")


def _randomised(net: "torch.nn.Module", in_shape, seed: int, scale: float = 1.0
                ) -> "torch.nn.Module":
    """Random weights, BN statistics set from data then perturbed, so every buffer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.momentum = None  # cumulative average: one batch gives its statistics
                m.reset_running_stats()
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        net.train()
        net(scale * torch.randn(4, *in_shape[1:], generator=g))
        net.eval()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def _torch_stages(net, name):
    """{stage name: module} for the stages cxr_jax exposes."""
    if name.startswith("densenet"):
        return {s: getattr(net.features, s) for s in DENSE_STAGES}
    out = {s: getattr(net, s) for s in ("conv1", "bn1", "relu", "maxpool")}
    for i in range(1, 5):
        layer = getattr(net, f"layer{i}")
        out[f"layer{i}"] = layer
        for j, unit in enumerate(layer):
            out[f"layer{i}.{j}"] = unit
    return out


def _torch_run(net, name, x_nchw):
    """Logits and stage activations (hooks clone: torchvision's ReLUs work in place)."""
    acts, handles = {}, []
    for stage, mod in _torch_stages(net, name).items():
        def hook(_m, _i, out, stage=stage):
            acts.setdefault(stage, out.detach().clone())  # `relu` runs twice per ResNet: first
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = net(torch.from_numpy(x_nchw))
    finally:
        for h in handles:
            h.remove()
    return logits.numpy(), {k: v.numpy() for k, v in acts.items()}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _check(model, variables, net, name, x_nchw, label):
    t_logits, t_acts = _torch_run(net, name, x_nchw)
    stages = tuple(t_acts)
    fn = jax.jit(lambda v, x: model.apply(v, x, taps=stages))
    j_logits, j_acts = fn(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    worst = _rel(j_logits, t_logits)
    assert worst < RTOL, f"{label}: logits relative error {worst:.2e}"
    for s in stages:
        a = np.asarray(j_acts[s]).transpose(0, 3, 1, 2)  # NHWC -> NCHW
        assert a.shape == t_acts[s].shape, (s, a.shape, t_acts[s].shape)
        r = _rel(a, t_acts[s])
        assert r < RTOL, f"{label}: stage {s} relative error {r:.2e}"
        worst = max(worst, r)
    MAX_REL[label] = worst
    print(f"\n{label}: max relative error (logits and {len(stages)} stages) {worst:.2e}")


@pytest.mark.parametrize("name", list(TV_BUILDERS))
def test_torchvision_parity(name, tmp_path):
    size, seed = 64, list(TV_BUILDERS).index(name)
    torch.manual_seed(seed)  # torchvision's own initialisation draws from the global generator
    net = _randomised(TV_BUILDERS[name](7), (2, 3, size, size), seed=seed)
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    sd = convert.read_state_dict(path)
    assert convert.infer_arch(sd) == name
    model = models.get(name, num_classes=7, in_channels=3)
    variables = convert.torch_to_flax(sd, model)
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    _check(model, variables, net, name, x, name)


def test_torchxrayvision_style_densenet121_end_to_end(tmp_path):
    """One channel, 18 outputs, an op_threshs buffer, 224 px, through convert() and load()."""
    torch.manual_seed(5)
    net = torchvision.models.densenet121(num_classes=18)
    net.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    info = convert.XRV_WEIGHTS["densenet121-res224-all"]
    net.register_buffer("op_threshs", torch.tensor(info["op_threshs"], dtype=torch.float32))
    net = _randomised(net, (2, 1, 224, 224), seed=5, scale=600.0)
    torch.save(net.state_dict(), tmp_path / "xrv.pt")
    m, _ = convert.convert(tmp_path / "xrv.pt", tmp_path / "ck", arch="densenet121",
                           source="torchxrayvision")
    assert (m.num_classes, m.in_channels) == (18, 1)
    model, variables = convert.load(tmp_path / "ck")
    meta = convert.load_metadata(tmp_path / "ck")
    np.testing.assert_allclose(meta["op_threshs"], info["op_threshs"], rtol=1e-6)
    x = np.random.default_rng(1).uniform(-1024, 1024, size=(1, 1, 224, 224)).astype(np.float32)
    _check(model, variables, net, "densenet121", x, "xrv densenet121 (1 ch, 18 out, 224 px)")
    # Calibrated outputs equal TorchXRayVision's op_norm(sigmoid(logits)).
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    t = np.asarray(info["op_threshs"], np.float32)
    assert 0.5 < np.abs(logits).max() < 50  # the calibration is exercised, not saturated
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = np.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))
    np.testing.assert_allclose(np.asarray(convert.calibrate(logits, t)), want, rtol=1e-5,
                               atol=1e-6)


def test_torchxrayvision_style_resnet50_wrapper_keys(tmp_path):
    """TorchXRayVision's ResNet holds torchvision's under `.model`: keys start `model.`."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torchvision.models.resnet50(num_classes=18)
            self.model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)

    torch.manual_seed(9)
    w = Wrapper()
    w.model = _randomised(w.model, (2, 1, 64, 64), seed=9)
    sd = {k: v.numpy() for k, v in w.state_dict().items()}
    assert next(iter(sd)).startswith("model.")
    model = models.get("resnet50", num_classes=18, in_channels=1)
    variables = convert.torch_to_flax(sd, model)
    x = np.random.default_rng(2).normal(size=(2, 1, 64, 64)).astype(np.float32)
    _check(model, variables, w.model, "resnet50", x, "xrv-style resnet50 (1 ch, 18 out)")


def test_export_back_to_torch_loads_strictly():
    net = _randomised(torchvision.models.resnet18(num_classes=4), (2, 3, 64, 64), seed=3)
    model = models.get("resnet18", num_classes=4, in_channels=3)
    v = convert.torch_to_flax({k: t.numpy() for k, t in net.state_dict().items()}, model)
    fresh = torchvision.models.resnet18(num_classes=4).eval()
    fresh.load_state_dict({k: torch.from_numpy(a) for k, a in convert.flax_to_torch(v).items()},
                          strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(x).numpy(), net(x).numpy())


def test_whole_module_file_is_refused_unless_trusted(tmp_path):
    net = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match=r"torchvision\.models\.resnet\.ResNet(.|\n)*"
                                         r"torch\.save\(model\.state_dict\(\), 'x\.pt'\)"
                                         r"(.|\n)*--trust_pickle"):
        convert.read_state_dict(tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        convert.convert(tmp_path / "whole.pt", tmp_path / "ck", arch="resnet18")
    sd = convert.read_state_dict(tmp_path / "whole.pt", trust_pickle=True)
    want = net.state_dict()
    assert set(sd) == set(want)
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k].numpy())


def test_trusted_pickle_of_a_class_that_cannot_be_imported(tmp_path):
    """A whole-module file in torch's legacy format (as TorchXRayVision publishes its weights)
    whose package is not installed."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "xrv_like.py").write_text(textwrap.dedent("""
        import torch, torchvision
        class XRVDenseNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                tv = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2),
                                                 num_init_features=16, bn_size=2, num_classes=18)
                tv.features.conv0 = torch.nn.Conv2d(1, 16, 7, 2, 3, bias=False)
                self.features, self.classifier = tv.features, tv.classifier
                self.op_threshs = [0.1] * 17 + [float("nan")]  # a plain attribute, as in old files
    """))
    code = (f"import sys, torch; sys.path.insert(0, {str(pkg)!r}); import xrv_like; "
            f"m = xrv_like.XRVDenseNet().eval(); "
            f"torch.save(m, {str(tmp_path / 'x.pt')!r}, _use_new_zipfile_serialization=False); "
            f"torch.save(m.state_dict(), {str(tmp_path / 'ref.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert "xrv_like" not in sys.modules
    with pytest.raises(ValueError, match=r"xrv_like\.XRVDenseNet"):
        convert.read_state_dict(tmp_path / "x.pt")
    m, v = convert.convert(tmp_path / "x.pt", tmp_path / "ck", source="torchxrayvision",
                           trust_pickle=True)
    assert (m.name, m.num_classes, m.in_channels) == ("densenet_tiny", 18, 1)
    ref = convert.read_state_dict(tmp_path / "ref.pt")
    jax.tree_util.tree_map(np.testing.assert_array_equal, v,
                           convert.torch_to_flax(ref, m))
    op = convert.load_metadata(tmp_path / "ck")["op_threshs"]
    assert op[:17] == pytest.approx([0.1] * 17) and np.isnan(op[17])
    assert "xrv_like" not in sys.modules


def test_checkpoint_wrappers_and_non_weight_files(tmp_path):
    net = torchvision.models.resnet18(num_classes=2)
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, tmp_path / "lightning.pt")
    sd = convert.read_state_dict(tmp_path / "lightning.pt")
    assert convert.infer_arch(sd) == "resnet18"
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "hparams.pt")
    with pytest.raises(ValueError, match="not a checkpoint of model weights"):
        convert.read_state_dict(tmp_path / "hparams.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        convert.read_state_dict(tmp_path / "garbage.pt")
    with pytest.raises(ValueError, match="could not be unpickled"):
        convert.read_state_dict(tmp_path / "garbage.pt", trust_pickle=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    assert convert.read_state_dict(tmp_path / "half.pt")["fc.weight"].dtype == np.float32
