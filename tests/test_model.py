"""The model against the paper's math on small, hand-checked cases."""

import math

import pytest
import torch

from perceiver_cli.errors import UserError
from perceiver_cli.model import build_model, count_parameters
from perceiver_cli.model.attention import InputProjection, explicit_attention
from perceiver_cli.model.position import FourierGridEncoding, fourier_features, grid_positions
from perceiver_cli.recipe import ModelConfig, load_recipe

IMAGE = {"kind": "image", "shape": [6, 5, 3]}
POINTS = {"kind": "points", "coords": 3, "features": 2}


def small(**kwargs) -> ModelConfig:
    base = dict(num_latents=8, latent_dim=32, latent_blocks=1, latent_heads=4, num_bands=3, max_freq=6.0)
    return ModelConfig(**{**base, **kwargs})


@pytest.mark.parametrize("output", ["mean", "cls", "query"])
@pytest.mark.parametrize("cross_attends", [1, 3])
def test_sdpa_path_equals_eager_path(output, cross_attends):
    torch.manual_seed(0)
    model = build_model(small(output=output, cross_attends=cross_attends, cross_heads=2), IMAGE, 5).eval()
    x = torch.randn(4, 6, 5, 3)
    fast = model(x)
    eager = model(x, return_attention=True)
    torch.testing.assert_close(fast, eager.logits, atol=1e-5, rtol=1e-5)
    assert len(eager.cross_attention) == cross_attends
    for weights in eager.cross_attention:
        assert weights.shape == (4, 2, model.latents.shape[0], 30)  # B heads latents inputs
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_matches_sdpa_in_outputs_and_gradients(masked):
    """The explicit path (GPU heads wider than 256) computes what SDPA computes, gradients included."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])[:, None, None, :] if masked else None
    k7, v7 = (t[:, :, :1].expand(-1, -1, 7, -1) + torch.randn(2, 3, 7, 8) for t in (k, v))
    fast = torch.nn.functional.scaled_dot_product_attention(q, k7, v7, attn_mask=mask)
    fast_grads = torch.autograd.grad(fast.square().sum(), (q, k, v))
    explicit, weights = explicit_attention(q, k7, v7, mask, 0.0)
    explicit_grads = torch.autograd.grad(explicit.square().sum(), (q, k, v))
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=1e-5)
    for a, b in zip(explicit_grads, fast_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if masked:  # padded tokens get no weight
        assert (weights[1, ..., 4:] == 0).all()


def test_explicit_attention_keeps_bf16_scores_under_autocast():
    """Under autocast the weights stay bf16 (a softmax widened to fp32 doubles their memory) and
    the result stays close to fp32."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1, 4, 300) for _ in range(3))
    reference, _ = explicit_attention(q, k, v, None, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.0)
    assert weights.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("shared_pe", [True, False])
