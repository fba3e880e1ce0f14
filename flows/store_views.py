"""SQL views over the benchmark ``results`` laid out like the GILL paper's tables (see ``eval/README.md``).

Each view has one row per (benchmark run, system); cells are means, with the 95% bootstrap interval,
sample counts and metric models in ``results``. Views are (re)created whenever the database is opened for
writing, so they always match this version of gill.
"""

from __future__ import annotations

from eval.claims import claims_view_sql

SYSTEM_ORDER = ("sd", "clip-retrieval", "fromage-retrieval", "gill", "gill-gen", "gill-ret", "gill-oracle")
"""Row order of the report tables: baselines first, then GILL's variants."""

_ORDER = "CASE system " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SYSTEM_ORDER)) + " ELSE 99 END"


def _pivot(benchmark: str, settings: dict[str, str], metrics: dict[str, str]) -> str:
    """``results`` of one benchmark pivoted: one column per (metric, setting)."""
    cells = [
        f"max(mean) FILTER (WHERE metric = '{metric}' AND setting = '{setting}') AS {prefix}_{column}"
        for metric, prefix in metrics.items()
        for setting, column in settings.items()
    ]
    models = [
        f"max(metric_model) FILTER (WHERE metric = '{metric}') AS {prefix}_model" for metric, prefix in metrics.items()
    ]
    return (
        f"SELECT run_id, system, {', '.join(cells)}, {', '.join(models)}, max(n) AS n, max(n_seeds) AS n_seeds "
        f"FROM results WHERE benchmark = '{benchmark}' AND metric IN ({', '.join(repr(m) for m in metrics)}) "
        f"GROUP BY run_id, system ORDER BY run_id, {_ORDER}"
    )


VIEWS: dict[str, str] = {
    "table1_vist": _pivot(
        "vist", {"1cap": "1cap", "5cap": "5cap", "5cap4img": "5cap4img"}, {"clip_sim": "clip", "lpips": "lpips"}
    ),
    "table2_visdial": _pivot(
        "visdial",
        {"1round": "1round", "5rounds": "5rounds", "10rounds": "10rounds"},
        {"clip_sim": "clip", "lpips": "lpips"},
    ),
    "table_retrieval": (
        "SELECT run_id, benchmark, setting, system, "
        "max(mean) FILTER (WHERE metric = 'recall@1') AS r1, max(mean) FILTER (WHERE metric = 'recall@5') AS r5, "
        "max(mean) FILTER (WHERE metric = 'recall@10') AS r10, max(pool_size) AS pool_size, max(n) AS n "
        "FROM results WHERE metric LIKE 'recall@%' GROUP BY run_id, benchmark, setting, system "
        f"ORDER BY run_id, benchmark, setting, {_ORDER}"
    ),
    "table_cc3m_fid": (
        "SELECT run_id, system, mean AS fid, ci_low, ci_high, n, n_seeds, seed_std, metric_model "
        f"FROM results WHERE benchmark = 'cc3m-fid' AND metric = 'fid' ORDER BY run_id, {_ORDER}"
    ),
    "table_mapper_ablation": (
        "SELECT r.run_id, r.checkpoint, json_extract_string(r.config, '$.model.adapters.mapper.kind') AS mapper, "
        "max(x.mean) FILTER (WHERE x.benchmark = 'cc3m-fid' AND x.metric = 'fid' AND x.system = 'gill-gen') "
        "AS cc3m_fid, "
        "max(x.mean) FILTER (WHERE x.benchmark = 'vist' AND x.setting = '5cap4img' AND x.metric = 'clip_sim' "
        "AND x.system = 'gill-gen') AS vist_clip_sim "
        "FROM runs r JOIN results x ON x.run_id = r.run_id GROUP BY r.run_id, r.checkpoint, mapper "
        "HAVING cc3m_fid IS NOT NULL OR vist_clip_sim IS NOT NULL ORDER BY mapper, r.run_id"
    ),
    "context_effect": (
        "SELECT run_id, benchmark, system, setting, "
        "CASE WHEN benchmark = 'vist' THEN CASE setting WHEN '1cap' THEN 1 WHEN '5cap' THEN 5 ELSE 9 END "
        "ELSE CAST(regexp_extract(setting, '^([0-9]+)', 1) AS INTEGER) END AS context_length, "
        "mean AS clip_sim, ci_low, ci_high, n FROM results "
        "WHERE benchmark IN ('vist', 'visdial') AND metric = 'clip_sim' "
        "ORDER BY run_id, benchmark, system, context_length"
    ),
    "claims": claims_view_sql(),
}
"""View name -> SELECT. ``context_effect``'s length counts prompt items for VIST (captions + images) and rounds
for VisDial, the x axis of the paper's effect-of-context figure."""
