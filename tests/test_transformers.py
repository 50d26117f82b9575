"""Transformers quantized whole: attention projections, functional call sites, the coverage report."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqtools.models import get_model, list_models
from eqtools.quant import CoverageError, QLinear, QPackedInProjection, RoutedMultiheadAttention, quantize_model
from eqtools.quant.attention import route_attention

PAPER_SETTINGS = {"first_layer": {"w_bits": 8, "a_bits": 8}, "last_layer": {"w_bits": 8, "a_bits": 8}}
# a small space keeps data initialisation of the 30-90M-parameter models affordable
SMALL_SPACE = {**PAPER_SETTINGS, "w_bits": (2, 8), "a_bits": (2, 8), "granularities": ("per-channel",),
               "symmetries": ("sym",)}


# ------------------------------------------------------------------ MultiheadAttention rewrite
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "float", "causal"])
def test_routed_attention_computes_what_torch_computes(batch_first, need_weights, masks):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    routed = copy.deepcopy(ref)
    assert route_attention(routed) == {}
    assert isinstance(routed, RoutedMultiheadAttention)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kwargs = {
        "none": {},
        "padding": {"key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2])},
        "float": {"attn_mask": torch.randn(5, 5)},
        "causal": {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1), "is_causal": True},
    }[masks]
    for average in (True, False):
        with torch.no_grad():
            a, wa = ref(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
            b, wb = routed(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert (wa is None) == (wb is None)
        if wa is not None:
            torch.testing.assert_close(wb, wa, atol=1e-6, rtol=1e-5)
    memory = torch.randn(2, 7, 16) if batch_first else torch.randn(7, 2, 16)  # cross-attention
    with torch.no_grad():
        torch.testing.assert_close(routed(x, memory, memory)[0], ref(x, memory, memory)[0], atol=1e-5, rtol=1e-5)
    assert list(routed.state_dict()) == list(ref.state_dict())


def test_unroutable_attention_is_left_alone_with_a_reason():
    separate = nn.MultiheadAttention(16, 4, kdim=8, vdim=8)
    assert "kdim" in route_attention(separate)[""]
    assert type(separate) is nn.MultiheadAttention


# ------------------------------------------------------------------ tiny ViT: the whole model
def _tiny_vit():
    torch.manual_seed(0)
    model = get_model("tiny_vit", num_classes=10, in_channels=1)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model, torch.randn(8, 1, 28, 28)


def test_tiny_vit_converts_every_weight_matmul_and_keeps_state_dict_keys():
    model, x = _tiny_vit()
    float_keys = set(model.state_dict())
    supernet = quantize_model(model, PAPER_SETTINGS, x[:1])
    report = supernet.coverage
    assert report.share == 1.0 and not report.float_matmul
    names = set(supernet.space.layer_names)
    assert {"encoder.layers.encoder_layer_0.self_attention.in_proj",
            "encoder.layers.encoder_layer_0.self_attention.out_proj"} <= names
    attn = supernet.model.encoder.layers[0].self_attention
    assert isinstance(attn.in_proj, QPackedInProjection) and isinstance(attn.out_proj, QLinear)
    keys = {k.removeprefix("model.") for k in supernet.state_dict() if "_quant." not in k}
    assert keys == float_keys  # float checkpoints load into the converted model unchanged
    # the trace counts the attention projections: 3E x E weights over 50 tokens of width E = 64
    info = supernet.space.layer("encoder.layers.encoder_layer_0.self_attention.in_proj")
    assert (info.weight_params, info.out_channels, info.act_elems, info.macs) == (3 * 64 * 64, 192, 50 * 64, 50 * 192 * 64)
    # float parts are reported as float, not silently skipped
    other = {reason for reason, _, _ in report.other}
    assert "LayerNorm.weight" in other and "Encoder.pos_embedding" in other


def test_tiny_vit_min_and_max_subnets_differ_and_gradients_reach_attention():
    model, x = _tiny_vit()
    with torch.no_grad():
        ref = model.eval()(x)
    supernet = quantize_model(model, PAPER_SETTINGS, x[:1])
    supernet.init_from_data([x])
    supernet.eval()
    with torch.no_grad():
        high = supernet(x)
        with supernet.apply(supernet.space.min()):
            low = supernet(x)
        with supernet.float_mode():
            torch.testing.assert_close(supernet(x), ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(high).all() and torch.isfinite(low).all()
    assert float((high - ref).norm() / ref.norm()) < float((low - ref).norm() / ref.norm())
    assert not torch.allclose(high, low)
    supernet.train()
    supernet.apply(supernet.space.min())
    supernet(x).sum().backward()
    attn = supernet.model.encoder.layers[0].self_attention
    assert attn.in_proj_weight.grad is not None and attn.in_proj_weight.grad.abs().sum() > 0
    assert attn.in_proj.act_quant.step.grad is not None


# ------------------------------------------------------------------ functional call sites (Swin-style)
class _FunctionalAttention(nn.Module):
    """Uses its Linear layers' weights through F.linear, as torchvision's Swin does."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        return F.linear(input=y, weight=self.proj.weight, bias=self.proj.bias)  # by keyword too


