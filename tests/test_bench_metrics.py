"""Benchmark metric layer: pure metric functions (eval.metrics) and the offline metric models (eval.metric_models)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval import metric_models
from eval.metric_models import (
    INCEPTION_NAME,
    LPIPS_NAME,
    ClipScorer,
    FidFeatureExtractor,
    LpipsScorer,
    MetricModelSpec,
    default_alexnet_path,
    resolve_metric_models,
)
from eval.metrics import (
    ConfidenceInterval,
    bootstrap_ci,
    cosine_similarity_rows,
    fid_bootstrap_ci,
    frechet_distance,
    paired_fid_bootstrap_ci,
    recall_at_k,
    recall_hits,
    target_ranks,
    true_pair_ranks,
)
from gill.errors import InputError, MissingWeightsError
from gill.presets import get_preset


def _images(n: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((48, 40), (64, 64), (40, 56))) -> list:
    """Structured random RGB images (a gradient plus noise) of a few different sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
        pixels = np.clip(ramp + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(pixels))
    return out


@pytest.fixture(scope="module")
def tiny_models(tiny_config):
    return resolve_metric_models(tiny_config, need_fid=True)


# --- pure functions ----------------------------------------------------------------------------------------------


def test_cosine_of_row_pairs_matches_torch_and_rejects_mismatched_shapes():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    assert torch.allclose(cosine_similarity_rows(a, b), torch.nn.functional.cosine_similarity(a, b), atol=1e-6)
    assert torch.allclose(cosine_similarity_rows(a, 3 * a), torch.ones(6), atol=1e-6)
    with pytest.raises(InputError, match=r"a has shape \(6, 5\), b has shape \(5, 5\)"):
        cosine_similarity_rows(a, b[:5])


def test_bootstrap_interval_brackets_the_mean_with_the_normal_theory_width():
    values = np.random.default_rng(1).normal(0.6, 0.1, size=400)
    ci = bootstrap_ci(values, confidence=0.95, n_boot=2000, seed=0)
    assert isinstance(ci, ConfidenceInterval) and ci.confidence == 0.95
    assert ci.low < values.mean() < ci.high
    normal_width = 2 * 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (ci.high - ci.low) == pytest.approx(normal_width, rel=0.15)


def test_bootstrap_is_deterministic_per_seed_and_narrows_with_more_samples():
    rng = np.random.default_rng(2)
    few, many = rng.normal(size=20), rng.normal(size=2000)
    assert bootstrap_ci(few, seed=7) == bootstrap_ci(few, seed=7)
    assert bootstrap_ci(few, seed=7) != bootstrap_ci(few, seed=8)
    width = {n: (ci.high - ci.low) for n, ci in ((20, bootstrap_ci(few)), (2000, bootstrap_ci(many)))}
    assert width[2000] < width[20] / 5  # about sqrt(100) = 10 times narrower
    median = bootstrap_ci(torch.tensor([1.0, 2.0, 3.0, 100.0]), statistic=np.median, n_boot=500)
    assert median.high <= 100.0 and median.low >= 1.0


def test_bootstrap_degenerate_and_invalid_inputs():
    assert bootstrap_ci([0.25]) == ConfidenceInterval(low=0.25, high=0.25, confidence=0.95)
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="2 of 5 values are NaN or infinite"):
        bootstrap_ci([0.1, float("nan"), 0.3, float("inf"), 0.5])
    with pytest.raises(InputError) as err:
        bootstrap_ci([1.0, 2.0], confidence=1.5, n_boot=0)
    assert len(err.value.problems) == 2  # both settings reported at once


def test_target_ranks_and_recall_on_a_hand_built_pool_with_ties():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 2, 4])
    # q0 -> pool 0 is the best match: rank 0. q1 -> pool 1 (cos 0) is beaten by 0, 2, 3: rank 3.
    # q2 -> pool 2 ties with pool 3 (same direction): pessimistic rank 1. q3 -> pool 4 (cos 0) ties with 0: rank 4.
    ranks = target_ranks(queries, pool, targets)
    assert ranks.tolist() == [0, 3, 1, 4]
    assert recall_at_k(ranks, ks=(1, 2, 4, 5)) == {1: 0.25, 2: 0.5, 4: 0.75, 5: 1.0}
    generator = torch.Generator().manual_seed(0)
    queries, pool = torch.randn(9, 3, generator=generator), torch.randn(9, 3, generator=generator)
    cosine = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(pool, dim=-1).T
    assert torch.equal(target_ranks(queries, pool, torch.arange(9)), true_pair_ranks(cosine))


