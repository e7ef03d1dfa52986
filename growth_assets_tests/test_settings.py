import pytest

from growth_assets.settings import Settings, SettingsError


def test_defaults_are_the_seed_systems():
    s = Settings.from_env({})
    assert (s.lookback_weeks, s.n_samples, s.n_chains, s.update_kpi, s.score_source, s.family) == (
        12, 2000, 4, True, "theta", "gaussian")
    assert (s.r_brms_timeout_secs, s.metrics_default_target, s.horizon_weeks) == (600.0, 0.0, 4)
    assert s.chosen_engine == "native"


def test_engine_choice_follows_r_brms_base_url_unless_set():
    assert Settings.from_env({"R_BRMS_BASE_URL": "http://r:80"}).chosen_engine == "brms"
    assert Settings.from_env({"R_BRMS_BASE_URL": "http://r:80", "GROWTH_ENGINE": "native"}).chosen_engine == "native"


@pytest.mark.parametrize("name,value", [
    ("BRMS_LOOKBACK_WEEKS", "twelve"), ("BRMS_N_CHAINS", "9"), ("BRMS_N_SAMPLES", "100"),
    ("BRMS_UPDATE_KPI", "maybe"), ("BRMS_SCORE_SOURCE", "zscore"), ("BRMS_FAMILY", "binomial"),
    ("METRICS_DEFAULT_TARGET", "nan"), ("R_BRMS_TIMEOUT_SECS", "0"), ("GROWTH_ENGINE", "stan"),
])
def test_bad_values_name_the_variable_and_the_value(name, value):
    with pytest.raises(SettingsError) as e:
        Settings.from_env({name: value})
    assert name in str(e.value) and value in str(e.value)


def test_the_token_is_not_in_the_repr():
    s = Settings.from_env({"R_BRMS_INTERNAL_TOKEN": "s3cret-token"})
    assert s.r_brms_internal_token == "s3cret-token" and "s3cret" not in repr(s)
