"""Cross-attention to an image grid read in the input's own channels (grid_attention.py): the same
attention as softmax(q k^T / sqrt(d)) v over the dense keys/values, in outputs and gradients, and
used by a model exactly where it should be."""

import pytest
import torch

from perceiver_cli.model import attention
from perceiver_cli.model.grid_attention import GridInput, _GridAttentionWeights, grid_attention
from test_model import _saved_bytes, shared_cross_attend_model


def test_the_weights_function_passes_gradcheck():
    torch.manual_seed(0)
    batch, heads, latents, channels, height, width = 2, 2, 3, 3, 3, 4
    f64 = dict(dtype=torch.float64, requires_grad=True)
    inputs = (torch.randn(batch, heads, latents, channels, **f64), torch.randn(batch, heads, latents, height, **f64),
              torch.randn(batch, heads, latents, width, **f64), torch.randn(batch, height * width, channels, **f64),
              (torch.rand(batch, height * width, dtype=torch.float64) + 0.5).requires_grad_())
    assert torch.autograd.gradcheck(_GridAttentionWeights.apply, (*inputs, 0.0))


# the two forms of the same attention: passes over each token's channels (CPUs) or two matmuls over
# each token's features (GPUs; attention.reads_grid_as_features)
FORMS = pytest.mark.parametrize("as_features", [False, True], ids=["channels", "features"])


@pytest.fixture
def form(as_features, monkeypatch):
    monkeypatch.setattr(attention, "reads_grid_as_features", lambda device_type: as_features)