def test_target_ranks_reports_every_bad_input():
    with pytest.raises(InputError) as err:
        target_ranks(torch.randn(3, 4), torch.randn(5, 2), torch.tensor([0, 9]))
    assert len(err.value.problems) == 2
    with pytest.raises(InputError, match=r"index the pool \[0, 5\), got 0..9"):
        target_ranks(torch.randn(2, 4), torch.randn(5, 4), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="no ranks"):
        recall_at_k(torch.tensor([]))


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_translated_copy():
    feats = np.random.default_rng(3).normal(size=(200, 6))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    # a translated copy has the same covariance, so FID = ||shift||^2 = D * c^2 exactly
    distances = [frechet_distance(feats, feats + c) for c in (0.5, 1.0, 2.0)]
    assert distances == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-4)
    with pytest.raises(InputError, match="features_a: needs an \\(N, D\\) matrix with N >= 2 rows"):
        frechet_distance(feats[:1], feats)


def test_fid_bootstrap_interval_contains_the_point_value_for_a_clear_shift():
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(150, 4)) + 1.5, rng.normal(size=(120, 4))
    point = frechet_distance(gen, ref)
    ci = fid_bootstrap_ci(gen, ref, n_boot=200, seed=1)
    assert ci.low < point < ci.high and ci.low > 4.0  # the shift (4 * 1.5^2 = 9) is far from 0
    assert fid_bootstrap_ci(gen, ref, n_boot=200, seed=1) == ci


def test_paired_fid_bootstrap_resamples_the_same_samples_in_every_set_and_averages_over_seeds():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(40, 3))
    gens = [ref + 1.0 + 0.1 * rng.normal(size=(40, 3)) for _ in range(2)]  # two seeds of the same 40 samples
    ci = paired_fid_bootstrap_ci(gens, ref, n_boot=50, seed=0)
    assert paired_fid_bootstrap_ci(gens, ref, n_boot=50, seed=0) == ci
    # the definition: one index vector per resample (drawn together), the FID per set averaged
    index = np.random.default_rng(0).integers(0, 40, size=(50, 40))
    stats = [np.mean([frechet_distance(g[i], ref[i]) for g in gens]) for i in index]
    low, high = np.quantile(stats, [0.025, 0.975])
    assert (ci.low, ci.high, ci.confidence) == (low, high, 0.95)
    point = np.mean([frechet_distance(g, ref) for g in gens])
    assert ci.low < point < ci.high
    with pytest.raises(InputError, match="the same samples in every set"):
        paired_fid_bootstrap_ci([gens[0][:30]], ref, n_boot=5)


def test_recall_hits_are_the_per_query_indicators_whose_mean_is_recall_at_k():
    ranks = torch.tensor([0, 3, 7, 1])
    for k in (1, 2, 5, 10):
        hits = recall_hits(ranks, k)
        assert hits.dtype == np.float64 and set(hits) <= {0.0, 1.0}
        assert hits.mean() == recall_at_k(ranks, ks=(k,))[k]
    assert recall_hits([0, 3], 1).tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match="positive k"):
        recall_hits(ranks, 0)


# --- CLIP --------------------------------------------------------------------------------------------------------


