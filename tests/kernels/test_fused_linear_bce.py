"""fused_linear_bce and linear_topk: the references pinned by hand, the chunked torch path and
the Triton kernels held to them, shards held to the unsharded loss, and the memory bound."""

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from xmtc.ops import CRITERIA, fused_linear_bce, linear_topk, sparse_positives
from xmtc.ops_reference import dense_targets, linear_bce_reference, linear_topk_reference

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _csr(rows, device="cpu"):
    """CSR targets from a list of per-row label lists."""
    offsets = torch.tensor([0] + [len(r) for r in rows], device=device).cumsum(0)
    idx = torch.tensor([label for r in rows for label in r], dtype=torch.long, device=device)
    return idx, offsets


def _random_csr(B, num_labels, seed, device="cpu", max_per_row=4, low=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(low, low + num_labels, (int(n),), generator=g).tolist()
            for n in torch.randint(0, max_per_row + 1, (B,), generator=g)]
    rows[0] = []  # a row with no positives at all
    if B > 1 and rows[1]:
        rows[1].append(rows[1][0])  # a duplicated target
    return _csr(rows, device)


# --------------------------------------------------------------------------- reference semantics


def test_reference_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    weight = torch.tensor([[2.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    bias = torch.tensor([0.0, 0.5, -0.5])
    target_idx, target_offsets = _csr([[12], [10, 11, 99]])  # shard = labels 10..12; 99 is elsewhere
    loss = linear_bce_reference(features, weight, bias, target_idx, target_offsets, label_offset=10)

    def bce(z, y):
        return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))

    z = [[2.0, 0.5, 0.5], [0.0, 1.5, -1.0]]
    y = [[0, 0, 1], [1, 1, 0]]
    want = sum(bce(z[b][l], y[b][l]) for b in range(2) for l in range(3))
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_squared_hinge_reference_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    weight = torch.tensor([[2.0, 1.0], [0.0, -1.0], [1.0, 1.0]])
    bias = torch.tensor([0.0, 0.5, -0.5])
    target_idx, target_offsets = _csr([[12], [10, 11, 99]])
    loss = linear_bce_reference(features, weight, bias, target_idx, target_offsets, label_offset=10,
                                criterion="squared_hinge")
    # z = [[2, 0.5, 0.5], [0, 1.5, -1]], y = [[0, 0, 1], [1, 1, 0]]: negatives pay max(0, 1 + z)^2,
    # positives max(0, 1 - z)^2: 9 + 2.25 + 0.25 + 1 + 0 + 0.
    assert loss.item() == pytest.approx(12.5, rel=1e-6)
    with pytest.raises(ValueError, match="criterion must be one of"):
        fused_linear_bce(features, weight, bias, target_idx, target_offsets, 10, criterion="hinge")


def test_sparse_positives_dedups_filters_and_sorts_by_label():
    target_idx, target_offsets = _csr([[5, 3, 5], [], [4, 3, 9]])
    pos_label, pos_row = sparse_positives(target_idx, target_offsets, num_labels=3, label_offset=3)
    assert list(zip(pos_label.tolist(), pos_row.tolist())) == [(0, 0), (0, 2), (1, 2), (2, 0)]
    want = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert torch.equal(dense_targets(target_idx, target_offsets, 3, label_offset=3), want)


# ---------------------------------------------------------------------- fused vs reference


def _check_against_reference(features, weight, bias, target_idx, target_offsets, label_offset,
                             chunk_size, atol, rtol, criterion="bce"):
    inputs = [t for t in (features, weight, bias) if t is not None]
    loss = fused_linear_bce(features, weight, bias, target_idx, target_offsets, label_offset, chunk_size, criterion)
    want = linear_bce_reference(features, weight, bias, target_idx, target_offsets, label_offset, criterion)
    torch.testing.assert_close(loss, want.to(loss.dtype), atol=atol, rtol=rtol)
    grad_out = torch.rand((), device=features.device) + 0.5
    got_grads = torch.autograd.grad(loss, inputs, grad_out)
    want_grads = torch.autograd.grad(want, inputs, grad_out.to(want.dtype))
    for got, ref in zip(got_grads, want_grads):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=rtol)


CASES = [  # (B, H, L, chunk_size, label_offset)
    (5, 24, 70, 32, 0),  # chunk does not divide L
    (3, 17, 50, 64, 10),  # one chunk bigger than the shard; shifted shard
    (20, 40, 90, 1, 0),  # one label per chunk
    (1, 8, 33, 33, 100),
]


