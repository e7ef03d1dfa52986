# Bounds of validate.R no other test reached (session 23's mutation probes: each block fails on
# one mutant of the checks, a plausible bug, that the suite let through)
TOKEN <- "test-token-123"
auth <- list(Authorization = paste("Bearer", TOKEN))
probe_router <- function() {
  env <- load_service_env(list(token = TOKEN))
  env$.svc$ready <- TRUE; env$.svc$model_status <- "ready"; env$.svc$model_path <- "/nonexistent/model.rds"
  list(env = env, pr = make_router(env))
}
probe_post <- function(r, rows_txt, extra = "") {
  call_route(r$pr, "POST", "/growth/fit",
             sprintf('{"rows": %s, "n_chains": 2, "n_samples": 400%s}', rows_txt, extra), auth)
}
PROBE_ROWS <- rows_json(small_rows())  # weeks 0..2

test_that("a week equal to lookback_weeks is refused (spec 1: weeks 0 .. L-1)", {
  r <- probe_router()
  out <- probe_post(r, PROBE_ROWS, ', "lookback_weeks": 2')  # week 2 = L
  expect_equal(out$status, 400L); expect_equal(out$json$field, "rows.week")
  expect_length(ls(r$env$.svc$jobs), 0)
})

test_that("a score below BRMS_SCORE_RANGE is refused as such", {
  r <- probe_router()
  d <- small_rows(); d$score <- -d$score * 1e150
  out <- probe_post(r, rows_json(d))
  expect_equal(out$status, 400L); expect_equal(out$json$field, "rows.score")
  expect_match(out$json$detail, "BRMS_SCORE_RANGE")
})

test_that("an infinite target is refused naming it", {
  r <- probe_router()
  out <- probe_post(r, PROBE_ROWS, ', "target": 1e999')
  expect_equal(out$status, 400L); expect_equal(out$json$field, "target")
})

test_that("horizon_week and lookback_weeks beyond their maxima are refused naming them", {
  r <- probe_router()
  out <- probe_post(r, PROBE_ROWS, ', "horizon_week": 2000000')
  expect_equal(out$status, 400L); expect_equal(out$json$field, "horizon_week")
  out <- probe_post(r, PROBE_ROWS, ', "lookback_weeks": 521')
  expect_equal(out$status, 400L); expect_equal(out$json$field, "lookback_weeks")
})
