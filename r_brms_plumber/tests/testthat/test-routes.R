# In-process tests of the plumber router: auth, validation, limits.
# No fit is started here (the server test does that).

TOKEN <- "test-token-123"

setup_router <- function(ready = TRUE, ...) {
  env <- load_service_env(list(token = TOKEN, ...))
  env$.svc$ready <- ready
  env$.svc$model_status <- if (ready) "ready" else "starting"
  env$.svc$model_path <- "/nonexistent/model.rds"
  list(env = env, pr = make_router(env))
}

auth <- list(Authorization = paste("Bearer", TOKEN))

post_fit <- function(r, body, headers = auth) {
  call_route(r$pr, "POST", "/growth/fit", body, headers)
}

body_with <- function(...) {
  b <- list(rows = small_rows(), n_chains = 2, n_samples = 400, seed = 1)
  extra <- list(...)
  b[names(extra)] <- extra
  as.character(jsonlite::toJSON(b, auto_unbox = TRUE, digits = NA, null = "null", na = "null"))
}

expect_400 <- function(out, field) {
  expect_equal(out$status, 400L, info = out$body)
  expect_equal(out$json$field, field, info = out$body)
  expect_true(is.character(out$json$error) && nzchar(out$json$error))
  expect_true(is.character(out$json$detail) && nzchar(out$json$detail))
}

test_that("healthz and readyz need no token; readyz is 503 before the model is ready", {
  r <- setup_router(ready = FALSE)
  h <- call_route(r$pr, "GET", "/healthz")
  expect_equal(h$status, 200L)
  expect_equal(h$json$status, "ok")
  z <- call_route(r$pr, "GET", "/readyz")
  expect_equal(z$status, 503L)
  expect_false(is.null(z$headers[["Retry-After"]]))
  f <- post_fit(r, body_with())
  expect_equal(f$status, 503L)
  r2 <- setup_router(ready = TRUE)
  expect_equal(call_route(r2$pr, "GET", "/readyz")$status, 200L)
})

test_that("a token is required when R_BRMS_INTERNAL_TOKEN is set", {
  r <- setup_router()
  out <- post_fit(r, body_with(), headers = list())
  expect_equal(out$status, 401L)
  expect_equal(out$json$error, "unauthorized")
  out <- post_fit(r, body_with(), headers = list(Authorization = "Bearer wrong"))
  expect_equal(out$status, 401L)
  out <- post_fit(r, body_with(), headers = list(`X-Internal-Token` = "wrong"))
  expect_equal(out$status, 401L)
  out <- post_fit(r, body_with(), headers = list(Authorization = TOKEN))  # no Bearer
  expect_equal(out$status, 401L)
  # a 404 path is also behind the token
  expect_equal(call_route(r$pr, "GET", "/nope")$status, 401L)
  # the right token (either header) gets past auth: here to a 400
  out <- post_fit(r, "{}", headers = list(`X-Internal-Token` = TOKEN))
  expect_equal(out$status, 400L)
  out <- post_fit(r, "{}", headers = auth)
  expect_equal(out$status, 400L)
  expect_false(grepl(TOKEN, out$body, fixed = TRUE))
})

test_that("no token configured: open (development mode)", {
  env <- load_service_env(list(token = ""))
  env$.svc$ready <- TRUE
  pr <- make_router(env)
  expect_equal(call_route(pr, "POST", "/growth/fit", "{}")$status, 400L)
})

test_that("constant-time token comparison", {
  env <- load_service_env()
  expect_true(env$constant_time_equal("abc", "abc"))
  expect_false(env$constant_time_equal("abc", "abd"))
  expect_false(env$constant_time_equal("abc", "abcd"))
  expect_false(env$constant_time_equal("", "abc"))
})

test_that("malformed or non-object bodies are 400", {
  r <- setup_router()
  expect_400(post_fit(r, "{\"rows\": ["), "body")
  expect_400(post_fit(r, ""), "body")
  expect_400(post_fit(r, "[1,2,3]"), "body")
  expect_400(post_fit(r, "\"text\""), "body")
  expect_400(post_fit(r, as.raw(c(0x7b, 0xff, 0xfe, 0x7d))), "body")
})