@pytest.mark.parametrize("criterion", ["bce", "squared_hinge"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    "dtype, atol, rtol", [(torch.float32, 1e-4, 1e-5), (torch.float64, 1e-10, 1e-10), (torch.bfloat16, 0.5, 2e-2)]
)
def test_chunked_torch_matches_reference(torch_backend, case, with_bias, dtype, atol, rtol, criterion):
    B, H, L, chunk_size, label_offset = case
    torch.manual_seed(B * L + chunk_size)
    features = torch.randn(B, H, dtype=dtype, requires_grad=True)
    weight = (torch.randn(L, H) / H**0.5).to(dtype).requires_grad_()
    bias = torch.randn(L, dtype=dtype, requires_grad=True) if with_bias else None
    target_idx, target_offsets = _random_csr(B, L + 20, seed=L, low=max(0, label_offset - 10))
    _check_against_reference(features, weight, bias, target_idx, target_offsets, label_offset,
                             chunk_size, atol, rtol, criterion)


@pytest.mark.parametrize("criterion", ["bce", "squared_hinge"])
@pytest.mark.parametrize("case", CASES[:3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_triton_matches_reference(triton_backend, device, case, with_bias, criterion):
    B, H, L, chunk_size, label_offset = case
    chunk_size = max(chunk_size, 16)  # keeps the interpreter run short
    torch.manual_seed(B * L)
    features = torch.randn(B, H, device=device, requires_grad=True)
    weight = (torch.randn(L, H, device=device) / H**0.5).requires_grad_()
    bias = torch.randn(L, device=device, requires_grad=True) if with_bias else None
    target_idx, target_offsets = _random_csr(B, L + 20, seed=L, device=device, low=max(0, label_offset - 10))
    _check_against_reference(features, weight, bias, target_idx, target_offsets, label_offset,
                             chunk_size, atol=1e-4, rtol=1e-5, criterion=criterion)


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [pytest.param(torch.float32, 1e-2, 1e-4, marks=GPU), pytest.param(torch.bfloat16, 1.0, 2e-2, marks=GPU)],
)
@pytest.mark.parametrize("criterion", ["bce", "squared_hinge"])
@pytest.mark.parametrize("B, H, L, chunk_size", [(64, 512, 200_003, 8192), (200, 300, 65_536, 4096)])
def test_triton_large_matches_reference_on_gpu(triton_backend, B, H, L, chunk_size, dtype, atol, rtol, criterion):
    torch.manual_seed(5)
    features = torch.randn(B, H, device="cuda").to(dtype).requires_grad_()
    weight = (torch.randn(L, H, device="cuda") / H**0.5).to(dtype).requires_grad_()
    bias = torch.randn(L, device="cuda").to(dtype).requires_grad_()
    target_idx, target_offsets = _random_csr(B, L, seed=5, device="cuda", max_per_row=8)
    _check_against_reference(features, weight, bias, target_idx, target_offsets, 0, chunk_size, atol, rtol, criterion)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_shards_sum_to_the_unsharded_loss(request, device, backend):
    request.getfixturevalue(f"{backend}_backend")
    torch.manual_seed(9)
    B, H, L = 6, 16, 80
    features = torch.randn(B, H, device=device, requires_grad=True)
    weight = torch.randn(L, H, device=device, requires_grad=True)
    bias = torch.randn(L, device=device, requires_grad=True)
    target_idx, target_offsets = _random_csr(B, L, seed=9, device=device)
    total = sum(
        fused_linear_bce(features, weight[lo:hi], bias[lo:hi], target_idx, target_offsets, lo, chunk_size=16)
        for lo, hi in [(0, 30), (30, 80)]
    )
    want = linear_bce_reference(features, weight, bias, target_idx, target_offsets)
    torch.testing.assert_close(total, want, atol=1e-4, rtol=1e-5)
    grad_out = torch.randn((), device=device)
    for got, ref in zip(torch.autograd.grad(total, [features, weight, bias], grad_out),
                        torch.autograd.grad(want, [features, weight, bias], grad_out)):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def test_loss_without_gradients_and_single_backward(torch_backend):
    torch.manual_seed(4)
    features, weight, bias = torch.randn(3, 8), torch.randn(20, 8), torch.randn(20)
    target_idx, target_offsets = _csr([[1, 2], [], [19]])
    want = linear_bce_reference(features, weight, bias, target_idx, target_offsets)
    with torch.no_grad():
        loss = fused_linear_bce(features, weight, bias, target_idx, target_offsets, chunk_size=7)
        torch.testing.assert_close(loss, want)
    weight.requires_grad_()
    loss = fused_linear_bce(features, weight, bias, target_idx, target_offsets, chunk_size=7)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_rejects_bad_inputs(torch_backend):
    features, weight = torch.randn(2, 4), torch.randn(5, 4)
    target_idx, target_offsets = _csr([[1], [2]])
    with pytest.raises(ValueError, match="must share H"):
        fused_linear_bce(features, torch.randn(5, 3), None, target_idx, target_offsets)
    with pytest.raises(ValueError, match=r"target_offsets must be \[B\+1\]"):
        fused_linear_bce(features, weight, None, target_idx, target_offsets[:2])
    with pytest.raises(ValueError, match="bias must be"):
        fused_linear_bce(features, weight, torch.randn(4), target_idx, target_offsets)
    with pytest.raises(ValueError, match="weight is torch.float32 but bias is torch.float64"):
        fused_linear_bce(features, weight, torch.randn(5, dtype=torch.float64), target_idx, target_offsets)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_triton_reads_a_strided_bias(triton_backend, device, criterion):
    torch.manual_seed(0)
    features = torch.randn(3, 6, device=device, requires_grad=True)
    weight = torch.randn(20, 6, device=device, requires_grad=True)
    bias = torch.randn(20, 2, device=device)[:, 0].requires_grad_()  # stride 2
    target_idx, target_offsets = _csr([[1], [2, 7], [3]], device)
    loss = fused_linear_bce(features, weight, bias, target_idx, target_offsets, chunk_size=16, criterion=criterion)
    want = linear_bce_reference(features, weight, bias, target_idx, target_offsets, criterion=criterion)
    torch.testing.assert_close(loss, want, atol=1e-4, rtol=1e-5)
    for got, ref in zip(torch.autograd.grad(loss, [features, weight, bias]), torch.autograd.grad(want, [features, weight, bias])):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)


def test_loss_without_grad_computes_no_gradients(torch_backend):
    from xmtc.memory.tracker import LiveTensorTracker

    features, weight = torch.randn(4, 64, requires_grad=True), torch.randn(20_000, 64, requires_grad=True)
    target_idx, target_offsets = _csr([[1], [2], [], [19_999]])
    with_grad = fused_linear_bce(features, weight, None, target_idx, target_offsets, chunk_size=1024)
    with torch.no_grad(), LiveTensorTracker() as tracker:
        for t in (features, weight, target_idx, target_offsets):
            tracker.add(t)  # the inputs (and views of them) are not new memory
        inputs = tracker.current
        no_grad = fused_linear_bce(features, weight, None, target_idx, target_offsets, chunk_size=1024)
    assert no_grad.item() == pytest.approx(with_grad.item(), rel=1e-6)
    # The [L, H] weight gradient alone would be 5.1 MB; the loss needs only [B, chunk] temporaries.
    assert max(tracker.peaks.values()) - inputs < weight.numel() * 4 / 10


# ------------------------------------------------------------------------------ memory bound


class _PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (views not counted)."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
            if key in inputs or key in self.live or size == 0:
                continue
            self.live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._free, key)
        return out


