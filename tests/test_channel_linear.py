"""The mixer's layout-bridging linear layers match nn.Linear, values and gradients, and hand the
kernels what they need: unit stride along L, gradients in each input's own layout."""
import pytest
import torch
import torch.nn.functional as F

from seqmamba.model.channel_linear import channel_linear, from_channels, to_channels


def _reference(kind, x, w, b):
    if kind == "to":        # (B, L, in) -> (B, out, L)
        return F.linear(x, w, b).transpose(1, 2)
    if kind == "channel":   # (B, in, L) -> (B, out, L)
        return F.linear(x.transpose(1, 2), w, b).transpose(1, 2)
    return F.linear(x.transpose(1, 2), w, b)  # "from": (B, in, L) -> (B, L, out)


FNS = {"to": to_channels, "channel": channel_linear, "from": from_channels}


@pytest.mark.parametrize("kind", ["to", "channel", "from"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_gradcheck_float64(kind, bias, batch):
    g = torch.Generator().manual_seed(0)
    shape = (batch, 7, 5) if kind == "to" else (batch, 5, 7)  # in = 5, L = 7
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    fn = FNS[kind]
    torch.testing.assert_close(fn(x, w, b), _reference(kind, x, w, b))
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("kind", ["to", "channel", "from"])
def test_layouts_and_gradient_layouts(kind):
    """Outputs in the layout the next op wants, input gradients contiguous in the input's layout;
    a strided channel-major input (a slice, as dt is of x_proj's output) works unchanged."""
    B, L, cin, cout = 2, 16, 6, 8
    if kind == "to":
        x = torch.randn(B, L, cin, requires_grad=True)
        xin = x
    else:
        x = torch.randn(B, cin + 3, L, requires_grad=True)
        xin = x[:, 2:2 + cin]  # strided view: channel stride L, batch stride (cin + 3) * L
    w = torch.randn(cout, cin, requires_grad=True)
    out = FNS[kind](xin, w)
    ref = _reference(kind, xin, w, None)
    torch.testing.assert_close(out, ref)
    if kind == "from":
        assert out.is_contiguous()
    else:
        assert out.stride(-1) == 1 and out.is_contiguous()
    captured = {}
    xin.register_hook(lambda g: captured.setdefault("g", g))
    out.sum().backward()
    gx = captured["g"]
    assert gx.is_contiguous() and gx.shape == xin.shape


def test_autocast_bf16_matches_linear():
    """Under bf16 autocast the products run in bf16 like nn.Linear's; weight gradients keep the
    parameter's dtype and agree with nn.Linear's to bf16 accuracy."""
    torch.manual_seed(0)
    h = torch.randn(3, 32, 16, requires_grad=True)
    w = torch.randn(24, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = to_channels(h, w)
        ref = F.linear(h, w).transpose(1, 2)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    gw = torch.autograd.grad(out.float().square().sum(), w)[0]
    gw_ref = torch.autograd.grad(ref.float().square().sum(), w)[0]
    assert gw.dtype == torch.float32
    assert (gw - gw_ref).norm() <= 2e-2 * gw_ref.norm()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("use", ["both", "first", "second"])
def test_parts_match_split_and_gradcheck(bias, use):
    """to_channels(..., parts) equals splitting the full output, including when only some parts
    reach the loss (their gradients arrive as None)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True) if bias else None

    def fn(h, w, b):
        x, z = to_channels(h, w, b, parts=(3, 4))
        return {"both": (x, z), "first": (x,), "second": (z,)}[use]

    x, z = to_channels(h, w, b, parts=(3, 4))
    full = _reference("to", h, w, b)
    torch.testing.assert_close(x, full[:, :3])
    torch.testing.assert_close(z, full[:, 3:])
    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_mixer_hands_the_kernels_unit_stride_inputs(monkeypatch):
    """The point of the channel-major mixer: conv and scan get (B, C, L) inputs with unit stride
    along L (the Triton kernels would otherwise copy each), and their output gradients flow back
    without transposes. Checked by wrapping the two kernel entry points."""
    from seqmamba import build_model, kernels
    seen = []

    def record(name, fn):
        def wrapped(*args, **kw):
            tensors = [a for a in list(args) + list(kw.values())
                       if isinstance(a, torch.Tensor) and a.dim() == 3]
            seen.append((name, [t.stride(-1) for t in tensors]))
            out = fn(*args, **kw)
            first = out[0] if isinstance(out, tuple) else out
            if first.requires_grad:
                first.register_hook(lambda g: seen.append((name + " grad", [g.stride(-1)])))
            return out
        return wrapped

    monkeypatch.setattr(kernels, "selective_scan_fn", record("scan", kernels.selective_scan_fn))
    monkeypatch.setattr(kernels, "causal_conv1d_fn", record("conv", kernels.causal_conv1d_fn))
    model = build_model(dict(d_model=16, n_layer=2, vocab_size=8, d_state=4))
    ids = torch.randint(0, 8, (2, 24))
    logits, loss = model(ids[:, :-1], labels=ids[:, 1:])
    loss.backward()
    names = {n for n, _ in seen}
    assert {"scan", "conv", "scan grad", "conv grad"} <= names
    for name, strides in seen:
        assert all(s == 1 for s in strides), (name, strides)
