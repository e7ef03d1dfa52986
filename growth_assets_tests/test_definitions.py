import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_the_weekly_assets_the_backtest_and_their_checks():
    from growth_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    sources = {"mirt_ability", "student_topic_theta", "features_topic_daily", "weekly_kpi"}
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "weekly_scores", "brms_posterior", "growth_brms_meta", "weekly_kpi_P", "goal_forecast_backtest",
        "daily_kpi_P"} | sources
    # lineage starts where the data does: the platform's tables, external (never materialized)
    for name in sources:
        assert not graph.get(dg.AssetKey(name)).is_materializable, name

    def parents(name):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}

    assert parents("weekly_scores") == sources
    assert parents("brms_posterior") == {"weekly_scores"}
    assert parents("growth_brms_meta") == {"brms_posterior"}
    assert parents("weekly_kpi_P") == {"growth_brms_meta"}
    assert parents("daily_kpi_P") == sources | {"growth_brms_meta", "brms_posterior"}
    # the backtest scores what was published, against the realised scores of the sources
    assert parents("goal_forecast_backtest") == sources | {"weekly_kpi_P"}
    checks = {k.name for k in graph.asset_check_keys}
    assert {"rhat_below_threshold", "ess_above_threshold", "divergent_transitions_below_threshold",
            "predictive_coverage_90", "brier_skill_vs_normal"} <= checks
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key} has no description"


def test_dagster_cli_validates_the_workspace(tmp_path):
    # its own DAGSTER_HOME: the repository's dagster.yaml is the production (Kubernetes) instance
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Validation successful" in out.stdout + out.stderr
