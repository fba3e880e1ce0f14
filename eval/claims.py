"""The GILL paper's claims, checked against our own benchmark results: the DuckDB view ``claims``.

Each :class:`Claim` compares two measurements (arm A and arm B) of one metric, in the direction the paper states:
GILL beats Stable Diffusion at 5 captions (Table 1), context helps (Tables 1 and 2), the GILLMapper beats the
linear and MLP mappers (the mapper ablation, Table 3), GILL retrieval from a multimodal context beats CLIP text
retrieval (section 4.1), the decision classifier beats chance and the oracle beats generating or retrieving only
(section 3.3). The paper's figures sit beside ours.

The view has one row per (benchmark run, claim) with both arms' means and 95% intervals (percentile bootstrap over
samples, from ``results``) and two verdicts:

* ``holds``: ``true`` when the two intervals do not overlap and A is better, ``false`` when they do not overlap
  and B is better, ``inconclusive`` when they overlap, ``not run`` when an arm has no result. This is the rule
  the claims table reports.
* ``holds_paired``: the same verdict from the 95% interval of the *paired* difference A - B over the samples both
  arms scored (normal approximation, mean +- 1.96 sd / sqrt(n)); it is sharper because the two systems saw the
  same stories with the same SD noise. NULL where the arms share no samples (e.g. the decision classifier).

Nothing here is tuned to the toy world: the claims, metrics and directions are the paper's, and a claim that
fails on the shapes world is reported as failing.
"""

from __future__ import annotations

from dataclasses import dataclass

CHANCE_MACRO_F1 = 0.5
"""Expected macro-F1 of guessing each label at its own base rate (F1 = p for one class, 1 - p for the other)."""


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One side of a comparison: a ``results`` cell, optionally from the latest run of another mapper kind."""

    benchmark: str
    setting: str
    system: str
    mapper: str | None = None
    """Take this arm from the latest benchmark run whose checkpoint uses this mapper kind (the ablation)."""

    @property
    def label(self) -> str:
        mapper = f" [{self.mapper} mapper]" if self.mapper else ""
        return f"{self.system}{mapper} {self.benchmark} {self.setting}"


@dataclass(frozen=True, kw_only=True)
class DecisionArm:
    """Which decision-classifier fits a claim reads from ``decision_eval``: the latest with this recipe and features."""

    recipe: str = "official"
    with_retrieval_score: bool = False

    @property
    def label(self) -> str:
        score = ", h[IMG0] + retrieval score" if self.with_retrieval_score else ", h[IMG0]"
        return f"{self.recipe} recipe{score}"


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A direction the paper states, and where."""

    claim_id: str
    claim: str
    source: str
    """Where the paper states it (table or section)."""
    metric: str
    """A ``results.metric``; ``decision_macro_f1`` is the classifier's cross-validated macro-F1."""
    higher_is_better: bool
    a: Arm | None
    """None: the decision classifier (from ``decision_eval``)."""
    b: Arm | None
    """None: a constant (``b_constant``)."""
    paper_a: float | None = None
    paper_b: float | None = None
    b_constant: float | None = None
    decision: DecisionArm | None = None
    """With ``a`` None: which decision-classifier fits arm A reads."""


def _vist(setting: str, system: str = "gill-gen", mapper: str | None = None) -> Arm:
    return Arm(benchmark="vist", setting=setting, system=system, mapper=mapper)


def _visdial(setting: str) -> Arm:
    return Arm(benchmark="visdial", setting=setting, system="gill-gen")