class _Net(nn.Module):
    def __init__(self, extra: nn.Module | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = _FunctionalAttention(16)
        self.extra = extra
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x)
        if self.extra is not None:
            x = x + self.extra(x.transpose(1, 2)).transpose(1, 2)
        return self.head(x.mean(1))


def test_functional_call_sites_are_traced_and_quantized():
    torch.manual_seed(0)
    model = _Net()
    x = torch.randn(6, 5, 4)
    with torch.no_grad():
        ref = model(x)
    supernet = quantize_model(model, PAPER_SETTINGS, x[:1])
    assert supernet.space.layer_names == ("embed", "attn.qkv", "attn.proj", "head")
    qkv = supernet.space.layer("attn.qkv")
    assert (qkv.act_elems, qkv.macs) == (5 * 16, 5 * 48 * 16)
    assert supernet.coverage.share == 1.0
    supernet.init_from_data([x])
    supernet.eval()
    with torch.no_grad():
        with supernet.float_mode():
            torch.testing.assert_close(supernet(x), ref)
        high = supernet(x)
        low = supernet.apply(supernet.space.min()) and supernet(x)
    assert not torch.allclose(high, low)
    # the functional layers' own quantizers are the ones that ran
    assert supernet.model.attn.qkv.act_quant._ready and supernet.model.attn.proj.weight_quant._ready
    state = supernet.state_dict()
    fresh = quantize_model(_Net(), PAPER_SETTINGS, x[:1])
    fresh.load_state_dict(state, strict=True)
    fresh.eval().apply(supernet.space.min())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), low)
    clone = copy.deepcopy(supernet)  # routes point at the copy's own layers
    with torch.no_grad():
        torch.testing.assert_close(clone(x), low)
    supernet.train()
    supernet(x).sum().backward()  # gradients flow through the routed calls to weights and steps
    qkv_layer = supernet.model.attn.qkv
    assert qkv_layer.weight.grad is not None and qkv_layer.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in qkv_layer.weight_quant.parameters() if p.requires_grad)


# ------------------------------------------------------------------ strict
def test_strict_refuses_unpinned_float_and_names_it():
    torch.manual_seed(0)
    model = _Net(extra=nn.Conv1d(16, 16, 1))
    x = torch.randn(2, 5, 4)
    supernet = quantize_model(copy.deepcopy(model), PAPER_SETTINGS, x[:1])
    [entry] = supernet.coverage.float_matmul
    assert entry.name == "extra" and "Conv1d" in entry.reason
    with pytest.raises(CoverageError, match=r"extra \(256 weights\): Conv1d is not a layer kind"):
        quantize_model(copy.deepcopy(model), PAPER_SETTINGS, x[:1], strict=True)
    pinned = quantize_model(_Net(), {**PAPER_SETTINGS, "overrides": {"attn.proj": "fp"}}, x[:1], strict=True)
    assert [e.name for e in pinned.coverage.float_matmul] == ["attn.proj"]
    assert pinned.coverage.share < 1.0


def test_strict_names_unroutable_attention():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x[..., :4], x[..., :4])[0].mean(1))

    with pytest.raises(CoverageError, match=r"attn\.q_proj_weight .*kdim/vdim"):
        # the head made elastic: a space whose only layers are pinned is refused for that reason first
        quantize_model(Cross(), {"first_layer": "elastic", "last_layer": "elastic"}, torch.randn(1, 3, 8), strict=True)


# ------------------------------------------------------------------ torchvision transformers
_COVERAGE_SIZES = {"vit_b_16": 224, "swin_t": 224, "maxvit_t": 224}


