"""Cost of one GILL training step against the frozen LM's own forward+backward on the same tokens.

Run: ``.venv/bin/python bench/train_step.py [--device cuda --dtype bf16]``. A GILL step runs the frozen LM
twice (captioning with the image prefix, then the text pass that feeds l_p, retrieval and generation) plus the
adapters, so the baseline is measured both as one LM forward+backward (to the input embeddings) and as the two
passes a step needs. The adapters' overhead is the ratio against the latter (goal: at most 1.15). Tiny preset and a
mid-size OPT (6 layers, 512 wide, random weights built locally).

The script also times the generation mapper's own forward+backward (with its loss) on [IMG] states of the
same batch. At the paper's scale it is negligible next to OPT-6.7B; with the tiny preset's 2x64 OPT it costs
more than both LM passes, so the tiny ratio measures the mapper, not orchestration. The last column,
step / (2 passes + mapper), is the cost of everything else (losses, optimizer, clipping, bookkeeping).

``--device cuda`` runs the trainer there (``Trainer(device=...)``), synchronising before each timing; ``--dtype
bf16`` trains as ``train.precision = "bf16"`` does (fp32 adapter weights under bf16 autocast; on CUDA the frozen
LM is loaded in bf16, as :func:`gill.train.setup_training` loads it; the baseline's LM passes run under the same
autocast). ``--dtype fp16`` is refused (exit 2): gill trains in fp32 or bf16 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
from device import DeviceChoice, add_device_arguments, resolve_device
from timing import median_ms

from gill.data.reader import TrainingBatch, tokenize_captions
from gill.factory import derive_dims, load_backbones
from gill.losses import generation_loss
from gill.model import GILLModel
from gill.presets import get_preset
from gill.tokenization import add_img_tokens
from gill.train import Trainer

BATCH = 16


def mid_size_lm(config, out: Path):
    """A config whose LM is a random mid-size OPT (6 layers, 512 wide, the tiny zoo's tokenizer) saved in ``out``."""
    from transformers import OPTConfig, OPTForCausalLM

    tiny = load_backbones(config, roles=("lm",))
    lm_cfg = OPTConfig(
        **{
            **tiny.lm.config.to_dict(),
            "hidden_size": 512,
            "word_embed_proj_dim": 512,
            "num_hidden_layers": 6,
            "ffn_dim": 2048,
            "num_attention_heads": 8,
        }
    )
    torch.manual_seed(0)
    OPTForCausalLM(lm_cfg).save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    return config.with_backbones(lm=str(out))


def timed(fn, dev: DeviceChoice, repeats: int = 15) -> float:
    """:func:`median_ms` of ``fn`` with the device synchronised after each call (queued GPU work is timed)."""

    def run() -> None:
        fn()
        dev.synchronize()

    return median_ms(run, repeats=repeats)


def measure(config, label: str, dev: DeviceChoice) -> None:
    precision = "bf16" if dev.dtype == torch.bfloat16 else "fp32"
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=BATCH, precision=precision))
    dims = derive_dims(config)
    lm_dtype = torch.bfloat16 if precision == "bf16" and dev.is_cuda else None  # as gill.train.setup_training
    models = load_backbones(config, roles=("lm",), dtype=lm_dtype)
    img = add_img_tokens(models.tokenizer, config.adapters.num_img_tokens)
    model = GILLModel(config, dims, models.lm, img.ids).to(dev.device)
    captions = ["a large red circle on the left of a striped background"] * BATCH
    tokens = tokenize_captions(models.tokenizer, captions, img, config.max_len)
    tokens = dataclasses.replace(
        tokens, **{f.name: getattr(tokens, f.name).to(dev.device) for f in dataclasses.fields(tokens)}
    )
    batch = TrainingBatch(
        keys=[str(i) for i in range(BATCH)],
        captions=captions,
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        caption_len=tokens.caption_len,
        vision_features=torch.randn(BATCH, dims.vision_hidden),
        sd_targets=torch.randn(BATCH, config.adapters.num_clip_tokens, dims.sd_text_dim),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            config, model, img, models.tokenizer.bos_token_id, None, None, Path(tmp), device=str(dev.device)
        )
        autocast = torch.autocast(dev.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def lm_pass() -> None:
            with autocast:
                embeds = models.lm.get_input_embeddings()(tokens.input_ids.clamp(max=dims.lm_vocab_size - 1)).detach()
                embeds.requires_grad_(True)
                logits = models.lm(inputs_embeds=embeds, attention_mask=tokens.attention_mask).logits
            logits.float().mean().backward()

        h_img = torch.randn(BATCH, config.adapters.num_img_tokens, dims.lm_hidden, device=dev.device)
        h_img.requires_grad_(True)
        targets = batch.sd_targets.to(dev.device)

        def mapper_pass() -> None:
            with autocast:
                out = model.generation_embeddings(h_img)
            generation_loss(out.float(), targets, kind=config.train.gen_loss).backward()

        dev.reset_peak_memory()
        one = timed(lm_pass, dev)
        mapper = timed(mapper_pass, dev)
        step = timed(lambda: trainer.train_step([batch]), dev)
    print(
        f"{label:22s} LM fwd+bwd {one:7.2f} ms | mapper fwd+bwd {mapper:6.2f} ms | GILL step {step:7.2f} ms | "
        f"step / 2 passes x{step / (2 * one):5.2f} (goal <= 1.15) | step / (2 passes + mapper) "
        f"x{step / (2 * one + mapper):5.2f}" + (f" | peak {dev.peak_memory_gib():.2f} GiB" if dev.is_cuda else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    dev = resolve_device(args)
    if dev.dtype == torch.float16:
        print("error: --dtype fp16: gill trains in fp32 or bf16 autocast (train.precision); use bf16", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(args.threads)
    config = get_preset("tiny")
    print(f"device {dev.describe()}")
    measure(config, "tiny (OPT 2x64)", dev)
    with tempfile.TemporaryDirectory() as tmp:
        measure(mid_size_lm(config, Path(tmp)), "mid-size (OPT 6x512)", dev)


if __name__ == "__main__":
    main()