CLAIMS: tuple[Claim, ...] = (
    Claim(
        claim_id="a1",
        claim="GILL beats SD at 5 captions (VIST)",
        source="Table 1",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap"),
        b=_vist("5cap", "sd"),
        paper_a=0.612,
        paper_b=0.598,
    ),
    Claim(
        claim_id="a2",
        claim="GILL beats SD at 5 captions (VIST), scene metric",
        source="Table 1 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_vist("5cap"),
        b=_vist("5cap", "sd"),
    ),
    Claim(
        claim_id="b1",
        claim="context helps GILL: 5 captions > 1 caption (VIST)",
        source="Table 1",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap"),
        b=_vist("1cap"),
        paper_a=0.612,
        paper_b=0.581,
    ),
    Claim(
        claim_id="b2",
        claim="context helps GILL: 5 captions + 4 images > 5 captions (VIST)",
        source="Table 1",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap4img"),
        b=_vist("5cap"),
        paper_a=0.641,
        paper_b=0.612,
    ),
    Claim(
        claim_id="b3",
        claim="context helps GILL: 5 captions > 1 caption (VIST), scene metric",
        source="Table 1 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_vist("5cap"),
        b=_vist("1cap"),
    ),
    Claim(
        claim_id="b4",
        claim="context helps GILL: 5 captions + 4 images > 5 captions (VIST), scene metric",
        source="Table 1 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_vist("5cap4img"),
        b=_vist("5cap"),
    ),
    Claim(
        claim_id="b5",
        claim="more dialogue helps GILL: 5 rounds > 1 round (VisDial)",
        source="Table 2",
        metric="clip_sim",
        higher_is_better=True,
        a=_visdial("5rounds"),
        b=_visdial("1round"),
        paper_a=0.621,
        paper_b=0.528,
    ),
    Claim(
        claim_id="b6",
        claim="more dialogue helps GILL: 10 rounds > 5 rounds (VisDial)",
        source="Table 2",
        metric="clip_sim",
        higher_is_better=True,
        a=_visdial("10rounds"),
        b=_visdial("5rounds"),
        paper_a=0.645,
        paper_b=0.621,
    ),
    Claim(
        claim_id="b7",
        claim="more dialogue helps GILL: 10 rounds > 1 round (VisDial), scene metric",
        source="Table 2 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_visdial("10rounds"),
        b=_visdial("1round"),
    ),
    Claim(
        claim_id="c1",
        claim="the GILLMapper beats a linear mapper (VIST, 5 captions + 4 images)",
        source="Table 3",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap4img", mapper="gill_mapper"),
        b=_vist("5cap4img", mapper="linear"),
        paper_a=0.641,
        paper_b=0.500,
    ),
    Claim(
        claim_id="c2",
        claim="the GILLMapper beats a 3-layer MLP mapper (VIST, 5 captions + 4 images)",
        source="Table 3",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap4img", mapper="gill_mapper"),
        b=_vist("5cap4img", mapper="mlp3"),
        paper_a=0.641,
        paper_b=0.502,
    ),
    Claim(
        claim_id="c3",
        claim="the GILLMapper beats a linear mapper (VIST, 5 captions + 4 images), scene metric",
        source="Table 3 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_vist("5cap4img", mapper="gill_mapper"),
        b=_vist("5cap4img", mapper="linear"),
    ),
    Claim(
        claim_id="c4",
        claim="the GILLMapper beats a 3-layer MLP mapper (VIST, 5 captions + 4 images), scene metric",
        source="Table 3 (scene metric)",
        metric="scene_score",
        higher_is_better=True,
        a=_vist("5cap4img", mapper="gill_mapper"),
        b=_vist("5cap4img", mapper="mlp3"),
    ),
    Claim(
        claim_id="d1",
        claim="GILL retrieval from 5 captions + 4 images beats CLIP retrieval from 5 captions",
        source="section 4.1 (VIST retrieval)",
        metric="recall@1",
        higher_is_better=True,
        a=Arm(benchmark="vist-retrieval", setting="5cap4img", system="fromage-retrieval"),
        b=Arm(benchmark="vist-retrieval", setting="5cap", system="clip-retrieval"),
        paper_a=0.203,
        paper_b=0.088,
    ),
    Claim(
        claim_id="e1",
        claim="the decision classifier beats chance (macro-F1, 5-fold CV)",
        source="section 3.3",
        metric="decision_macro_f1",
        higher_is_better=True,
        a=None,
        b=None,
        paper_a=0.544,
        paper_b=CHANCE_MACRO_F1,
        b_constant=CHANCE_MACRO_F1,
        decision=DecisionArm(),
    ),
    Claim(
        claim_id="e4",
        claim="a bank-aware decision classifier beats chance (macro-F1, 5-fold CV)",
        source="beyond the paper (section 3.3 + retrieval score)",
        metric="decision_macro_f1",
        higher_is_better=True,
        a=None,
        b=None,
        paper_b=CHANCE_MACRO_F1,
        b_constant=CHANCE_MACRO_F1,
        decision=DecisionArm(recipe="balanced", with_retrieval_score=True),
    ),
    Claim(
        claim_id="e2",
        claim="the oracle beats generate-only (VIST, 5 captions + 4 images)",
        source="section 3.3",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap4img", "gill-oracle"),
        b=_vist("5cap4img"),
    ),
    Claim(
        claim_id="e3",
        claim="the oracle beats retrieve-only (VIST, 5 captions + 4 images)",
        source="section 3.3",
        metric="clip_sim",
        higher_is_better=True,
        a=_vist("5cap4img", "gill-oracle"),
        b=_vist("5cap4img", "gill-ret"),
    ),
)
"""Every claim the report checks, in report order."""