test_that("rows are validated", {
  r <- setup_router()
  d <- small_rows()
  expect_400(post_fit(r, "{\"n_chains\": 2}"), "rows")
  expect_400(post_fit(r, "{\"rows\": []}"), "rows")
  expect_400(post_fit(r, "{\"rows\": [1, 2, 3]}"), "rows")
  expect_400(post_fit(r, "{\"rows\": {\"student_id\": \"a\"}}"), "rows")
  expect_400(post_fit(r, body_with(rows = d[, c("student_id", "week")])), "rows.score")
  x <- d; x$student_id[2] <- ""
  expect_400(post_fit(r, body_with(rows = x)), "rows.student_id")
  x <- d; x$student_id <- seq_len(nrow(d))
  expect_400(post_fit(r, body_with(rows = x)), "rows.student_id")
  x <- d; x$week[3] <- -1
  expect_400(post_fit(r, body_with(rows = x)), "rows.week")
  x <- d; x$week[3] <- 1.5
  expect_400(post_fit(r, body_with(rows = x)), "rows.week")
  x <- d; x$week <- as.character(x$week)
  expect_400(post_fit(r, body_with(rows = x)), "rows.week")
  x <- d; x$score[4] <- NA
  expect_400(post_fit(r, body_with(rows = x)), "rows.score")
  x <- d; x$score <- as.character(x$score)
  expect_400(post_fit(r, body_with(rows = x)), "rows.score")
  big <- sub("\"score\":1}", "\"score\":1e999}", body_with(), fixed = TRUE)
  expect_match(big, "1e999", fixed = TRUE)
  expect_400(post_fit(r, big), "rows.score")
  # too few rows / students, duplicates, constant score
  expect_400(post_fit(r, body_with(rows = d[1:2, ])), "rows")
  expect_400(post_fit(r, body_with(rows = d[1:3, ])), "rows")
  x <- d; x$week[2] <- x$week[1]
  out <- post_fit(r, body_with(rows = x))
  expect_400(out, "rows")
  expect_match(out$json$detail, "duplicate")
  x <- d; x$score <- 1
  expect_400(post_fit(r, body_with(rows = x)), "rows.score")
  # nothing was started
  expect_length(ls(r$env$.svc$jobs), 0)
})

test_that("scalar parameters are validated", {
  r <- setup_router()
  for (v in list(0, 9, 2.5, "4", TRUE)) expect_400(post_fit(r, body_with(n_chains = v)), "n_chains")
  for (v in list(199, 20001, "2000", 1000.5)) expect_400(post_fit(r, body_with(n_samples = v)), "n_samples")
  for (v in list(-1, 1.5, "1", 3e9)) expect_400(post_fit(r, body_with(seed = v)), "seed")
  for (v in list(-1, 2.5, "15")) expect_400(post_fit(r, body_with(horizon_week = v)), "horizon_week")
  for (v in list("0.7", TRUE)) expect_400(post_fit(r, body_with(target = v)), "target")
  expect_400(post_fit(r, body_with(lookback_weeks = 0)), "lookback_weeks")
  expect_400(post_fit(r, body_with(), headers = c(auth, list(`Idempotency-Key` = "bad key with spaces"))),
             "Idempotency-Key")
})

test_that("the model is fixed: formula / priors / family fields are refused", {
  r <- setup_router()
  for (k in c("formula", "priors", "prior", "family", "model", "stancode", "Formula")) {
    b <- jsonlite::fromJSON(body_with(), simplifyVector = FALSE)
    b[[k]] <- "score ~ week + (week | student_id) + system('touch /tmp/pwned')"
    out <- post_fit(r, as.character(jsonlite::toJSON(b, auto_unbox = TRUE)))
    expect_400(out, k)
    expect_equal(out$json$error, "model_is_fixed")
  }
  expect_length(ls(r$env$.svc$jobs), 0)
})

test_that("too many rows is 413", {
  r <- setup_router(max_rows = 5L)
  out <- post_fit(r, body_with())
  expect_equal(out$status, 413L)
  expect_equal(out$json$field, "rows")
})

