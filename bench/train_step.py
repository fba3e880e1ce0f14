"""Cost of one GILL training step against the frozen LM's own forward+backward on the same tokens.

Run: ``.venv/bin/python bench/train_step.py``. A GILL step runs the frozen LM twice (captioning with the
image prefix, then the text pass that feeds l_p, retrieval and generation) plus the adapters, so the
baseline is measured both as one LM forward+backward (to the input embeddings) and as the two passes a step
needs. The adapters' overhead is the ratio against the latter (goal: at most 1.15). Tiny preset and a
mid-size OPT (6 layers, 512 wide, random weights built locally).

The script also times the generation mapper's own forward+backward (with its loss) on [IMG] states of the
same batch. At the paper's scale it is negligible next to OPT-6.7B; with the tiny preset's 2x64 OPT it costs
more than both LM passes, so the tiny ratio measures the mapper, not orchestration. The last column,
step / (2 passes + mapper), is the cost of everything else (losses, optimizer, clipping, bookkeeping).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
from timing import median_ms

from gill.data.reader import TrainingBatch, tokenize_captions
from gill.factory import derive_dims, load_backbones
from gill.losses import generation_loss
from gill.model import GILLModel
from gill.presets import get_preset
from gill.tokenization import add_img_tokens
from gill.train import Trainer

BATCH = 16


def _mid_size_lm(config, out: Path):
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


def measure(config, label: str) -> None:
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=BATCH, precision="fp32"))
    dims = derive_dims(config)
    models = load_backbones(config, roles=("lm",))
    img = add_img_tokens(models.tokenizer, config.adapters.num_img_tokens)
    model = GILLModel(config, dims, models.lm, img.ids)
    captions = ["a large red circle on the left of a striped background"] * BATCH
    tokens = tokenize_captions(models.tokenizer, captions, img, config.max_len)
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
        trainer = Trainer(config, model, img, models.tokenizer.bos_token_id, None, None, Path(tmp))

        def lm_pass() -> None:
            embeds = models.lm.get_input_embeddings()(tokens.input_ids.clamp(max=dims.lm_vocab_size - 1)).detach()
            embeds.requires_grad_(True)
            models.lm(inputs_embeds=embeds, attention_mask=tokens.attention_mask).logits.float().mean().backward()

        h_img = torch.randn(BATCH, config.adapters.num_img_tokens, dims.lm_hidden, requires_grad=True)

        def mapper_pass() -> None:
            out = model.generation_embeddings(h_img)
            generation_loss(out, batch.sd_targets, kind=config.train.gen_loss).backward()

        one = median_ms(lm_pass)
        mapper = median_ms(mapper_pass)
        step = median_ms(lambda: trainer.train_step([batch]))
    print(
        f"{label:22s} LM fwd+bwd {one:7.2f} ms | mapper fwd+bwd {mapper:6.2f} ms | GILL step {step:7.2f} ms | "
        f"step / 2 passes x{step / (2 * one):5.2f} (goal <= 1.15) | step / (2 passes + mapper) "
        f"x{step / (2 * one + mapper):5.2f}"
    )


def main() -> None:
    torch.set_num_threads(2)
    config = get_preset("tiny")
    measure(config, "tiny (OPT 2x64)")
    with tempfile.TemporaryDirectory() as tmp:
        measure(_mid_size_lm(config, Path(tmp)), "mid-size (OPT 6x512)")


if __name__ == "__main__":
    main()