_MAPPER = "json_extract_string(r.config, '$.model.adapters.mapper.kind')"


def _q(value: str | float | None) -> str:
    """A SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value))


def _cell(arm: Arm, metric: str) -> str:
    return (
        f"benchmark = {_q(arm.benchmark)} AND setting = {_q(arm.setting)} AND system = {_q(arm.system)} "
        f"AND metric = {_q(metric)}"
    )


def _per_sample_value(metric: str) -> str:
    """The ``samples`` expression whose per-sample mean is ``metric`` (what the bootstrap resamples)."""
    if metric.startswith("recall@"):
        return f"CAST(target_rank < {int(metric.split('@')[1])} AS DOUBLE)"
    if metric.startswith("scene_") and metric != "scene_score":
        return f"{metric}_ok"
    return metric


def _arm_source(arm: Arm, metric: str, latest: bool) -> str:
    """A subquery with the arm's ``results`` rows (only runs of ``arm.mapper`` when set; only the newest with
    ``latest``)."""
    if arm.mapper is None:
        return f"(SELECT * FROM results WHERE {_cell(arm, metric)})"
    newest = " ORDER BY r.started_at DESC LIMIT 1" if latest else ""
    return (
        f"(SELECT x.* FROM results x JOIN runs r USING (run_id) WHERE {_cell(arm, metric)} "
        f"AND {_MAPPER} = {_q(arm.mapper)}{newest})"
    )


def _pairs(claim: Claim) -> str:
    """Paired per-sample differences A - B (seeds averaged per sample first) as ``diff``, ``diff_low``, ..."""
    assert claim.a is not None and claim.b is not None
    value = _per_sample_value(claim.metric)

    def per_sample(arm: Arm, alias: str) -> str:
        return (
            f"(SELECT run_id, sample_id, avg({value}) AS v FROM samples WHERE benchmark = {_q(arm.benchmark)} "
            f"AND setting = {_q(arm.setting)} AND system = {_q(arm.system)} AND status = 'ok' "
            f"GROUP BY run_id, sample_id) {alias}"
        )

    return (
        f"(SELECT avg(pa.v - pb.v) AS diff, stddev_samp(pa.v - pb.v) AS sd, count(*) AS n_pairs FROM "
        f"{per_sample(claim.a, 'pa')} JOIN {per_sample(claim.b, 'pb')} ON pb.sample_id = pa.sample_id "
        f"WHERE pa.run_id = a.run_id AND pb.run_id = b.run_id AND pa.v IS NOT NULL "
        f"AND pb.v IS NOT NULL)"
    )


def _comparison_sql(claim: Claim) -> str:
    """One claim's rows: one per benchmark run with results (arm A from that run; arm B from it too, or from the
    newest run of B's mapper kind)."""
    assert claim.a is not None and claim.b is not None
    join_b = "ON b.run_id = r.run_id" if claim.b.mapper is None else "ON true"
    return (
        f"SELECT r.run_id, {_q(claim.claim_id)} AS claim_id, {_q(claim.claim)} AS claim, {_q(claim.source)} AS source, "
        f"{_q(claim.metric)} AS metric, {_q(claim.a.label)} AS arm_a, {_q(claim.b.label)} AS arm_b, "
        f"{_q(claim.paper_a)} AS paper_a, {_q(claim.paper_b)} AS paper_b, "
        f"a.mean AS ours_a, a.ci_low AS a_low, a.ci_high AS a_high, a.n AS n_a, "
        f"b.mean AS ours_b, b.ci_low AS b_low, b.ci_high AS b_high, b.n AS n_b, "
        f"p.diff, p.diff - 1.96 * p.sd / sqrt(p.n_pairs) AS diff_low, p.diff + 1.96 * p.sd / sqrt(p.n_pairs) "
        f"AS diff_high, p.n_pairs, {'true' if claim.higher_is_better else 'false'} AS higher_is_better "
        f"FROM (SELECT DISTINCT run_id FROM results) r "
        f"LEFT JOIN {_arm_source(claim.a, claim.metric, latest=False)} a ON a.run_id = r.run_id "
        f"LEFT JOIN {_arm_source(claim.b, claim.metric, latest=claim.b.mapper is not None)} b {join_b} "
        f"LEFT JOIN LATERAL {_pairs(claim)} p ON true"
    )