@pytest.mark.parametrize("name", list(_COVERAGE_SIZES))
def test_torchvision_transformers_are_covered(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10)
    supernet = quantize_model(model, PAPER_SETTINGS, torch.randn(1, 3, _COVERAGE_SIZES[name], _COVERAGE_SIZES[name]),
                              strict=True)
    report = supernet.coverage
    assert report.share == 1.0
    assert report.elastic_share >= 0.99, report.lines()
    # quantized means used: every layer's quantizers run in a forward (float mode needs no init)
    ran = set()
    for layer_name, layer in supernet.quant_layers():
        layer.act_quant.register_forward_hook(lambda *_, n=layer_name: ran.add(n))
    with supernet.float_mode(), torch.no_grad():
        supernet.eval()(torch.randn(1, 3, _COVERAGE_SIZES[name], _COVERAGE_SIZES[name]))
    assert ran == set(supernet.space.layer_names)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_COVERAGE_SIZES))
def test_torchvision_transformers_min_and_max_subnets(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, std=0.02)  # ViT's head starts at zero: every subnet would print 0
    size = _COVERAGE_SIZES[name]
    supernet = quantize_model(model, SMALL_SPACE, torch.randn(1, 3, size, size))
    x = torch.randn(2, 3, size, size)
    supernet.init_from_data([x])
    supernet.eval()
    with torch.no_grad():
        high = supernet(x)
        with supernet.apply(supernet.space.min()):
            low = supernet(x)
    assert torch.isfinite(high).all() and torch.isfinite(low).all()
    assert not torch.allclose(high, low)


def _sweep_size(name: str) -> int:
    return 299 if name.startswith("inception") else 224


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n not in list_models(include_torchvision=False)])
def test_every_torchvision_classifier_is_covered_or_says_why(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10)
    size = _sweep_size(name)
    supernet = quantize_model(model, {}, torch.randn(1, 3, size, size))
    report = supernet.coverage
    for entry in report.float_matmul:
        assert entry.reason, entry
    if report.share < 1.0:  # only training-time auxiliary heads may stay float, and they are named
        assert all("not reached" in e.reason for e in report.float_matmul), report.lines()
        assert all("aux" in e.name.lower() for e in report.float_matmul), report.lines()


# ------------------------------------------------------------------ CLI: train says it, info shows it
def test_info_shows_coverage(tiny_supernet_artifact):
    import json

    from typer.testing import CliRunner

    from eqtools.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["info", str(tiny_supernet_artifact), "--json"])
    assert result.exit_code == 0, result.output
    coverage = json.loads(result.stdout)["coverage"]
    assert coverage["share"] == 1.0 and coverage["quantized_layers"] == coverage["layers"] == 4
    text = runner.invoke(app, ["info", str(tiny_supernet_artifact)]).stdout
    assert "matmul weights (100.00%) in 4 of 4 layers" in text
    assert "BatchNorm2d.weight" in text  # float parts are listed as float


