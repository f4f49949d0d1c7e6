"""The GPU tier (``make test-gpu``, part of ``make gpu-check``): bf16 training, prefix sharing and
export on CUDA, on the tiny model. Skipped without a CUDA device.

Tolerances as in tests/test_precision.py (bf16 vs fp32: loss within 0.02 + 2 %, gradient cosine
>= 0.995); prefix sharing and export in float32 on CUDA: 1e-4 (TF32 is off in these tests).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _batch(tiny_model_dir, demo_dir, image: bool):
    from tests.helpers import first_batch, make_data

    data = make_data(tiny_model_dir, demo_dir, num_negatives=3)
    batch = first_batch(data, count=2, predicate=lambda group: bool(group.query.image) == image)
    return dataclasses.replace(batch, positives=batch.positives.cuda())


def _step(folder, batch, precision: str = "32-true", dtype: str = "float32", **kwargs):
    from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision, Precision

    from lightning_modules.reranker import RerankerModule

    torch.manual_seed(0)
    module = RerankerModule(
        str(folder), dtype=dtype, lora_r=4, lora_dropout=0.0, pairs_per_forward=2, **kwargs
    )
    for name, param in module.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))
    plugin = {
        "bf16-mixed": lambda: MixedPrecision("bf16-mixed", "cuda"),
        "bf16-true": lambda: HalfPrecision("bf16-true"),
    }.get(precision, Precision)()
    module = plugin.convert_module(module).cuda()
    module.float32_trainables()
    with plugin.forward_context():
        loss = module.loss_step(batch).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in module.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in sorted(grads)])


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_bf16_training_on_cuda_matches_fp32(tiny_model_dir, demo_dir, objective):
    batch = _batch(tiny_model_dir, demo_dir, image=True)
    loss32, grads32 = _step(tiny_model_dir, batch, objective=objective)
    for precision, dtype in (("bf16-mixed", "float32"), ("bf16-mixed", "bfloat16"), ("bf16-true", "float32")):
        loss, grads = _step(tiny_model_dir, batch, precision, dtype, objective=objective)
        assert abs(loss - loss32) <= 0.02 + 0.02 * abs(loss32), (precision, dtype)
        cosine = torch.nn.functional.cosine_similarity(_flat(grads), _flat(grads32), dim=0)
        assert cosine >= 0.995, (precision, dtype, float(cosine))


@pytest.mark.parametrize("image", [True, False])
def test_prefix_sharing_on_cuda_has_the_gradients_of_whole_pairs(tiny_model_dir, demo_dir, image):
    batch = _batch(tiny_model_dir, demo_dir, image=image)
    whole_loss, whole = _step(tiny_model_dir, batch, share_prefix=False)
    shared_loss, shared = _step(tiny_model_dir, batch, share_prefix=True)
    assert shared_loss == pytest.approx(whole_loss, abs=1e-4)
    for name, grad in whole.items():
        torch.testing.assert_close(shared[name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_export_after_cuda_training_scores_like_the_module_on_cuda(tiny_model_dir, demo_dir, tmp_path):
    """Two bf16-mixed steps on the GPU through the Trainer, checkpoint, export (parity-checked),
    then the exported folder scores on CUDA as on the CPU, with and without the prefix cache."""
    from lightning_modules.export import export
    from lightning_modules.inference import Reranker
    from lightning_modules.reranker import RerankerModule
    from tests.helpers import cpu_trainer, train_data

    torch.manual_seed(0)
    module = RerankerModule(str(tiny_model_dir), lora_r=4, lr=1e-2, pairs_per_forward=2)
    trainer = cpu_trainer(tmp_path, accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2)
    trainer.fit(module, datamodule=train_data(tiny_model_dir, demo_dir))
    assert {p.dtype for p in module.parameters() if p.requires_grad} == {torch.float32}
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    out = export(tmp_path / "last.ckpt", tmp_path / "export", min_pixels=3136, max_pixels=3136)
    docs = ["a red square", "a blue circle next to a square", "green"]
    cpu = Reranker.from_pretrained(out, device="cpu").score("red square", docs)
    for prefix in (False, True):
        cuda = Reranker.from_pretrained(out, device="cuda", prefix_cache=prefix).score("red square", docs)
        assert cuda == pytest.approx(cpu, abs=1e-4)
    bf16 = Reranker.from_pretrained(out, device="cuda", dtype="bfloat16").score("red square", docs)
    assert bf16 == pytest.approx(cpu, abs=0.05 + 0.05 * max(abs(s) for s in cpu))


def test_flash_attention_2_scores_like_sdpa_on_cuda(tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed (carry its wheel to run this)")
    from lightning_modules.inference import Reranker

    docs = ["a red square", "a blue circle next to a red square on white paper", "green"]
    scores = {
        name: Reranker.from_pretrained(
            tiny_model_dir, device="cuda", dtype="bfloat16", attn_implementation=name, prefix_cache=True
        ).score("red square", docs)
        for name in ("sdpa", "flash_attention_2")
    }
    assert scores["flash_attention_2"] == pytest.approx(scores["sdpa"], abs=0.05)
