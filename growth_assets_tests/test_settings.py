import pytest

from growth_assets.defs.resources import GrowthEngineResource
from growth_assets.model.engines import make_engine
from growth_assets.model.result import fit_panel
from growth_assets.settings import Settings, SettingsError
from growth_assets_tests.brms.test_faults import PANEL, SETTINGS, ok, valid_body


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


# the launchpad's engine settings read as their environment variables are (session 24's review)


def test_a_huge_r_brms_timeout_is_refused_or_works(fake):
    """R_BRMS_TIMEOUT_SECS=9999999999 ("never time out") passes the env check (finite, > 0),
    then every brms fit dies in httpcore with a bare OverflowError ("timestamp out of range
    for platform time_t", socket.settimeout), naming no setting: the service was up and
    answering. It must be refused at the setting, naming it, or work."""
    f = fake(ok(valid_body()))
    env = {"R_BRMS_TIMEOUT_SECS": "9999999999", "R_BRMS_BASE_URL": f.url, "GROWTH_ENGINE": "brms"}
    try:
        s = Settings.from_env(env)
    except SettingsError as e:
        assert "R_BRMS_TIMEOUT_SECS" in str(e) and "9999999999" in str(e)
        return
    eng = make_engine(s.chosen_engine, r_brms_base_url=s.r_brms_base_url,
                      r_brms_timeout_secs=s.r_brms_timeout_secs, max_retries=0)
    try:
        res = fit_panel(eng, PANEL, SETTINGS)
    except OverflowError as e:
        pytest.fail(f"accepted R_BRMS_TIMEOUT_SECS=9999999999, then the fit failed with OverflowError: {e}")
    assert res.engine == "brms"


def test_the_engine_resource_refuses_an_infinite_timeout_as_the_env_does(fake):
    """The launchpad's r_brms_timeout_secs (gt=0) takes .inf, which R_BRMS_TIMEOUT_SECS refuses
    ("must be finite"); the fit then dies with a bare OverflowError."""
    f = fake(ok(valid_body()))
    try:
        res_ = GrowthEngineResource(engine="brms", r_brms_base_url=f.url, r_brms_timeout_secs=float("inf"),
                                    r_brms_max_retries=0)
    except Exception as e:  # refused at the field: fine
        assert "r_brms_timeout_secs" in str(e)
        return
    try:
        res = fit_panel(res_.get_engine(), PANEL, SETTINGS)
    except OverflowError as e:
        pytest.fail(f"r_brms_timeout_secs=inf accepted, then the fit failed with OverflowError: {e}")
    assert res.engine == "brms"


def test_the_engine_resource_reads_a_chain_method_as_the_env_does(monkeypatch):
    """GROWTH_NATIVE_CHAIN_METHOD is checked against vectorized|sequential (case folded); the
    resource's native_chain_method (the launchpad) was any string, never checked: "Sequential"
    was taken as "not sequential" (chains spread over devices by _n_devices) and "not
    vectorized" (vectorized = chain_method == "vectorized"): a third mode, silently. It is now
    read as the variable is: case folded, and anything else refused naming it. (What the
    engine is built with is caught here: a process configures JAX once, with its first runtime.)"""
    from growth_assets.defs import resources

    assert Settings.from_env({"GROWTH_NATIVE_CHAIN_METHOD": "Sequential"}).native.chain_method == "sequential"
    built: dict = {}
    monkeypatch.setattr(resources, "make_engine", lambda engine, **kw: built.update(kw, engine=engine))
    GrowthEngineResource(engine="native", native_chain_method="Sequential").get_engine()
    assert built["engine"] == "native" and built["native"].chain_method == "sequential"
    with pytest.raises(SettingsError, match="GROWTH_NATIVE_CHAIN_METHOD='parallel'"):
        GrowthEngineResource(engine="native", native_chain_method="parallel").get_engine()


def test_the_engine_resource_bounds_native_devices_as_the_env_does():
    """GROWTH_NATIVE_DEVICES is within 0..256; the resource's native_devices has ge=1 and no
    upper bound: 100000 in the launchpad is taken (and handed to jax_num_cpu_devices)."""
    with pytest.raises(SettingsError):
        Settings.from_env({"GROWTH_NATIVE_DEVICES": "100000"})
    with pytest.raises(Exception, match="native_devices"):
        GrowthEngineResource(engine="native", native_devices=100000)


def test_the_engine_resource_checks_the_r_service_url_as_the_env_does():
    """R_BRMS_BASE_URL=localhost:8080 is refused naming the variable; the resource's
    r_brms_base_url takes it, and the fit fails with httpx's "unsupported protocol
    'localhost://'", naming no setting."""
    with pytest.raises(SettingsError, match="R_BRMS_BASE_URL"):
        Settings.from_env({"R_BRMS_BASE_URL": "localhost:8080"})
    with pytest.raises(Exception, match="r_brms_base_url|R_BRMS_BASE_URL"):
        GrowthEngineResource(engine="brms", r_brms_base_url="localhost:8080").get_engine()


def test_port_zero_is_refused_as_the_url_error_says():
    """env_url's own text: "(and a port within 1..65535)", and its comment: a bad port is refused
    here "(else a 'connection refused' later)". Port 0 passes (urlsplit reads it as 0)."""
    with pytest.raises(SettingsError, match="R_BRMS_BASE_URL"):
        Settings.from_env({"R_BRMS_BASE_URL": "http://r-brms:0"})


@pytest.mark.parametrize("word", ["false", "no", "FALSE"])
def test_the_cache_dir_off_words_include_the_projects_false_words(word):
    """GROWTH_JAX_CACHE_DIR takes "", off, none, 0 for "no caches", but "false" / "no" (the
    project's own false words, env_bool) become a relative directory named "false" in the
    current directory, silently."""
    rt = Settings.from_env({"GROWTH_JAX_CACHE_DIR": word}).native
    assert rt.cache_dir is None, f"GROWTH_JAX_CACHE_DIR={word!r} -> cache_dir={rt.cache_dir!r}"