class _WithConv1d(nn.Module):
    """A model with a layer kind eqtools does not quantize."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, 2)
        self.mix = nn.Conv1d(4, 4, 1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).flatten(2)
        return self.fc(self.mix(x).mean(2))


def test_train_strict_refuses_before_training_and_plain_train_reports(tmp_path, monkeypatch):
    import json

    from conftest import DIGITS_SPEC
    from typer.testing import CliRunner

    from eqtools.cli.app import app
    from eqtools.models import _REGISTRY

    def with_conv1d(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        return _WithConv1d(num_classes, in_channels)

    monkeypatch.setitem(_REGISTRY, "with_conv1d", with_conv1d)
    spec = {**DIGITS_SPEC, "name": "strict-test", "model": {"name": "with_conv1d"},
            "space": {**DIGITS_SPEC["space"], "last_layer": "elastic"},  # conv and fc only: one must be elastic
            "train": {**DIGITS_SPEC["train"], "epochs": 1}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    runner = CliRunner()
    refused = runner.invoke(app, ["train", str(path), "--strict", "--out", str(tmp_path / "a"), "-q"])
    assert refused.exit_code == 2
    assert "mix" in refused.output and "Conv1d" in refused.output and "space.overrides" in refused.output
    assert not (tmp_path / "a").exists()
    trained = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "b")])
    assert trained.exit_code == 0, trained.output
    assert "quantized 76 of 92 matmul weights (82.61%" in trained.output  # conv 4x1x3x3 + fc 10x4; mix 4x4
    assert "float mix: 16 weights, Conv1d is not a layer kind" in trained.output


def test_cross_attention_projection_is_counted_over_query_key_and_value():
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.memory = nn.Parameter(torch.randn(1, 7, 8))
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            memory = self.memory.expand(x.shape[0], -1, -1)
            return self.head(self.attn(x, memory, memory)[0].mean(1))

    torch.manual_seed(0)
    model = Decoder()
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        ref = model(x)
    supernet = quantize_model(model, {}, x[:1])
    info = supernet.space.layer("attn.in_proj")
    assert (info.act_elems, info.macs) == ((3 + 7 + 7) * 8, (3 + 7 + 7) * 8 * 8)
    supernet.init_from_data([x])
    with supernet.float_mode(), torch.no_grad():
        torch.testing.assert_close(supernet.eval()(x), ref, atol=1e-5, rtol=1e-5)


def test_torch_transformer_encoder_is_quantized_in_evaluation_too():
    """nn.TransformerEncoderLayer's fused evaluation kernel would read the float weights directly."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 16)
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(1))

    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(6, 5, 4)
    with torch.no_grad():
        ref = model(x)
    supernet = quantize_model(model, PAPER_SETTINGS, x[:1], strict=True)
    assert len(supernet.space.layer_names) == 2 + 2 * 4  # embed, head; per block in/out proj, 2 MLP
    supernet.init_from_data([x])
    supernet.eval()
    with torch.no_grad():
        with supernet.float_mode():
            torch.testing.assert_close(supernet(x), ref, atol=1e-5, rtol=1e-5)
        high = supernet(x)
        with supernet.apply(supernet.space.min()):
            low = supernet(x)
    assert not torch.allclose(high, low)