def test_chunked_loss_never_holds_batch_by_labels(torch_backend):
    torch.manual_seed(0)
    B, H, L, chunk = 64, 16, 200_000, 4096
    features = torch.randn(B, H, requires_grad=True)
    weight = (torch.randn(L, H) * 0.1).requires_grad_()
    bias = torch.zeros(L, requires_grad=True)
    target_idx, target_offsets = torch.randint(0, L, (B * 5,)), torch.arange(0, B * 5 + 1, 5)
    full_logits = B * L * 4

    def peak(fn):
        with _PeakTensorBytes() as tracker:
            fn().backward()
        return tracker.peak

    fused = peak(lambda: fused_linear_bce(features, weight, bias, target_idx, target_offsets, chunk_size=chunk))
    # The tracker sees the reference's logits, targets and logit gradients: it is not blind.
    assert peak(lambda: linear_bce_reference(features, weight, bias, target_idx, target_offsets)) >= 2 * full_logits
    # Gradients of weight and bias, plus a handful of [B, chunk] temporaries and 1 MB of slack.
    budget = L * H * 4 + L * 4 + B * H * 4 + 4 * B * chunk * 4 + 2**20
    assert fused <= budget
    assert fused < full_logits / 2


# ------------------------------------------------------------------------------------ top-k


