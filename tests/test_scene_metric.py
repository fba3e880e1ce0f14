"""Tests of the answer-key scene metric (eval/scene_metric.py): renders read right, noise and wrong scenes don't.

Accuracies are measured on fresh random scenes from seeds the kind probe never saw (it is fitted on single-shape
scenes from its own generator) and asserted with margins, never as exact values.
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from eval.scene_metric import (
    CHANCE,
    PROBE_PATH,
    SCENE_COLUMNS,
    KindProbe,
    MetricAccuracy,
    SceneScore,
    evaluate_metric,
    read_scene,
    score_image,
    score_scene,
)
from gill.synth.render import render_scene
from gill.synth.scenes import SHAPE_KINDS, Scene, Shape, sample_scene

N_SCENES = 200
HELD_OUT_SEED = 9173


def _shape(kind: str, color: str, position: str, size: str = "large") -> Shape:
    return Shape(kind=kind, color=color, size=size, position=position)


def _assert_all_attributes_at_least(accuracy: MetricAccuracy, floor: float) -> None:
    values = {
        "background": accuracy.background,
        "color": accuracy.color,
        "cell": accuracy.cell,
        "size": accuracy.size,
        "kind": accuracy.kind,
    }
    assert all(v >= floor for v in values.values()), f"{accuracy.condition}: {values} (floor {floor})"


@pytest.mark.parametrize("condition", ["render64", "render128"])
def test_held_out_renders_are_read_right_on_every_attribute(condition: str) -> None:
    accuracy = evaluate_metric(N_SCENES, HELD_OUT_SEED, condition)
    assert accuracy.n == N_SCENES
    _assert_all_attributes_at_least(accuracy, 0.98)
    assert accuracy.color_cell >= 0.98
    assert accuracy.all_ok >= 0.95


@pytest.mark.parametrize("condition", ["blur", "downup"])
def test_blurred_renders_keep_colour_cell_and_background_readable(condition: str) -> None:
    accuracy = evaluate_metric(N_SCENES, HELD_OUT_SEED + 1, condition)
    assert min(accuracy.color, accuracy.cell, accuracy.background) >= 0.95, accuracy
    assert min(accuracy.size, accuracy.kind) >= 0.85, accuracy


@pytest.mark.parametrize("condition", ["uniform_noise", "smooth_noise"])
def test_noise_images_score_near_chance(condition: str) -> None:
    accuracy = evaluate_metric(N_SCENES, HELD_OUT_SEED + 2, condition)
    assert accuracy.color < 3 * CHANCE["color"], accuracy
    assert accuracy.cell < 3 * CHANCE["cell"], accuracy
    assert accuracy.all_ok <= 0.01, accuracy
    assert accuracy.score < 0.45, accuracy  # renders score ~1.0


def test_renders_scored_against_permuted_targets_drop_to_near_chance() -> None:
    rng = random.Random(HELD_OUT_SEED + 3)
    scenes = [sample_scene(rng) for _ in range(N_SCENES)]
    readings = [read_scene(render_scene(s, 64)) for s in scenes]
    own = [score_scene(r, s) for r, s in zip(readings, scenes, strict=True)]
    permuted = [score_scene(r, scenes[(i + 1) % len(scenes)]) for i, r in enumerate(readings)]

    def mean(scores: list[SceneScore], attribute: str) -> float:
        return sum(float(getattr(s, attribute)) for s in scores) / len(scores)

    assert mean(own, "color_ok") >= 0.98 and mean(own, "cell_ok") >= 0.98
    assert mean(permuted, "color_ok") < 3 * CHANCE["color"]
    assert mean(permuted, "cell_ok") < 3 * CHANCE["cell"]
    assert mean(permuted, "kind_ok") < 3 * CHANCE["kind"]
    assert mean(permuted, "all_ok") <= 0.02


def test_a_dict_target_scores_like_the_scene_it_came_from() -> None:
    rng = random.Random(HELD_OUT_SEED + 4)
    for _ in range(10):
        scene = sample_scene(rng)
        other = sample_scene(rng)  # a wrong target too, so the comparison covers imperfect scores
        image = render_scene(scene, 64)
        for target in (scene, other):
            as_dict = json.loads(json.dumps(target.to_dict()))  # the form scenes.json stores
            assert score_image(image, as_dict) == score_image(image, target)


def test_described_shapes_are_the_only_ones_scored() -> None:
    target = Scene(
        background="grey",
        shapes=(
            _shape("circle", "red", "top left"),
            _shape("square", "blue", "center"),
            _shape("star", "green", "bottom right"),
        ),
    )
    # Shapes 1 and 2 drawn in colours the target does not use, shape 0 right.
    drawn = Scene(
        background="grey",
        shapes=(target.shapes[0], _shape("square", "yellow", "center"), _shape("star", "pink", "bottom right")),
    )
    image = render_scene(drawn, 64)

    only_first = score_image(image, target, described=[0])
    assert [s.index for s in only_first.per_shape] == [0]
    assert only_first.color_ok == 1.0 and only_first.all_ok

    everything = score_image(image, target)
    assert [s.index for s in everything.per_shape] == [0, 1, 2]
    assert everything.color_ok == pytest.approx(1 / 3) and everything.cell_ok == 1.0
    assert not everything.all_ok

    recoloured = score_image(image, target, described=[1, 2])
    assert recoloured.color_ok == 0.0 and recoloured.kind_ok == 1.0


def test_described_indices_must_name_target_shapes() -> None:
    scene = Scene(background="white", shapes=(_shape("circle", "red", "center"),))
    reading = read_scene(render_scene(scene, 64))
    for bad in ([], [1], [-1]):
        with pytest.raises(ValueError, match="described"):
            score_scene(reading, scene, described=bad)


def test_matching_prefers_the_same_colour_over_the_same_cell() -> None:
    target = Scene(
        background="white", shapes=(_shape("circle", "red", "top left"), _shape("ring", "blue", "top right"))
    )
    swapped = Scene(
        background="white", shapes=(_shape("circle", "red", "top right"), _shape("ring", "blue", "top left"))
    )
    score = score_image(render_scene(swapped, 64), target)
    assert score.color_ok == 1.0 and score.kind_ok == 1.0
    assert score.cell_ok == 0.0 and score.color_cell_ok == 0.0


def test_clutter_beyond_the_target_count_cannot_buy_matches() -> None:
    wanted = _shape("circle", "red", "center", size="small")
    cells = ["top left", "top", "top right", "left", "right", "bottom left", "bottom", "bottom right"]
    colors = ["green", "blue", "yellow", "orange", "purple", "pink", "brown", "green"]
    kinds = ["square", "triangle", "star", "ring", "cross", "diamond", "square", "triangle"]
    clutter = tuple(_shape(k, c, p) for k, c, p in zip(kinds, colors, cells, strict=True))
    image = render_scene(Scene(background="white", shapes=(wanted, *clutter)), 64)

    reading = read_scene(image)
    assert len(reading.objects) == 9
    assert any(o.color == "red" and o.position == "center" for o in reading.objects)
    score = score_scene(reading, Scene(background="white", shapes=(wanted,)))
    assert score.color_ok == 0.0 and score.cell_ok == 0.0 and not score.all_ok


@pytest.mark.parametrize("side", [64, 200])
def test_a_uniform_grey_image_reads_as_no_objects(side: int) -> None:
    image = Image.new("RGB", (side, side), (128, 128, 128))
    reading = read_scene(image)
    assert reading.objects == () and reading.background == "grey"
    target = Scene(background="grey", shapes=(_shape("circle", "red", "center"), _shape("cross", "blue", "left")))
    score = score_scene(reading, target)
    assert (score.color_ok, score.cell_ok, score.color_cell_ok, score.size_ok, score.kind_ok) == (0, 0, 0, 0, 0)
    assert score.background_ok and not score.all_ok
    assert score.score == pytest.approx(0.2)
    assert all(s.detected is None for s in score.per_shape)


@pytest.mark.parametrize("side", [32, 96, 200])
def test_images_of_any_size_are_read_like_64_px_renders(side: int) -> None:
    rng = random.Random(HELD_OUT_SEED + 5)
    scenes = [sample_scene(rng) for _ in range(40)]
    all_ok = [score_image(render_scene(s, side), s).all_ok for s in scenes]
    assert sum(all_ok) / len(all_ok) >= 0.9


def test_score_columns_follow_scene_columns_with_booleans_as_numbers() -> None:
    scene = Scene(background="black", shapes=(_shape("diamond", "orange", "bottom"), _shape("ring", "brown", "top")))
    right = score_image(render_scene(scene, 64), scene).columns()
    assert tuple(right) == SCENE_COLUMNS
    assert all(isinstance(v, float) for v in right.values())
    assert right["scene_all_ok"] == 1.0 and right["scene_score"] == 1.0
    wrong = score_image(Image.new("RGB", (64, 64), (245, 245, 245)), scene).columns()
    assert wrong["scene_background_ok"] == 0.0 and wrong["scene_all_ok"] == 0.0 and wrong["scene_score"] == 0.0


def test_the_shipped_kind_probe_matches_the_module_settings() -> None:
    probe = KindProbe.from_json(PROBE_PATH.read_text(encoding="utf-8"))
    assert probe.weights.shape == (probe.mean.shape[0], len(SHAPE_KINDS))
    assert probe.train_accuracy >= 0.98
    stale = json.loads(probe.to_json())
    stale["probe_grid"] += 1
    with pytest.raises(ValueError, match="probe_grid"):
        KindProbe.from_json(json.dumps(stale))
