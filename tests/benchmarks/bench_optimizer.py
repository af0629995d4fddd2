"""Benchmark one AdamW step over the Reuters XML-CNN's large parameters at data.min_count 2 (word embedding
17,076 x 256, TF-IDF table 17,076 x 512, bottleneck 384 x 512: 13.3M): torch's for-loop, foreach and
fused implementations.

    OMP_NUM_THREADS=1 python -m pytest tests/benchmarks/bench_optimizer.py --benchmark-only -p no:cacheprovider

The trainer takes the fused one where the device has it (xmtc/optim.py). An Adam step reads the
parameter, gradient and both moments and writes three of them: 28 bytes per fp32 parameter, so
373 MB per step here, a bandwidth-bound floor of a few ms; the for-loop implementation makes
per-tensor temporaries on top.
"""

import pytest
import torch

from xmtc.optim import fused_adam_supported

SHAPES = [(17_076, 256), (17_076, 512), (384, 512)]
IMPLEMENTATIONS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_adamw_step(benchmark, impl):
    if impl == "fused" and not fused_adam_supported("cpu"):
        pytest.skip("this torch has no fused AdamW for the CPU")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-3, **IMPLEMENTATIONS[impl])
    optimizer.step()  # the moments exist from here on, as in training
    benchmark(optimizer.step)