def _official_clip_similarity(folder: Path, a: Image.Image, b: Image.Image) -> float:
    """compute_clip_similarity_vist.py, one image at a time, straight from transformers."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    feats = []
    for image in (a, b):
        with torch.no_grad():
            out = model.get_image_features(**processor(images=image, return_tensors="pt"))
        feats.append(out if torch.is_tensor(out) else out.pooler_output)
    return float((feats[0] / feats[0].norm()) @ (feats[1] / feats[1].norm()).T)


def test_clip_similarity_matches_the_official_computation(tiny_models, tiny_zoo):
    images_a, images_b = _images(5, seed=5), _images(5, seed=6)
    scores = tiny_models.clip.similarity(images_a, images_b)
    expected = [_official_clip_similarity(tiny_zoo / "clip", a, b) for a, b in zip(images_a, images_b, strict=True)]
    assert scores.shape == (5,)
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    assert tiny_models.clip.similarity(images_a, images_a).tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    with pytest.raises(InputError, match="images_a has 5 images, images_b has 4"):
        tiny_models.clip.similarity(images_a, images_b[:4])


def test_clip_batching_does_not_change_features(tiny_models):
    images = _images(7, seed=7)
    one_at_a_time = ClipScorer(tiny_models.clip.model, tiny_models.clip.processor, name="x", batch_size=1)
    assert torch.allclose(one_at_a_time.image_features(images), tiny_models.clip.image_features(images), atol=1e-5)


def test_projection_from_pooled_vision_features_equals_image_features(tiny_models):
    clip = tiny_models.clip
    images = _images(4, seed=8)
    pixels = clip.processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        pooled = clip.model.vision_model(pixel_values=pixels).pooler_output  # what GILL precomputes
    projected = clip.projection_from_pooled(pooled)
    assert torch.allclose(projected, clip.image_features(images), atol=1e-5)
    assert torch.allclose(projected.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_text_features_are_normalised_and_truncated_at_the_clip_limit(tiny_models):
    clip = tiny_models.clip
    assert clip.max_text_length == 77
    head = " ".join(["red star"] * 60)  # far more than 77 tokens
    feats = clip.text_features([head + " on a blue sky", head + " under a green sea", "a dog"])
    assert feats.shape == (3, clip.model.config.projection_dim)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(feats[0], feats[1], atol=1e-6)  # they differ only after the truncation point
    assert not torch.allclose(feats[0], feats[2], atol=1e-3)


# --- LPIPS -------------------------------------------------------------------------------------------------------


def test_lpips_random_trunk_is_a_seeded_distance(tiny_models):
    lpips_a = tiny_models.lpips
    x, y = _images(3, seed=9), _images(3, seed=10)
    assert "random-alexnet-seed0" in lpips_a.name and "tiny" in lpips_a.name
    assert lpips_a.distance(x, x).tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    d_xy, d_yx = lpips_a.distance(x, y), lpips_a.distance(y, x)
    assert (d_xy > 1e-3).all() and torch.allclose(d_xy, d_yx, atol=1e-5)
    assert torch.equal(LpipsScorer(batch_size=2).distance(x, y), d_xy)  # same seed, new construction, other batches
    assert not torch.allclose(LpipsScorer(seed=1).distance(x, y), d_xy)


def test_lpips_construction_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    LpipsScorer(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_lpips_resizes_both_images_to_256_as_lpips_2dirs():
    small, large = _images(1, seed=11, sizes=((32, 24),))[0], _images(1, seed=12, sizes=((300, 200),))[0]
    tensor = metric_models.lpips_tensor(small)
    assert tensor.shape == (1, 3, 256, 256) and -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    distance = LpipsScorer().distance([small], [large])
    assert distance.shape == (1,) and float(distance[0]) > 0
    # an upscaled copy of an image is close to it, much closer than an unrelated image
    upscaled = small.resize((128, 96), Image.BICUBIC)
    assert float(LpipsScorer().distance([small], [upscaled])[0]) < float(distance[0])


def test_real_alexnet_weights_load_into_every_lpips_slice(tmp_path, caplog):
    import torchvision

    torch.manual_seed(42)
    state = torchvision.models.alexnet(weights=None).state_dict()
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, weights)
    with caplog.at_level("WARNING", logger="eval.metric_models"):
        scorer = LpipsScorer(alexnet_weights=weights)
    assert scorer.name == LPIPS_NAME
    assert "not torchvision's alexnet-owt-7be5be79.pth" in caplog.text  # a random state dict fails the hash check
    loaded = metric_models._lpips_backbone_params(scorer.net)
    assert sorted(loaded) == sorted(k for k in state if k.startswith("features."))  # all 10 conv tensors
    for key, param in loaded.items():
        assert torch.equal(param.cpu(), state[key]), key
    x, y = _images(2, seed=13), _images(2, seed=14)
    assert not torch.allclose(scorer.distance(x, y), LpipsScorer().distance(x, y))


def test_a_wrong_alexnet_file_is_rejected_with_every_problem(tmp_path):
    import torchvision

    state = torchvision.models.alexnet(weights=None).state_dict()
    del state["features.3.weight"]
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(InputError) as err:
        LpipsScorer(alexnet_weights=bad)
    assert any("features.3.weight: missing" in p for p in err.value.problems)
    assert any("features.0.weight: shape (64, 3, 5, 5)" in p for p in err.value.problems)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read the LPIPS AlexNet weights"):
        LpipsScorer(alexnet_weights=tmp_path / "junk.pth")


# --- FID features ------------------------------------------------------------------------------------------------


def test_tiny_fid_features_of_a_folder_match_in_memory_images(tiny_models, tmp_path):
    images = _images(6, seed=15)
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i:02d}.png")
    fid = tiny_models.fid
    assert "not Inception" in fid.name and "tiny" in fid.name
    feats = fid.folder_features(tmp_path)
    assert feats.shape == (6, tiny_models.clip.model.config.vision_config.hidden_size)
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0
    assert np.allclose(fid.image_features(images), feats, atol=1e-4)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    other = fid.image_features(_images(6, seed=16, sizes=((64, 64),)))
    assert frechet_distance(feats, other) > 1e-3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="has no images"):
        fid.folder_features(empty)


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2048, kernel_size=13, stride=13)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1)


class _FakeInception(torch.nn.Module):
    """Same shape contract as clean-fid's torchscript: a ``layers`` submodule giving (B, 2048, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_an_inception_torchscript_file_is_loaded_without_download(tmp_path, tiny_config):
    path = tmp_path / "my-inception.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    models = resolve_metric_models(tiny_config, MetricModelSpec(inception_weights=str(path)), need_fid=True)
    assert models.names["fid"] == INCEPTION_NAME
    feats = models.fid.image_features(_images(3, seed=17))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    (tmp_path / "junk.pt").write_text("not torchscript")
    with pytest.raises(InputError, match="cannot load the Inception torchscript"):
        FidFeatureExtractor.inception(tmp_path / "junk.pt")


