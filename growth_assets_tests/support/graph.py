"""Helpers for tests that materialize the weekly graph."""

from datetime import date

import dagster as dg

from growth_assets.db import connect
from growth_assets.defs.alerts import AlertWebhook
from growth_assets.defs.growth.diagnostics import DiagnosticThresholds
from growth_assets.defs.resources import GrowthEngineResource, GrowthSettings, PostgresResource
from growth_assets.model.contract import priors
from growth_assets_tests.support.results import make_result

# a database that does not answer (nothing listens on port 9): what a tick does without it
NO_DATABASE = PostgresResource(database_url="postgresql://u@127.0.0.1:9/x")

AS_OF = date(2026, 11, 23)
PARTITION = "2026-11-16"  # the week that closed before AS_OF


def resources(db_url, engine=None, alert_url=None, **growth):
    g = dict(n_chains=2, n_samples=400, seed=7)
    g.update(growth)
    return {
        "postgres": PostgresResource(database_url=db_url),
        "growth": GrowthSettings(**g),
        "engine": engine or GrowthEngineResource(engine="native"),
        "diagnostics_thresholds": DiagnosticThresholds(),
        "alert_webhook": AlertWebhook(url=alert_url),
    }


class ReplayEngine(dg.ConfigurableResource):
    """Fault injection for the checks: an engine whose result has chosen diagnostics.

    Not a stand-in for a real engine: the tests that claim an engine works use the real one.
    """

    max_rhat: float = 1.0
    n_divergent: int = 0
    min_ess: float = 1000.0  # within what posterior's ESS can be for 2 x 200 kept draws (<= S log10 S = 1041)
    later_min_ess: float | None = None  # the ESS of every fit after the first (a refit)
    fail: bool = False

    def get_engine(self):
        outer = self

        class _E:
            name = "native"
            calls = 0

            def fit(self, panel, settings):
                if outer.fail:
                    raise RuntimeError("sampler crashed")
                from dataclasses import replace

                self.calls += 1
                ess = outer.min_ess if self.calls == 1 or outer.later_min_ess is None else outer.later_min_ess
                r = make_result(panel.n_students, run_id=settings.run_id, h=settings.horizon_week,
                                target=settings.target, ids=panel.student_ids, n_obs=panel.n_obs(),
                                max_rhat=outer.max_rhat, n_divergent=outer.n_divergent,
                                min_ess_bulk=ess, min_ess_tail=ess)
                return replace(r, n_chains=settings.n_chains, n_samples=settings.n_samples,
                               n_warmup=settings.n_warmup, seed=settings.seed,
                               lookback_weeks=settings.lookback_weeks, priors=tuple(priors(*panel.scales())))

        return _E()



def failure_text(res) -> str:
    """The failed step's error with its causes, as the UI shows them."""
    out = []
    for ev in res.get_step_failure_events():
        err = ev.event_specific_data.error
        while err is not None:
            out.append(err.message)
            err = err.cause
    return "\n".join(out)




def seed_db(db_url: str, students: int, seed: int) -> str:
    """A synthetic cohort of the window that ends with PARTITION, in the test's database."""

    from growth_assets.demo.cohort import seed_cohort

    with connect(db_url) as conn:
        seed_cohort(conn, students, 12, seed=seed, as_of=AS_OF)
    return db_url