@pytest.mark.parametrize("x_channels", [0, 3])
def test_split_input_projection_is_exact(shared_pe, x_channels):
    """Linear(LayerNorm([x; pe])) computed split equals the concatenation, values and gradients."""
    torch.manual_seed(0)
    proj = InputProjection(x_channels, 7, 16)
    with torch.no_grad():  # non-trivial LayerNorm parameters
        proj.norm.weight.uniform_(0.5, 1.5)
        proj.norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, 11, x_channels) * 3 + 1).requires_grad_()
    pe = torch.randn(11, 7) if shared_pe else torch.randn(2, 11, 7)
    split = proj(x, pe)
    reference = proj.reference(x, pe)
    torch.testing.assert_close(split, reference, atol=1e-5, rtol=1e-5)

    params = [proj.norm.weight, proj.norm.bias, proj.proj.weight, proj.proj.bias] + ([x] if x_channels else [])
    grads_split = torch.autograd.grad(split.square().sum(), params)
    grads_ref = torch.autograd.grad(reference.square().sum(), params)
    for a, b in zip(grads_split, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("permuted", [False, True])
def test_separable_grid_positions_project_exactly_like_the_dense_features(permuted):
    """Grid features kept per axis give the same projection (values and gradients) as the dense
    (H*W, C) features on the concatenation."""
    torch.manual_seed(0)
    encoding = FourierGridEncoding(2, 3, 6.0)
    order = torch.randperm(5 * 7) if permuted else None
    separable = encoding.separable((5, 7), torch.device("cpu"), order=order)
    dense = encoding((5, 7), torch.device("cpu"))
    torch.testing.assert_close(separable.dense(), dense if order is None else dense[order])
    proj = InputProjection(2, encoding.channels, 16)
    with torch.no_grad():
        proj.norm.weight.uniform_(0.5, 1.5)
        proj.norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 35, 2) * 2 + 1).requires_grad_()
    fast, reference = proj(x, separable), proj.reference(x, separable.dense())
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    params = [proj.norm.weight, proj.norm.bias, proj.proj.weight, proj.proj.bias, x]
    for a, b in zip(torch.autograd.grad(fast.square().sum(), params), torch.autograd.grad(reference.square().sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_weight_sharing_shares_parameters():
    shared = build_model(small(cross_attends=4), IMAGE, 5)
    unshared = build_model(small(cross_attends=4, share_weights=False), IMAGE, 5)
    two = build_model(small(cross_attends=2), IMAGE, 5)
    # paper: the first cross-attend is separate, all later ones share; latent Transformers share
    assert len(shared.cross_blocks) == 2 and len(shared.latent_blocks) == 1
    assert shared.cross_index == [0, 1, 1, 1] and shared.latent_index == [0, 0, 0, 0]
    assert count_parameters(shared) == count_parameters(two)  # extra cross-attends add no parameters
    assert len(unshared.cross_blocks) == 4 and count_parameters(unshared) > count_parameters(shared)
    # the shared block really is one tensor: a change to it shows in every use
    loss = shared(torch.randn(2, 6, 5, 3)).sum()
    loss.backward()
    assert shared.cross_blocks[1].attention.to_q.weight.grad is not None


def test_lucidrains_style_sharing_gives_the_first_block_its_own_latent_transformer():
    tied = build_model(small(cross_attends=4, share_first_latent=False), IMAGE, 5)
    assert len(tied.cross_blocks) == 2 and len(tied.latent_blocks) == 2
    assert tied.cross_index == [0, 1, 1, 1] and tied.latent_index == [0, 1, 1, 1]
    paper = build_model(small(cross_attends=4), IMAGE, 5)
    one_latent_block = sum(p.numel() for p in paper.latent_blocks[0].parameters())
    assert count_parameters(tied) == count_parameters(paper) + one_latent_block


def test_fourier_features_shape_and_values():
    # bands 2, max_freq 4 -> frequencies linspace(1, 2, 2) = [1, 2]
    pos = torch.tensor([[0.5, -1.0]])
    feats = fourier_features(pos, num_bands=2, max_freq=4.0)
    assert feats.shape == (1, 2 * (2 * 2 + 1))
    # per axis: [sin(pi f x)], [cos(pi f x)], x
    expected_x = [math.sin(math.pi * 0.5), math.sin(math.pi), math.cos(math.pi * 0.5), math.cos(math.pi), 0.5]
    expected_y = [math.sin(-math.pi), math.sin(-2 * math.pi), math.cos(-math.pi), math.cos(-2 * math.pi), -1.0]
    torch.testing.assert_close(feats[0], torch.tensor(expected_x + expected_y), atol=1e-6, rtol=0)


def test_grid_positions_span_minus_one_to_one_row_major():
    grid = grid_positions((2, 3))
    assert grid.shape == (6, 2)
    torch.testing.assert_close(grid[0], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(grid[2], torch.tensor([-1.0, 1.0]))  # row 0, last column
    torch.testing.assert_close(grid[-1], torch.tensor([1.0, 1.0]))


def test_fourier_grid_features_are_computed_once_per_shape():
    encoding = FourierGridEncoding(2, 4, 8.0)
    first = encoding((8, 8), torch.device("cpu"))
    assert encoding((8, 8), torch.device("cpu")) is first  # cached, not recomputed per step
    assert encoding((4, 4), torch.device("cpu")).shape == (16, 2 * 9)


def test_pixel_permutation_is_fixed_by_its_seed():
    a = build_model(small(permute_pixels=True, permute_seed=42), IMAGE, 5)
    b = build_model(small(permute_pixels=True, permute_seed=42), IMAGE, 5)
    c = build_model(small(permute_pixels=True, permute_seed=7), IMAGE, 5)
    assert torch.equal(a.adapter.permutation, b.adapter.permutation)
    assert not torch.equal(a.adapter.permutation, c.adapter.permutation)
    assert sorted(a.adapter.permutation.tolist()) == list(range(30))
    # the permutation is part of the checkpoint, so a trained model keeps it
    assert "adapter.permutation" in a.state_dict()


def test_permuted_pixels_with_fourier_positions_give_the_same_output():
    """Pixels move together with their position features: a Perceiver (permutation-invariant
    cross-attention, mean pooling) computes the same function, as the paper's 78.0 % shows."""
    torch.manual_seed(0)
    plain = build_model(small(), IMAGE, 5).eval()
    permuted = build_model(small(permute_pixels=True), IMAGE, 5).eval()
    state = {k: v for k, v in plain.state_dict().items()}
    permuted.load_state_dict({**state, "adapter.permutation": permuted.adapter.permutation})
    x = torch.randn(2, 6, 5, 3)
    torch.testing.assert_close(plain(x), permuted(x), atol=1e-5, rtol=1e-5)


def test_mask_stops_padded_points_from_changing_the_output():
    torch.manual_seed(0)
    model = build_model(small(), POINTS, 4).eval()
    real = torch.randn(1, 10, 5)
    padded = torch.cat([real, 100 * torch.randn(1, 6, 5)], dim=1)  # garbage in the padding
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).bool()
    alone = model(real)
    torch.testing.assert_close(model(padded, mask=mask), alone, atol=1e-5, rtol=1e-5)
    out = model(padded, mask=mask, return_attention=True)
    assert out.cross_attention[0][..., 10:].abs().max() == 0  # no attention on padding
    assert not torch.allclose(model(padded), alone, atol=1e-3)  # without the mask it does change


def test_latent_array_initialisation_is_truncated_normal_std_002():
    model = build_model(small(num_latents=256, latent_dim=256), IMAGE, 5)
    latents = model.latents.detach()
    assert abs(latents.std().item() - 0.02) < 0.002
    assert latents.abs().max().item() <= 2.0  # truncated at +-2 (absolute), never exploding


def test_images_of_another_size_work_with_fourier_positions():
    model = build_model(small(), IMAGE, 5).eval()
    assert model(torch.randn(2, 12, 9, 3)).shape == (2, 5)


def test_learned_positions_need_the_built_size():
    model = build_model(small(position_encoding="learned", learned_dim=16), IMAGE, 5)
    assert model(torch.randn(2, 6, 5, 3)).shape == (2, 5)
    with pytest.raises(ValueError, match="30 positions"):
        model(torch.randn(2, 7, 5, 3))


def test_sequence_input():
    model = build_model(small(), {"kind": "sequence", "shape": [20, 4]}, 3).eval()
    assert model(torch.randn(2, 20, 4)).shape == (2, 3)


def test_patches_are_tokens_of_neighbouring_pixels():
    model = build_model(small(patch_size=2), {"kind": "image", "shape": [4, 6, 3]}, 5).eval()
    x = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(1, 4, 6, 3)
    tokens, pe, _ = model.adapter(x)
    assert tokens.shape == (1, 6, 12) and pe.shape == (6, model.adapter.pe_channels)  # 2x3 patches of 2*2*3
    torch.testing.assert_close(tokens[0, 1], x[0, 0:2, 2:4].reshape(-1))  # second patch: rows 0-1, cols 2-3
    assert model(x).shape == (1, 5)
    with pytest.raises(UserError, match="patch_size"):
        build_model(small(patch_size=4), {"kind": "image", "shape": [6, 6, 3]}, 5)


def test_conv_stem_tokens_cover_stride_pixels():
    config = small(conv_stem=16, patch_size=2)
    model = build_model(config, {"kind": "image", "shape": [8, 12, 3]}, 5).eval()
    tokens, pe, _ = model.adapter(torch.randn(2, 8, 12, 3))
    # conv to 16 channels, maxpool 2 -> 4 x 6, then 2x2 patches -> 2 x 3 tokens of 64 values
    assert model.adapter.stride == 4
    assert tokens.shape == (2, 6, 64) and pe.shape[0] == 6
    assert model(torch.randn(2, 8, 12, 3)).shape == (2, 5)


def test_a_two_stage_conv_stem_doubles_channels_and_stride():
    config = small(conv_stem=8, conv_stem_stages=2, patch_size=1)
    model = build_model(config, {"kind": "image", "shape": [8, 12, 3]}, 5).eval()
    tokens, pe, _ = model.adapter(torch.randn(2, 8, 12, 3))
    # conv 8 + maxpool -> 4 x 6, conv 16 + maxpool -> 2 x 3 tokens of 16 channels
    assert model.adapter.stride == 4
    assert tokens.shape == (2, 6, 16) and pe.shape[0] == 6
    assert model(torch.randn(2, 8, 12, 3)).shape == (2, 5)
    with pytest.raises(UserError, match="per conv_stem stage"):
        build_model(small(conv_stem=8, conv_stem_stages=3), {"kind": "image", "shape": [12, 12, 3]}, 5)


def test_bf16_autocast_forward_and_backward_track_fp32():
    """The engine's bf16 path (autocast): outputs stay close to fp32 and gradients are finite."""
    torch.manual_seed(0)
    model = build_model(small(cross_attends=2), IMAGE, 5).eval()
    x = torch.randn(4, 6, 5, 3)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _saved_bytes(model, x) -> int:
    """Bytes of the tensors autograd keeps from one forward for its backward pass."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return total


def test_activation_checkpointing_keeps_gradients_and_stores_less():
    torch.manual_seed(0)
    model = build_model(small(cross_attends=3, latent_blocks=2, dropout=0.0), IMAGE, 5)
    x = torch.randn(4, 6, 5, 3)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    plain_bytes = _saved_bytes(model, x)
    model.zero_grad()
    model.activation_checkpointing = True
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)
    assert _saved_bytes(model, x) < 0.5 * plain_bytes


@pytest.mark.parametrize("heads", [1, 2])
def test_grid_keys_values_read_by_several_cross_attends_are_exact(heads, monkeypatch):
    """The CPU grid path (each use's backward folded into the projection's small gradients, a slab
    of rows at a time) gives the keys/values and gradients of LayerNorm + Linear on [x; pe]."""
    from perceiver_cli.model import grid_projection

    monkeypatch.setattr(grid_projection, "_SLAB_ELEMENTS", 64)  # several slabs even on a 5 x 7 grid
    torch.manual_seed(0)
    encoding = FourierGridEncoding(2, 3, 6.0)
    separable = encoding.separable((5, 7), torch.device("cpu"))
    proj = InputProjection(3, encoding.channels, 2 * heads * 4)
    with torch.no_grad():
        proj.norm.weight.uniform_(0.5, 1.5)
        proj.norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, 35, 3) * 2 + 1).requires_grad_()
    upstream = [torch.randn(2, heads, 35, 4) for _ in range(6)]  # (dk, dv) for each of 3 uses

    store = proj.grid_keys_values(x, separable, heads)
    uses = [store.for_use() for _ in range(3)]
    fast_loss = sum((k * upstream[2 * i]).sum() + (v * upstream[2 * i + 1]).sum() for i, (k, v) in enumerate(uses))

    k_ref, v_ref = (t.reshape(2, 35, heads, 4).transpose(1, 2) for t in proj.reference(x, separable.dense()).chunk(2, -1))
    for k, v in uses:
        torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=1e-5)
    ref_loss = sum((k_ref * upstream[2 * i]).sum() + (v_ref * upstream[2 * i + 1]).sum() for i in range(3))
    params = [proj.norm.weight, proj.norm.bias, proj.proj.weight, proj.proj.bias, x]
    for a, b in zip(torch.autograd.grad(fast_loss, params), torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def shared_cross_attend_model(height: int = 6, width: int = 5, cross_heads: int = 2, overrides=()):
    """A small model on an RGB image grid whose cross-attends 2 and 3 share one key/value
    projection (read twice), and a batch of 3 inputs."""
    recipe, _ = load_recipe(None, ["model.num_latents=8", "model.latent_dim=32", "model.cross_attends=3",
                                   "model.latent_blocks=1", "model.latent_heads=2", f"model.cross_heads={cross_heads}",
                                   "model.num_bands=3", "model.dropout=0.0", "model.patch_size=1", *overrides])
    torch.manual_seed(0)
    return build_model(recipe.model, {"kind": "image", "shape": [height, width, 3]}, 4), torch.randn(3, height, width, 3)


def test_perceiver_gradients_are_the_same_through_the_grid_path(monkeypatch):
    """A whole model with shared cross-attends on an image: the CPU grid path and the plain
    projection give the same logits and parameter gradients."""
    from perceiver_cli.model import attention

    model, x = shared_cross_attend_model()

    def loss_and_grads():
        logits = model(x)
        return logits, torch.autograd.grad(logits.square().sum(), list(model.parameters()))

    grid_logits, grid_grads = loss_and_grads()
    monkeypatch.setattr(attention, "uses_grid_projection", lambda x, pe: False)
    plain_logits, plain_grads = loss_and_grads()
    torch.testing.assert_close(grid_logits, plain_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(grid_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_grid_read_as_token_features_on_a_gpu_gives_the_plain_logits_and_gradients(monkeypatch):
    from perceiver_cli.model import attention
    from perceiver_cli.model.grid_attention import grid_attention

    model, x = shared_cross_attend_model(16, 16)  # 256 tokens: large enough to be read in its channels
    model, x = model.cuda(), x.cuda()
    calls = []
    monkeypatch.setattr(attention, "grid_attention", lambda *a: calls.append(1) or grid_attention(*a))

    def loss_and_grads(grid: bool, dtype=None):
        monkeypatch.setattr(attention, "uses_grid_projection", lambda x, pe: grid)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        return logits.float(), torch.autograd.grad(logits.float().square().sum(), list(model.parameters()))

    for dtype, tolerance in ((None, 1e-4), (torch.bfloat16, 5e-2)):
        grid_logits, grid_grads = loss_and_grads(True, dtype)
        plain_logits, plain_grads = loss_and_grads(False, dtype)
        torch.testing.assert_close(grid_logits, plain_logits, atol=tolerance, rtol=tolerance)
        for a, b in zip(grid_grads, plain_grads):
            assert (a - b).abs().max() <= tolerance * (1 + b.abs().max()), (dtype, (a - b).abs().max(), b.abs().max())
    assert calls


def test_torch_compile_traces_the_grid_path_with_shared_cross_attends():
    """Three cross-attends, two sharing one key/value projection (read twice): torch.compile used to
    fail on it ('an intermediate tensor kv ... aliases an input or output')."""
    model, x = shared_cross_attend_model(cross_heads=1)

    def loss_and_grads(forward):
        logits = forward(x)
        return logits, torch.autograd.grad(logits.square().sum(), list(model.parameters()))

    # aot_eager: Dynamo and AOTAutograd trace as in train.compile, without Inductor's slow C++ build
    compiled_logits, compiled_grads = loss_and_grads(torch.compile(model, backend="aot_eager"))
    eager_logits, eager_grads = loss_and_grads(model)
    torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
