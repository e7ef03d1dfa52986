-- A thinned set of each fit's population hyperparameter draws (data units), beside its
-- summary: what the real-time path needs to reproduce the run's posterior for a student's
-- scores since the window (metrics, path "update"). One row per fit, owned by
-- brms_posterior (written with growth_fit, in the same transaction). Old fits have no row;
-- readers then use the student rows and the posterior summary as before.
CREATE TABLE IF NOT EXISTS growth_population_draws (
    run_id        text PRIMARY KEY REFERENCES growth_fit (run_id) ON DELETE CASCADE,
    n_draws       integer NOT NULL CHECK (n_draws > 0),
    b_intercept   float8[] NOT NULL,
    b_week        float8[] NOT NULL,
    sd_intercept  float8[] NOT NULL,
    sd_week       float8[] NOT NULL,
    cor           float8[] NOT NULL,
    sigma         float8[] NOT NULL,
    CHECK (cardinality(b_intercept) = n_draws AND cardinality(b_week) = n_draws
           AND cardinality(sd_intercept) = n_draws AND cardinality(sd_week) = n_draws
           AND cardinality(cor) = n_draws AND cardinality(sigma) = n_draws)
);
