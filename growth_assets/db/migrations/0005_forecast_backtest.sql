-- The forecast backtest (spec §10): one row per scored run and measure, owned by the asset
-- goal_forecast_backtest (rewritten whole, in one transaction, when a run is scored again).
-- model / baseline: the measure of the run's posterior predictive and of the Normal
-- approximation of spec §7 on the same students; detail: histograms, tables, counts.
CREATE TABLE IF NOT EXISTS growth_forecast_backtest (
    run_id         text NOT NULL REFERENCES growth_brms_meta (run_id) ON DELETE CASCADE,
    measure        text NOT NULL,
    partition_key  text,
    horizon_week   date NOT NULL,
    target         double precision NOT NULL,
    model          double precision,
    baseline       double precision,
    n_students     integer NOT NULL CHECK (n_students >= 0),
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
    dagster_run_id text,
    scored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, measure)
);
CREATE INDEX IF NOT EXISTS growth_forecast_backtest_horizon ON growth_forecast_backtest (horizon_week DESC);
