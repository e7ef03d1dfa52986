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


@pytest.mark.parametrize("name,value", [
    ("BRMS_N_SAMPLES", "1_000"),  # int() reads it as 1000
    ("BRMS_LOOKBACK_WEEKS", "\u0661\u0662"),  # Arabic-Indic 12: int() reads it as 12
    ("METRICS_DEFAULT_TARGET", "0_5"),  # float() reads it as 5.0
    ("R_BRMS_TIMEOUT_SECS", "-5"),  # the error showed '-5.0', not what was set
    ("DAGSTER_WEBSERVER_URL", "not a url"),
    ("R_BRMS_BASE_URL", "r-brms:8000"),  # no scheme: every request failed, far from the setting
])
def test_values_python_would_read_but_a_person_did_not_mean_are_refused_naming_them(name, value):
    with pytest.raises(SettingsError) as e:
        Settings.from_env({name: value})
    assert name in str(e.value) and value in str(e.value)


def test_a_webhook_url_without_a_scheme_is_refused_without_showing_its_secret_path():
    """A Slack webhook's path is its secret: without https:// every POST failed
    (UnsupportedProtocol) and the alerts piled up, none delivered, with no word at startup."""
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T000/B000/s3cretXYZ"})
    assert "ALERT_WEBHOOK_URL" in str(e.value) and "http" in str(e.value) and "s3cret" not in str(e.value)
    assert Settings.from_env({"ALERT_WEBHOOK_URL": "https://hooks.slack.com/x\n"}).alert_webhook_url


def test_a_refit_ceiling_below_the_iterations_is_refused():
    """BRMS_MAX_N_SAMPLES below BRMS_N_SAMPLES silently turned the convergence refit off."""
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"BRMS_N_SAMPLES": "2000", "BRMS_MAX_N_SAMPLES": "1000"})
    assert "BRMS_MAX_N_SAMPLES" in str(e.value) and "1000" in str(e.value) and "BRMS_N_SAMPLES" in str(e.value)
    assert Settings.from_env({"BRMS_N_SAMPLES": "2000", "BRMS_MAX_N_SAMPLES": "2000"}).max_n_samples == 2000