# ------------------------------------------------------------------ unbatched attention (both layouts)
@pytest.mark.parametrize("batch_first", [True, False])
def test_routed_attention_unbatched_input(batch_first):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    routed = copy.deepcopy(ref)
    route_attention(routed)
    x = torch.randn(5, 16)
    with torch.no_grad():
        a, wa = ref(x, x, x)
        b, wb = routed(x, x, x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wb, wa, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ export of the transformer recipe
VIT_CONDITIONS = {
    "w2a2": (2, ("per-channel", "sym", "sym")),
    "w4a4": (4, ("per-channel", "sym", "asym")),
    "w8a8": (8, ("per-tensor", "asym", "asym")),
    "mixed-pt": ("mixed", ("per-tensor", "sym", "asym")),
    "mixed-pc": ("mixed", ("per-channel", "asym", "sym")),
}


@pytest.fixture(scope="module")
def trained_vit(digits_splits):
    """tiny_vit on 8x8 digits (patch 4: 4 patches + the class token), trained briefly in float and then
    as a supernet (largest, smallest and a random subnet per step): ~10 s, ~95-98 % val top-1."""
    import random

    torch.manual_seed(0)
    model = get_model("tiny_vit", num_classes=10, in_channels=1, image_size=8)
    nn.init.normal_(model.heads.head.weight, std=0.02)

    def train(module, steps, lr, configs):
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        module.train()
        step = 0
        while step < steps:
            for x, y in digits_splits.train.batches(64, shuffle=True, epoch=step):
                opt.zero_grad()
                for apply in configs():
                    apply()
                    F.cross_entropy(module(x), y).backward()
                opt.step()
                step += 1
                if step >= steps:
                    return

    train(model, 150, 3e-3, lambda: [lambda: None])
    x0 = next(iter(digits_splits.train.batches(256)))[0]
    supernet = quantize_model(model, {"w_bits": (2, 3, 4, 8), "a_bits": (2, 3, 4, 8)}, x0[:1])
    supernet.init_from_data([x0])
    rng = random.Random(0)
    space = supernet.space
    train(supernet, 40, 1e-3, lambda: [lambda c=c: supernet.apply(c) for c in (space.max(), space.min(), space.random(rng))])
    return supernet.eval(), list(digits_splits.val.batches(150))


def _vit_config(space, bits, form):
    import random

    return space.random(random.Random(1), *form) if bits == "mixed" else space.uniform(bits, bits, *form)


@pytest.mark.parametrize("case", list(VIT_CONDITIONS))
def test_tiny_vit_exports_exactly(trained_vit, tmp_path, case):
    """Integer file and exact ONNX of the ViT: every quantized layer within 1e-4 fed the reference's own
    input, top-1 agreement >= 99.9 %, the integer file bit-identical to the fake-quant subnet."""
    from eqtools.export import export_subnet, load_int

    supernet, batches = trained_vit
    bits, form = VIT_CONDITIONS[case]
    supernet.apply(_vit_config(supernet.space, bits, form))
    opset = 17 if bits == 2 else 21  # 17: int8 containers, LayerNorm op, GELU decomposed; 21: INT4 and Gelu
    metrics = export_subnet(supernet, batches, tmp_path, opset=opset, onnx_form="exact")
    assert metrics["check"]["reference_classes"] == 10
    for fmt in ("int", "onnx"):
        forced = metrics[fmt]["teacher_forced"]
        assert forced["layers"] == 18 and forced["max_layer_error"] <= 1e-4 and forced["logit_error"] <= 1e-4, forced
        assert metrics[fmt]["parity"]["top1_agreement"] >= 0.999, (fmt, metrics[fmt]["parity"])
    assert metrics["int"]["parity"]["bit_identical"]  # the same ops in the same order as the fake-quant model
    graph = load_int(tmp_path).graph
    ops = [n["op"] for n in graph["nodes"]]
    assert ops.count("linear") == 17 and ops.count("conv2d") == 1
    # float by design: 9 LayerNorms, 4 GELUs, 4 softmaxes, Q·Kᵀ and attention·V in each of 4 blocks
    assert (ops.count("layer_norm"), ops.count("gelu"), ops.count("softmax"), ops.count("matmul")) == (9, 4, 4, 8)
    assert {"expand_batch", "concat", "select", "permute"} <= set(ops)


@pytest.mark.parametrize("case", ["w4a4", "w8a8-sym", "mixed-sym"])
def test_tiny_vit_deploy_form_runs_every_weight_matmul_on_integer_kernels(trained_vit, tmp_path, case):
    """Default ONNX form: 17 QGemm (token inputs viewed as rows) and the patch embedding's ConvInteger;
    the only float matmuls onnxruntime runs are the 8 activation-activation ones."""
    from eqtools.export import export_subnet
    from eqtools.export.backends.onnxruntime import FLOAT_MATMUL_OPS

    supernet, batches = trained_vit
    bits = {"w4a4": 4, "w8a8-sym": 8, "mixed-sym": "mixed"}[case]
    supernet.apply(_vit_config(supernet.space, bits, ("per-channel", "sym", "asym" if bits == 4 else "sym")))
    metrics = export_subnet(supernet, batches, tmp_path, formats=("onnx",))
    onnx_metrics = metrics["onnx"]
    assert onnx_metrics["form"] == "deploy" and onnx_metrics["deploy_fallback"] is None
    deploy = onnx_metrics["deploy"]
    assert deploy["integer_gemms"] == 17 and deploy["integer_convs"] == 1
    ops = deploy["optimized_ops"]
    assert ops.get("QGemm") == 17 and ops.get("ConvInteger") == 1, ops
    float_matmuls = sum(ops.get(op, 0) for op in FLOAT_MATMUL_OPS)
    assert float_matmuls == 8 and not any(ops.get(op) for op in ("Gemm", "FusedGemm", "Conv", "FusedConv")), ops
    assert onnx_metrics["parity"]["top1_agreement"] >= onnx_metrics["agreement_min"] >= 0.99



def test_tiny_vit_vnni_file_is_checked_through_its_twin_where_the_kernels_saturate(trained_vit, tmp_path, monkeypatch):
    """The patch embedding runs on ConvInteger, whose weight zero point is an input: the vnni file
    (int8, zero 0) and its any twin (uint8, zero 128) must still be one graph with other constants, or
    a CPU without VNNI could not check the vnni file at all. Told the kernels saturate, on any CPU."""
    import eqtools.export._stage as stage
    from eqtools.export import export_subnet

    supernet, batches = trained_vit
    supernet.apply(_vit_config(supernet.space, 4, ("per-channel", "sym", "asym")))
    monkeypatch.setattr(stage, "u8s8_saturation", lambda: "saturates (test)")
    deploy = export_subnet(supernet, batches, tmp_path, formats=("onnx",), deploy_cpu="vnni")["onnx"]["deploy"]
    assert deploy["cpu"] == "vnni" and deploy["checked_as"].startswith("its --cpu any twin")
    auto = export_subnet(supernet, batches, tmp_path / "auto", formats=("onnx",))["onnx"]["deploy"]
    assert auto["cpu"] == "any" and auto["uint8_weight_layers"] >= 1 and "saturates (test)" in auto["cpu_choice"]

def test_tiny_vit_int_file_loads_without_training_code(trained_vit, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from eqtools.export import export_subnet

    supernet, batches = trained_vit
    supernet.apply(_vit_config(supernet.space, "mixed", ("per-channel", "sym", "asym")))
    export_subnet(supernet, batches, tmp_path, formats=("int",))
    x = batches[0][0][:16]
    with torch.no_grad():
        torch.save({"x": x, "y": supernet(x)}, tmp_path / "io.pt")
    runtime = Path(__file__).resolve().parents[1] / "eqtools" / "export" / "runtime.py"
    shutil.copy(runtime, tmp_path / "eqtools_int_runtime.py")
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "eqtools" or name.startswith("eqtools."):
                    raise ImportError(f"blocked: {{name}}")
        sys.meta_path.insert(0, Block())
        import torch
        torch.set_num_threads(1)  # as in the tests' process, so that every kernel sums in the same order
        import eqtools_int_runtime
        model = eqtools_int_runtime.load_int({str(tmp_path / 'model.int.safetensors')!r})
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        with torch.no_grad():
            out = model(io["x"])
        assert torch.equal(out, io["y"]), (out - io["y"]).abs().max()
        assert not any(m == "eqtools" or m.startswith("eqtools.") for m in sys.modules)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(runtime.parents[2])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


class _Tokens(nn.Module):
    """A patch embedding, one attention block and a head; ``variant`` picks what export must refuse."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.embed = nn.Conv2d(1, 16, 4, 4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=variant != "sequence-first")
        self.memory = nn.Parameter(torch.randn(1, 3, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 4, 16)
        v = self.variant
        if v == "sequence-first":
            t = self.attn(t, t, t, need_weights=False)[0]
        elif v == "cross-attention":
            memory = self.memory.expand(x.shape[0], -1, -1)
            t = self.attn(t, memory, memory, need_weights=False)[0]
        elif v == "mask":
            t = self.attn(t, t, t, attn_mask=torch.zeros(4, 4, dtype=torch.bool), need_weights=False)[0]
        elif v == "batch-permute":
            t = t.permute(1, 0, 2).mean(0)[:, None, :]
        elif v == "expand-tokens":
            t = t[:, :1].expand(-1, 4, -1)
        elif v == "batch-arithmetic":
            t = t * x.shape[0]
        else:
            t = self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


@pytest.mark.parametrize(("variant", "message"), [
    ("sequence-first", "batch_first=False"),
    ("cross-attention", "cross-attention"),
    ("mask", "mask"),
    ("batch-permute", "moves the batch dimension"),
    ("expand-tokens", "expand whose first size is not the batch size"),
    ("batch-arithmetic", "computed from the batch size"),
])
def test_export_names_what_it_cannot_write(variant, message):
    from eqtools.errors import ModelError
    from eqtools.export import extract_graph

    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    # variants that skip the attention keep only the pinned first and last layer: the head made elastic
    supernet = quantize_model(_Tokens(variant), {"w_bits": (4,), "a_bits": (4,), "last_layer": "elastic"}, x[:1])
    supernet.init_from_data([x])
    with pytest.raises(ModelError, match=message):
        extract_graph(supernet.eval(), x[:2])


def test_export_of_the_supported_variant_matches(tmp_path):
    """The same block without what is refused exports, and its integer file equals the fake-quant model."""
    from eqtools.export import extract_graph
    from eqtools.export.runtime import build_model

    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    supernet = quantize_model(_Tokens("plain"), {"w_bits": (4,), "a_bits": (4,)}, x[:1])
    supernet.init_from_data([x])
    supernet.eval()
    graph = extract_graph(supernet, x[:2])
    with torch.no_grad():
        assert torch.equal(build_model(graph.graph, graph.tensors)(x), supernet(x))