@pytest.mark.parametrize("chunk_size", [3, 16, 1000])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_linear_topk_matches_torch_topk_for_distinct_scores(chunk_size, k):
    torch.manual_seed(k + chunk_size)
    features, weight, bias = torch.randn(6, 12), torch.randn(40, 12), torch.randn(40)
    scores, idx = linear_topk(features, weight, bias, k, label_offset=1000, chunk_size=chunk_size)
    want_scores, want_idx = F.linear(features, weight, bias).topk(k, dim=1)
    assert torch.equal(idx, want_idx + 1000)
    torch.testing.assert_close(scores, want_scores)


@pytest.mark.parametrize("chunk_size", [4, 7, 64])
def test_linear_topk_breaks_ties_toward_lower_labels(chunk_size):
    torch.manual_seed(1)
    # Small integers make many exactly equal logits.
    features = torch.randint(-1, 2, (5, 3)).float()
    weight = torch.randint(-1, 2, (30, 3)).float()
    scores, idx = linear_topk(features, weight, None, 8, chunk_size=chunk_size)
    want_scores, want_idx = linear_topk_reference(features, weight, None, 8)
    assert torch.equal(idx, want_idx)
    assert torch.equal(scores, want_scores)
    assert torch.equal(linear_topk_reference(features, weight, None, 3)[1][0], want_idx[0, :3])


def test_linear_topk_rejects_k_larger_than_the_shard():
    with pytest.raises(ValueError, match="k must be in"):
        linear_topk(torch.randn(2, 3), torch.randn(4, 3), None, 5)


def test_linear_topk_names_nan_scores():
    features, weight = torch.randn(3, 4), torch.randn(10, 4)
    weight[6] = float("nan")  # one label of a diverged model
    with pytest.raises(FloatingPointError, match="the scores hold NaN"):
        linear_topk(features, weight, None, 3, chunk_size=4)
    features[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="the scores hold NaN"):
        linear_topk(features, torch.randn(10, 4), None, 2)


def test_an_empty_batch_gives_zero_loss_and_empty_gradients(triton_backend, device):
    # The Triton launcher divided by the number of row tiles, zero for an empty batch.
    features = torch.randn(0, 24, device=device, requires_grad=True)
    weight = torch.randn(40, 24, device=device, requires_grad=True)
    bias = torch.randn(40, device=device, requires_grad=True)
    target_idx, target_offsets = _csr([], device=device)
    loss = fused_linear_bce(features, weight, bias, target_idx, target_offsets, chunk_size=16)
    loss.backward()
    assert loss.item() == 0.0 and features.grad.shape == (0, 24)
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_each_kernel_variant_is_tuned_on_its_own(triton_backend, device, monkeypatch):
    # The autotuner keyed on (B, H) only: whichever variant ran first (the loss-only forward of an evaluation,
    # say) chose the tiles of the training kernel too, so a run's speed depended on the order of its calls.
    import triton

    from kernels import fused_linear_bce as module

    kernel = module._linear_bce_chunk_kernel
    small = [triton.Config({"BLOCK_B": 16, "BLOCK_L": 16, "BLOCK_H": 16}, num_warps=w) for w in (4, 8)]
    monkeypatch.setattr(kernel, "configs", small)
    monkeypatch.setattr(kernel, "cache", {})
    # A stand-in for the benchmark (the interpreter cannot time): the training variant (WRITE_DZ) "runs
    # faster" with 8 warps, the loss-only one with 4.
    monkeypatch.setattr(kernel, "_bench", lambda *args, config, **kw: float(config.num_warps == (8 if kw["WRITE_DZ"] else 4)) * -1.0)
    features = torch.randn(5, 24, device=device)
    weight = torch.randn(40, 24, device=device)
    target_idx, target_offsets = _csr([[1], [3, 7], [], [0], [39]], device=device)
    with torch.no_grad():
        fused_linear_bce(features, weight, None, target_idx, target_offsets, chunk_size=16)
    fused_linear_bce(features.requires_grad_(), weight, None, target_idx, target_offsets, chunk_size=16).backward()
    chosen = {key: config.num_warps for key, config in kernel.cache.items()}
    assert sorted(chosen.values()) == [4, 8], chosen