def _random_grid(heads: int, head_dim: int = 4, height: int = 3, width: int = 7, as_features: bool = False):
    """A query (B H N d) and a grid's small pieces, all needing gradients, and its dense keys/values."""
    torch.manual_seed(0)
    batch, latents, channels, tokens, out = 2, 5, 4, height * width, 2 * heads * head_dim
    x_aug = torch.randn(batch, tokens, channels, requires_grad=True)
    w_aug, bias = torch.randn(out, channels, requires_grad=True), torch.randn(out, requires_grad=True)
    rstd = (torch.rand(batch, tokens, 1) + 0.5).requires_grad_()
    rows, cols = torch.randn(height, out, requires_grad=True), torch.randn(width, out, requires_grad=True)
    q = torch.randn(batch, heads, latents, head_dim, requires_grad=True)
    kv = x_aug @ w_aug.t() + bias + rstd * (rows[:, None, :] + cols[None, :, :]).reshape(tokens, out)
    k, v = kv.view(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    grid = GridInput.from_parts(x_aug, w_aug, bias, rstd, rows, cols, as_features)
    return q, grid, (k, v), [q, x_aug, w_aug, bias, rstd, rows, cols]


def _assert_same_outputs_and_gradients(fast, dense, inputs):
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(dense)
    for a, b in zip(torch.autograd.grad((fast * upstream).sum(), inputs, retain_graph=True),
                    torch.autograd.grad((dense * upstream).sum(), inputs, retain_graph=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@FORMS
@pytest.mark.parametrize("heads", [1, 3])
def test_grid_attention_equals_attention_over_the_dense_keys_and_values(heads, as_features):
    q, grid, (k, v), inputs = _random_grid(heads, as_features=as_features)
    assert (grid.features is not None) == as_features
    _assert_same_outputs_and_gradients(grid_attention(q, grid), torch.nn.functional.scaled_dot_product_attention(q, k, v), inputs)


@FORMS
def test_attention_dropout_drops_the_same_weights_as_on_dense_keys_and_values(as_features):
    """With one seed both draw the same mask: same outputs and gradients, and some weights dropped."""
    q, grid, (k, v), inputs = _random_grid(heads=2, as_features=as_features)
    torch.manual_seed(1)
    fast = grid_attention(q, grid, dropout_p=0.3)
    torch.manual_seed(1)
    dense, _ = attention.explicit_attention(q, k, v, None, dropout_p=0.3)
    assert (fast - grid_attention(q, grid)).abs().max() > 0.1  # the mask did something
    _assert_same_outputs_and_gradients(fast, dense, inputs)


def _model(*overrides, size=(16, 16)):
    """The shared-cross-attend model of test_model with one cross head, on a grid of `size`."""
    return shared_cross_attend_model(*size, cross_heads=1, overrides=overrides)


def _logits_and_grads(model, x):
    logits = model(x)
    return [logits, *torch.autograd.grad(logits.square().sum(), list(model.parameters()))]


@FORMS
@pytest.mark.parametrize("overrides, size", [((), (16, 16)), (("model.conv_stem=4",), (32, 32)),
                                             (("model.cross_heads=2", "model.share_weights=false"), (16, 20))])
def test_a_model_reading_the_grid_in_its_channels_matches_the_plain_projection(overrides, size, form, monkeypatch):
    """Whole models (a conv stem makes the tokens themselves learned, so the gradients flow back
    through the pixels' LayerNorm statistics too): same logits and parameter gradients."""
    model, x = _model(*overrides, size=size)
    calls = []
    monkeypatch.setattr(attention, "grid_attention", lambda *a: calls.append(1) or grid_attention(*a))
    fast_logits, *fast_grads = _logits_and_grads(model, x)
    assert len(calls) == 3  # every cross-attend read the grid in its channels
    monkeypatch.setattr(attention, "uses_grid_projection", lambda x, pe: False)
    plain_logits, *plain_grads = _logits_and_grads(model, x)
    assert len(calls) == 3
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_grid_is_read_in_its_channels_only_where_that_is_the_same_and_cheaper(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "grid_attention", lambda *a: calls.append(1) or grid_attention(*a))

    def reads_in_channels(model, x, **kwargs) -> bool:
        calls.clear()
        model(x, **kwargs)
        return bool(calls)

    model, x = _model()
    assert reads_in_channels(model.train(), x)
    assert reads_in_channels(model.eval(), x)
    calls.clear()
    maps = model(x, return_attention=True).cross_attention  # attention maps need the weights: plain path
    assert not calls and len(maps) == 3 and maps[0].shape == (3, 1, 8, 256)
    dropout, x = _model("model.attention_dropout=0.1")
    assert reads_in_channels(dropout.train(), x) and reads_in_channels(dropout.eval(), x)
    patches, x = _model("model.patch_size=4", "model.cross_heads=4", size=(64, 64))  # 49 channels > 8 per head
    assert not reads_in_channels(patches, x)
    small, x = _model(size=(15, 16))  # 240 tokens: the extra small operations would cost more than they save
    assert not reads_in_channels(small, x)


@FORMS
def test_torch_compile_traces_the_grid_read_in_its_channels(form):
    model, x = _model()
    compiled = _logits_and_grads(torch.compile(model, backend="aot_eager"), x)  # as train.compile traces, without Inductor
    for a, b in zip(compiled, _logits_and_grads(model, x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_reading_the_grid_in_its_channels_stores_far_less_for_the_backward(monkeypatch):
    """At 32 x 32 pixels, in the CPU's form: the attention weights (B x N x M) instead of keys and
    values (B x M x 2D)."""
    model, x = _model("model.cross_attends=2", size=(32, 32))
    fast = _saved_bytes(model, x)
    monkeypatch.setattr(attention.CrossAttention, "reads_grid_in_channels", lambda self, channels, tokens: False)
    assert fast < 0.5 * _saved_bytes(model, x)


@FORMS
def test_activation_checkpointing_recomputes_the_grid_read_in_its_channels(form):
    model, x = _model()
    reference = _logits_and_grads(model, x)
    model.activation_checkpointing = True
    for a, b in zip(_logits_and_grads(model, x), reference):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@FORMS
def test_under_bf16_autocast_the_grid_read_in_its_channels_is_as_close_to_fp32_as_keys_and_values(form, monkeypatch):
    model, x = _model()
    reference = _logits_and_grads(model, x)

    def worst_error() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _logits_and_grads(model, x)
        return max(((a.float() - b).abs().max() / b.abs().max()).item() for a, b in zip(low, reference))

    in_channels = worst_error()
    monkeypatch.setattr(attention.CrossAttention, "reads_grid_in_channels", lambda self, channels, tokens: False)
    assert in_channels < 0.05 and in_channels < 2 * worst_error()