_FOLDS_T = 2.776
"""Two-sided 95% Student t quantile with 4 degrees of freedom (5 cross-validation folds)."""


def _decision_sql(claim: Claim) -> str:
    """The classifier's cross-validated macro-F1 (latest fit of the claim's recipe and features; interval from the
    folds) against a constant."""
    arm = claim.decision or DecisionArm()
    latest = (
        f"(SELECT run_id FROM decision_eval WHERE protocol LIKE 'cv%' AND coalesce(recipe, 'official') = "
        f"{_q(arm.recipe)} AND coalesce(with_retrieval_score, false) = {str(arm.with_retrieval_score).lower()} "
        "ORDER BY created DESC LIMIT 1)"
    )
    name = f"decision classifier ({arm.label}"
    folds = (
        f"(SELECT avg(value) AS mean, stddev_samp(value) AS sd, count(*) AS k, max(n) AS n FROM decision_eval "
        f"WHERE run_id = {latest} AND metric LIKE 'macro_f1_fold%')"
    )
    return (
        f"SELECT r.run_id, {_q(claim.claim_id)} AS claim_id, {_q(claim.claim)} AS claim, {_q(claim.source)} AS source, "
        f"{_q(claim.metric)} AS metric, CASE WHEN EXISTS (SELECT 1 FROM decision_eval WHERE run_id = {latest} AND "
        f"protocol = 'simulated-panel') THEN {_q(f'{name}; latest fit, on SIMULATED panel votes)')} "
        f"ELSE {_q(f'{name}; latest fit)')} END AS arm_a, 'chance' AS arm_b, "
        f"{_q(claim.paper_a)} AS paper_a, {_q(claim.paper_b)} AS paper_b, "
        f"f.mean AS ours_a, f.mean - {_FOLDS_T} * f.sd / sqrt(f.k) AS a_low, f.mean + {_FOLDS_T} * f.sd / sqrt(f.k) "
        f"AS a_high, (SELECT max(n) FROM decision_eval WHERE run_id = {latest}) AS n_a, "
        f"{_q(claim.b_constant)} AS ours_b, {_q(claim.b_constant)} AS b_low, {_q(claim.b_constant)} AS b_high, "
        f"NULL AS n_b, NULL AS diff, NULL AS diff_low, NULL AS diff_high, NULL AS n_pairs, true AS higher_is_better "
        f"FROM (SELECT DISTINCT run_id FROM results) r CROSS JOIN {folds} f WHERE f.k > 1"
    )


def _verdict(low_a: str, high_a: str, low_b: str, high_b: str) -> str:
    """SQL CASE: which interval lies above the other (oriented by ``higher_is_better``)."""
    better = f"CASE WHEN higher_is_better THEN {low_a} > {high_b} ELSE {high_a} < {low_b} END"
    worse = f"CASE WHEN higher_is_better THEN {high_a} < {low_b} ELSE {low_a} > {high_b} END"
    return f"CASE WHEN {better} THEN 'true' WHEN {worse} THEN 'false' ELSE 'inconclusive' END"


def claims_view_sql() -> str:
    """The SELECT of the ``claims`` view."""
    parts = [_decision_sql(c) if c.a is None else _comparison_sql(c) for c in CLAIMS]
    order = "CASE claim_id " + " ".join(f"WHEN {_q(c.claim_id)} THEN {i}" for i, c in enumerate(CLAIMS)) + " END"
    paired = _verdict("diff_low", "diff_high", "0", "0")
    intervals = _verdict("a_low", "a_high", "b_low", "b_high")
    return (
        "SELECT run_id, claim_id, claim, source, metric, arm_a, arm_b, paper_a, paper_b, ours_a, a_low, a_high, n_a, "
        "ours_b, b_low, b_high, n_b, CASE WHEN higher_is_better THEN 'higher' ELSE 'lower' END AS better, "
        f"CASE WHEN ours_a IS NULL OR ours_b IS NULL THEN 'not run' "
        f"WHEN a_low IS NULL OR b_low IS NULL THEN 'inconclusive' ELSE {intervals} "
        f"END AS holds, diff, diff_low, diff_high, n_pairs, "
        f"CASE WHEN n_pairs IS NULL OR n_pairs < 2 THEN NULL ELSE {paired} END AS holds_paired "
        f"FROM ({' UNION ALL BY NAME '.join(parts)}) ORDER BY run_id, {order}"
    )