test_that("over the concurrency limit is 429 with Retry-After", {
  r <- setup_router(max_concurrent = 1L, retry_after_s = 17L)
  fake <- new.env()
  fake$status <- "running"; fake$id <- "x"; fake$body_hash <- "h"
  assign("x", fake, envir = r$env$.svc$jobs)
  out <- post_fit(r, body_with())
  expect_equal(out$status, 429L)
  expect_equal(out$headers[["Retry-After"]], "17")
  expect_equal(out$json$error, "too_many_fits")
  # a retry with the key of a running fit but another body is a conflict
  fake2 <- new.env(); fake2$status <- "running"; fake2$id <- "k"; fake2$body_hash <- "other"
  assign("k", fake2, envir = r$env$.svc$jobs)
  out <- post_fit(r, body_with(), headers = c(auth, list(`Idempotency-Key` = "k")))
  expect_equal(out$status, 409L)
})

test_that("a finished fit is replayed for its Idempotency-Key", {
  r <- setup_router()
  body <- body_with()
  job <- new.env()
  job$status <- "done"; job$id <- "key-1"; job$key <- "key-1"
  job$body_hash <- digest::digest(charToRaw(body), algo = "xxhash64", serialize = FALSE)
  job$finished_at <- Sys.time()
  job$result <- list(status = 200L, json = "{\"run_id\":\"brms-20260101-000000\"}")
  assign("key-1", job, envir = r$env$.svc$jobs)
  out <- post_fit(r, body, headers = c(auth, list(`Idempotency-Key` = "key-1")))
  expect_equal(out$status, 200L)
  expect_equal(out$json$run_id, "brms-20260101-000000")
  expect_equal(out$headers[["Idempotent-Replayed"]], "true")
})

test_that("JSON numbers are plain numbers, short vectors stay arrays where required", {
  env <- load_service_env()
  j <- as.character(env$to_json(list(a = 1.5, n = 4L, args = I(2), v = c(0, 3.25),
                                     priors = env$priors_record(1, 2))))
  expect_match(j, "\"a\":1.5", fixed = TRUE)
  expect_match(j, "\"n\":4", fixed = TRUE)
  expect_match(j, "\"args\":[2]", fixed = TRUE)
  expect_match(j, "\"dist\":\"lkj\",\"args\":[2]", fixed = TRUE)
  expect_match(j, "\"args\":[1,5]", fixed = TRUE)
  expect_match(env$to_json(list(x = 1 / 3)), "0.333333333333333", fixed = TRUE)
})

test_that("large bodies are validated in the worker with the same rules", {
  env <- load_service_env()
  run <- function(body, max_rows = 2000000L) {
    f <- tempfile(fileext = ".json"); on.exit(unlink(f))
    writeBin(charToRaw(body), f)
    r <- suppressWarnings(env$fit_worker(model_path = "/nonexistent.rds", params = list(run_id = "x", cores = 1L),
                        body_path = f, max_rows = max_rows))
    c(r, list(parsed = jsonlite::fromJSON(r$json)))
  }
  r <- run("{\"rows\": [")
  expect_equal(r$status, 400L); expect_equal(r$parsed$field, "body")
  r <- run(body_with(n_chains = 99))
  expect_equal(r$status, 400L); expect_equal(r$parsed$field, "n_chains")
  r <- run(body_with(formula = "y ~ x"))
  expect_equal(r$status, 400L); expect_equal(r$parsed$field, "formula")
  r <- run(body_with(), max_rows = 5L)
  expect_equal(r$status, 413L)
  # a valid body reaches the fit; with no model file that is a 500 with JSON
  r <- run(body_with())
  expect_equal(r$status, 500L); expect_equal(r$parsed$error, "fit_failed")
})

test_that("a large body goes to a worker; a non-object is refused at once", {
  r <- setup_router(inline_validate_bytes = 10L)
  out <- post_fit(r, "[1, 2, 3]")
  expect_400(out, "body")
  expect_length(ls(r$env$.svc$jobs), 0)
})

test_that("the Bearer scheme is matched in any case (RFC 9110 11.1)", {
  r <- setup_router()
  for (scheme in c("Bearer", "bearer", "BEARER")) {
    out <- post_fit(r, "{}", headers = list(Authorization = paste(scheme, TOKEN)))
    expect_equal(out$status, 400L, info = scheme)  # past auth, to the body's check
  }
})
