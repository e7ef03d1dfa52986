# End to end: start the real service (run.R) in a background R process, wait
# for /readyz, post a small sleepstudy fit and check the response; /healthz
# must answer in < 1 s while the fit runs.
# The first run compiles the model (~1-2 min); later runs load it from the
# cache (R_BRMS_MODEL_CACHE, else the user's cache dir).

skip_if(identical(Sys.getenv("R_BRMS_SKIP_SERVER_TEST"), "1"), "R_BRMS_SKIP_SERVER_TEST=1")
skip_if_not_installed("curl")

free_port <- function() {
  if (exists("randomPort", asNamespace("httpuv"))) return(httpuv::randomPort())
  sample(20000:40000, 1)
}

http <- function(method, url, body = NULL, headers = list(), timeout = 600) {
  h <- curl::new_handle(customrequest = method, timeout = timeout)
  if (length(headers)) curl::handle_setheaders(h, .list = headers)
  if (!is.null(body)) curl::handle_setopt(h, postfields = body)
  t0 <- Sys.time()
  r <- curl::curl_fetch_memory(url, handle = h)
  list(status = r$status_code, body = rawToChar(r$content),
       secs = as.numeric(difftime(Sys.time(), t0, units = "secs")),
       headers = curl::parse_headers_list(r$headers))
}