# --- resolution --------------------------------------------------------------------------------------------------


def test_tiny_preset_resolves_stand_ins_whose_names_say_so(tiny_models):
    names = tiny_models.names
    assert set(names) == {"clip_sim", "lpips", "fid"}
    assert all("tiny" in name for name in names.values())
    assert "random" in names["lpips"]
    no_fid = metric_models.MetricModels(clip=tiny_models.clip, lpips=tiny_models.lpips)
    assert set(no_fid.names) == {"clip_sim", "lpips"}


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before every file was checked")

    monkeypatch.setattr(ClipScorer, "from_pretrained", refuse)
    monkeypatch.setattr(metric_models, "build_lpips", refuse)


def test_paper_preset_without_weights_names_every_missing_piece_in_one_error(monkeypatch, tmp_path):
    monkeypatch.setattr(metric_models, "default_inception_path", lambda: tmp_path / "inception-2015-12-05.pt")
    _no_loading(monkeypatch)
    assert default_alexnet_path() == Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(MissingWeightsError) as err:
        resolve_metric_models(get_preset("paper"), need_fid=True)
    text = str(err.value)
    assert len(err.value.problems) == 3
    assert "openai/clip-vit-large-patch14" in text and "hf download openai/clip-vit-large-patch14" in text
    assert (
        str(default_alexnet_path()) in text and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in text
    )
    assert str(tmp_path / "inception-2015-12-05.pt") in text and "--inception-weights" in text
    assert "nvlabs-fi-cdn.nvidia.com" in text and "--lpips-weights" in text


def test_a_given_weights_path_that_does_not_exist_is_named(monkeypatch, tmp_path, tiny_config):
    _no_loading(monkeypatch)
    missing = tmp_path / "nowhere" / "alex.pth"
    with pytest.raises(MissingWeightsError) as err:
        resolve_metric_models(tiny_config, MetricModelSpec(lpips_weights=str(missing)))
    expected = f"LPIPS AlexNet backbone (alexnet-owt-7be5be79.pth): --lpips-weights {missing}: does not exist"
    assert err.value.problems == [expected]
    assert "Inception" not in str(err.value)  # need_fid=False: FID weights are not required
    with pytest.raises(MissingWeightsError) as err:
        spec = MetricModelSpec(clip=str(tmp_path / "no-clip"), inception_weights=str(tmp_path))
        resolve_metric_models(tiny_config, spec, need_fid=True)
    assert len(err.value.problems) == 2 and "is a directory, not a file" in str(err.value)
    assert str(tmp_path / "no-clip") in str(err.value)
