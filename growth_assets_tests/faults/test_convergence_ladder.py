"""A fit whose R-hat or ESS falls short is refitted once with more iterations (bounded by
BRMS_MAX_N_SAMPLES) before the checks decide; every attempt is recorded (issue: nothing
silently wrong, item 11). The engine is scripted (fault injection) to fall short once."""

from __future__ import annotations

import dagster as dg
import pytest

from growth_assets.db import connect
from growth_assets.defs.growth import weekly_assets
from growth_assets.defs.growth.diagnostics import ESS_CHECK
from growth_assets_tests.support.graph import PARTITION, ReplayEngine, resources, seed_db


@pytest.fixture
def seeded(db_url):
    return seed_db(db_url, 30, seed=5)


def attempts_of(url):
    with connect(url) as c:
        return c.execute("SELECT diagnostics->'attempts', status FROM growth_brms_meta").fetchone()


def test_a_short_ess_is_refitted_with_twice_the_iterations_and_both_attempts_are_recorded(seeded):
    """Today's main graded the first fit: the WARN check fired every Monday."""
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(
        seeded, ReplayEngine(min_ess=350.0, later_min_ess=900.0), n_samples=1000, max_n_samples=4000))
    assert res.success
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert ev[ESS_CHECK].passed  # graded on the refit
    md = res.asset_materializations_for_node("brms_posterior")[0].metadata
    assert md["attempts"].value == 2
    attempts, status = attempts_of(seeded)
    assert [a["n_samples"] for a in attempts] == [1000, 2000] and status == "passed"
    assert [a["min_ess_bulk"] for a in attempts] == [350.0, 900.0]


def test_the_ladder_stops_at_its_ceiling_and_the_checks_then_decide(seeded):
    res = dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(
        seeded, ReplayEngine(min_ess=350.0, later_min_ess=360.0), n_samples=1000, max_n_samples=1500))
    assert res.success  # a WARN does not block
    ev = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert not ev[ESS_CHECK].passed and ev[ESS_CHECK].severity == dg.AssetCheckSeverity.WARN
    attempts, _ = attempts_of(seeded)
    assert [a["n_samples"] for a in attempts] == [1000, 1500]  # once, bounded


def test_a_fit_that_passes_is_not_refitted(seeded):
    dg.materialize(weekly_assets, partition_key=PARTITION, resources=resources(seeded, ReplayEngine()))
    attempts, _ = attempts_of(seeded)
    assert len(attempts) == 1