test_that("the real service fits sleepstudy and stays live during the fit", {
  port <- free_port()
  token <- "e2e-token"
  base <- sprintf("http://127.0.0.1:%d", port)
  logf <- tempfile(fileext = ".log")
  env <- c(callr::rcmd_safe_env(), R_BRMS_INTERNAL_TOKEN = token)
  srv <- callr::r_bg(function(run_r, port) {
    system2(file.path(R.home("bin"), "Rscript"),
            c(shQuote(run_r), "--port", port, "--host", "127.0.0.1"))
  }, args = list(file.path(pkg_dir(), "run.R"), port), env = env,
  stdout = logf, stderr = "2>&1", supervise = TRUE)
  on.exit({
    srv$kill_tree()
  }, add = TRUE)

  # liveness at once, readiness after load/compile
  deadline <- Sys.time() + 400
  ready <- FALSE
  while (Sys.time() < deadline) {
    r <- tryCatch(http("GET", paste0(base, "/readyz"), timeout = 5), error = function(e) NULL)
    if (!is.null(r) && r$status == 200) { ready <- TRUE; break }
    if (!srv$is_alive()) break
    Sys.sleep(1)
  }
  expect_true(ready, info = paste(readLines(logf, warn = FALSE), collapse = "\n"))
  skip_if_not(ready, "service did not become ready")

  expect_equal(http("POST", paste0(base, "/growth/fit"), "{}")$status, 401L)

  d <- utils::read.csv(file.path(pkg_dir(), "tests", "testthat", "sleepstudy.csv"),
                       stringsAsFactors = FALSE)
  body <- as.character(jsonlite::toJSON(list(rows = d, n_chains = 2, n_samples = 400,
                                             seed = 1234, horizon_week = 11, target = 300),
                                        auto_unbox = TRUE, digits = NA))
  # the fit request runs in another process so that this one can probe /healthz
  client <- callr::r_bg(function(url, body, token) {
    h <- curl::new_handle(customrequest = "POST", timeout = 600)
    curl::handle_setheaders(h, Authorization = paste("Bearer", token),
                            `Content-Type` = "application/json", `Idempotency-Key` = "e2e-1")
    curl::handle_setopt(h, postfields = body)
    r <- curl::curl_fetch_memory(url, handle = h)
    list(status = r$status_code, body = rawToChar(r$content))
  }, args = list(paste0(base, "/growth/fit"), body, token), supervise = TRUE)
  on.exit(client$kill(), add = TRUE)

  Sys.sleep(0.5)
  health_secs <- numeric(0)
  saw_busy <- FALSE
  while (client$is_alive()) {
    h <- http("GET", paste0(base, "/healthz"), timeout = 5)
    expect_equal(h$status, 200L)
    health_secs <- c(health_secs, h$secs)
    z <- jsonlite::fromJSON(http("GET", paste0(base, "/readyz"), timeout = 5,
                                 headers = list(Authorization = paste("Bearer", token)))$body)
    if (isTRUE(z$running_fits > 0)) {
      saw_busy <- TRUE
      # over the concurrency limit: 429 with Retry-After
      other <- http("POST", paste0(base, "/growth/fit"), body,
                    headers = list(Authorization = paste("Bearer", token)))
      expect_equal(other$status, 429L)
      expect_false(is.null(other$headers[["retry-after"]]))
    }
    Sys.sleep(0.3)
  }
  expect_true(saw_busy)
  expect_true(length(health_secs) >= 1)
  expect_lt(max(health_secs), 1)

  res <- client$get_result()
  expect_equal(res$status, 200L, info = res$body)
  out <- jsonlite::fromJSON(res$body, simplifyVector = FALSE)
  expect_match(out$run_id, "^brms-[0-9]{8}-[0-9]{6}$")
  expect_equal(out$engine, "brms")
  expect_match(out$engine_version, "^brms [0-9.]+ / rstan [0-9.]+$")
  expect_equal(out$formula, "score ~ week + (week | student_id)")
  expect_equal(length(out$priors), 5)
  expect_equal(out$priors[[1]]$class, "Intercept")
  expect_equal(out$priors[[1]]$args[[1]], mean(d$score), tolerance = 1e-9)
  expect_equal(out$priors[[1]]$args[[2]], 2.5 * sd(d$score), tolerance = 1e-9)
  expect_equal(out$priors[[5]]$args, list(2L))
  for (k in c("seed", "n_chains", "n_samples", "n_warmup", "n_obs", "n_students",
              "lookback_weeks", "horizon_week", "target")) {
    expect_true(is.numeric(out[[k]]) && length(out[[k]]) == 1, info = k)
  }
  expect_equal(out$seed, 1234); expect_equal(out$n_chains, 2); expect_equal(out$n_samples, 400)
  expect_equal(out$n_warmup, 200); expect_equal(out$n_obs, 180); expect_equal(out$n_students, 18)
  expect_equal(out$lookback_weeks, 12); expect_equal(out$horizon_week, 11); expect_equal(out$target, 300)
  pars <- c("b_Intercept", "b_week", "sd_student_id__Intercept", "sd_student_id__week",
            "cor_student_id__Intercept__week", "sigma")
  expect_setequal(names(out$posterior_summary), pars)
  for (p in pars) {
    s <- out$posterior_summary[[p]]
    expect_setequal(names(s), c("mean", "sd", "q5", "q95", "rhat", "ess_bulk", "ess_tail"))
    expect_true(all(vapply(s, function(v) is.numeric(v) && length(v) == 1, TRUE)))
    expect_lt(s$q5, s$q95)
    expect_lt(s$rhat, 1.1)
  }
  ps <- out$posterior_summary
  # lme4 REML / reference neighbourhood, loose (400 iterations x 2 chains)
  expect_gt(ps$b_Intercept$mean, 235); expect_lt(ps$b_Intercept$mean, 268)
  expect_gt(ps$b_week$mean, 7); expect_lt(ps$b_week$mean, 14)
  expect_gt(ps$sigma$mean, 22); expect_lt(ps$sigma$mean, 30)
  dg <- out$diagnostics
  for (k in c("max_rhat", "min_ess_bulk", "min_ess_tail", "n_divergent", "n_max_treedepth", "elapsed_s")) {
    expect_true(is.numeric(dg[[k]]) && length(dg[[k]]) == 1, info = k)
  }
  expect_lt(dg$max_rhat, 1.1)
  expect_gt(dg$min_ess_bulk, 50)
  expect_equal(length(out$predictions), 18)
  p1 <- out$predictions[[1]]
  expect_setequal(names(p1), c("student_id", "n_obs", "mean_a", "mean_b", "var_a", "var_b",
                               "cov_ab", "mu", "sigma", "P"))
  for (p in out$predictions) {
    expect_equal(p$n_obs, 10)
    expect_gte(p$P, 0); expect_lte(p$P, 1)
    expect_gt(p$sigma, 0); expect_gt(p$var_a, 0); expect_gt(p$var_b, 0)
    expect_equal(p$mu, p$mean_a + 11 * p$mean_b, tolerance = 1e-6)
    expect_equal(p$sigma^2, p$var_a + 121 * p$var_b + 22 * p$cov_ab, tolerance = 1e-6)
  }
  # the same Idempotency-Key replays the stored result without a new fit
  again <- http("POST", paste0(base, "/growth/fit"), body,
                headers = list(Authorization = paste("Bearer", token),
                               `Content-Type` = "application/json", `Idempotency-Key` = "e2e-1"))
  expect_equal(again$status, 200L)
  expect_lt(again$secs, 2)
  expect_equal(jsonlite::fromJSON(again$body)$run_id, out$run_id)
  # logs carry no token and no row data
  log <- paste(readLines(logf, warn = FALSE), collapse = "\n")
  expect_false(grepl(token, log, fixed = TRUE))
  expect_false(grepl("subj308", log, fixed = TRUE))
  expect_match(log, "POST /growth/fit 200")
})
