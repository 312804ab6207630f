"""gfnet.load on a GPU: images from the CPU and from the GPU (uint8 and float, resized and at
their own size) give what the same checkpoint gives on the CPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_predictor_on_gpu_matches_cpu(tmp_path):
    import gfnet
    from gfnet.config import build_config
    from gfnet.data import ClutteredDigits
    from gfnet.models import build_model

    from ..gfnet.conftest import save_gfnet_checkpoint, tiny_overrides

    cfg = build_config("digits", overrides=tiny_overrides())
    torch.manual_seed(0)
    save_gfnet_checkpoint(tmp_path / "c.pt", cfg, build_model(cfg.model))
    cpu, gpu = gfnet.load(tmp_path / "c.pt", "cpu"), gfnet.load(tmp_path / "c.pt", "cuda")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    ds = ClutteredDigits("test", length=6)
    big = ClutteredDigits("test", canvas_size=(150, 250), length=2)
    images = [ds[i][0] for i in range(6)] + [big[i][0] for i in range(2)]
    for resize in (True, False):
        ref = cpu(images, threshold=2.0, resize=resize)  # every image runs all steps
        for variant in (images, [x.cuda() for x in images], [x.cuda().float() / 255 for x in images]):
            res = gpu(variant, threshold=2.0, resize=resize)
            assert res.exit_steps == ref.exit_steps
            # the 128 x 128 canvases reach the model untouched; the larger images are resized
            # (with resize=True), where uint8 rounding differs between devices and from float
            exact = 6 if resize else len(images)
            torch.testing.assert_close(res.logits[:exact], ref.logits[:exact], rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(res.logits[exact:], ref.logits[exact:], rtol=0.05, atol=0.05)
            for p, q in zip(res, ref):
                assert p.image_size == q.image_size and p.model_size == q.model_size
                for b, c in zip(p.boxes, q.boxes):  # a location may round to the next pixel
                    assert max(abs(u - v) for u, v in zip(b, c)) <= 2.0
                    assert 0 <= b[0] < b[2] <= p.image_size[1] and 0 <= b[1] < b[3] <= p.image_size[0]
