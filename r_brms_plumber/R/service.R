# HTTP handlers (plumber.R only wires them to routes).

handle_healthz <- function(req, res, st) {
  json_response(res, 200L, list(status = "ok"))
}

# The probe answers with its status only; versions, the model key, the fits running and a
# failed compile's message only to a caller with the token.
handle_readyz <- function(req, res, st) {
  details <- token_ok(req, st$config$token)
  if (isTRUE(st$ready)) {
    body <- list(status = "ready")
    if (details) {
      body <- c(body, list(engine_version = engine_version_string(engine_versions_light()),
                           model_key = st$model_key, running_fits = length(running_jobs(st)),
                           max_concurrent_fits = st$config$max_concurrent))
    }
    return(json_response(res, 200L, body))
  }
  failed <- identical(st$model_status, "failed")
  json_response(res, 503L, list(
    status = st$model_status,
    error = if (failed) "model_unavailable" else "model_not_ready",
    detail = if (failed && details) substr(st$model_error %||% "", 1, 1000)
             else if (failed) "the model failed to load or compile"
             else "the model is being loaded or compiled"),
    headers = list(`Retry-After` = st$config$retry_after_s))
}

# Versions without loading brms/rstan in the server process.
engine_versions_light <- function() {
  list(brms = as.character(utils::packageVersion("brms")),
       rstan = as.character(utils::packageVersion("rstan")))
}

# Auth filter logic: NULL when the request may proceed, else a 401 response.
auth_check <- function(req, res, st) {
  if (isTRUE(req$PATH_INFO %in% PUBLIC_PATHS)) return(NULL)
  if (token_ok(req, st$config$token)) return(NULL)
  error_response(res, 401L, "unauthorized", NULL,
                 "missing or invalid internal token (Authorization: Bearer <t> or X-Internal-Token)",
                 headers = list(`WWW-Authenticate` = "Bearer"))
}

# A safe alphabet: letters and digits first (a leading "." would hide the job from ls()),
# then also . _ : - (a UUID, a run id, a hash fit).
IDEMPOTENCY_KEY_RE <- "^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$"

handle_fit <- function(req, res, st) {
  cfg <- st$config
  if (isTRUE(st$stopping)) {
    return(error_response(res, 503L, "shutting_down", NULL, "the service is shutting down; retry",
                          headers = list(`Retry-After` = 1L)))
  }
  if (!isTRUE(st$ready)) {
    status <- if (identical(st$model_status, "failed")) "model_unavailable" else "model_not_ready"
    return(error_response(res, 503L, status, NULL,
                          "the model is not ready yet; see GET /readyz",
                          headers = list(`Retry-After` = cfg$retry_after_s)))
  }
  key <- req$HTTP_IDEMPOTENCY_KEY
  if (!is.null(key) && !grepl(IDEMPOTENCY_KEY_RE, key)) {
    return(error_response(res, 400L, "invalid_request", "Idempotency-Key",
                          "Idempotency-Key must be 1..255 of A-Z a-z 0-9 . _ : -, starting with a letter or digit"))
  }
  body_raw <- req$bodyRaw
  if (is.null(body_raw)) body_raw <- raw(0)
  body_hash <- digest::digest(body_raw, algo = "xxhash64", serialize = FALSE)

  purge_jobs(st)
  if (!is.null(key) && exists(key, envir = st$jobs, inherits = FALSE)) {
    job <- get(key, envir = st$jobs, inherits = FALSE)
    if (!identical(job$body_hash, body_hash)) {
      return(error_response(res, 409L, "idempotency_key_conflict", "Idempotency-Key",
                            "this Idempotency-Key was used with a different request body"))
    }
    if (identical(job$status, "running")) {
      attach_client(job, client_of(req, st))
      log_line("fit %s: request attached to the running fit (Idempotency-Key)", job$run_id)
      return(respond_when_done(job, res, replayed = TRUE))
    }
    return(json_response(res, job$result$status, structure(job$result$json, class = "json"),
                         headers = list(`Idempotent-Replayed` = "true")))
  }

  # before any parse: the rows a body can hold (each row has one "score" key; counted in C)
  n_rows <- length(grepRaw('"score"', body_raw, fixed = TRUE, all = TRUE))
  if (n_rows > cfg$max_rows) {
    return(error_response(res, 413L, "payload_too_large", "rows", sprintf(
      "about %d rows exceed the limit of %d (R_BRMS_MAX_ROWS)", n_rows, cfg$max_rows)))
  }
  inline <- length(body_raw) <= cfg$inline_validate_bytes
  if (inline) {
    v <- validate_fit_request(body_raw, cfg$max_rows, cfg$score_range)
    if (!isTRUE(v$ok)) return(error_response(res, v$status, v$error, v$field, v$detail))
  } else {
    # cheap shape check only; the worker parses and validates the body
    if (!looks_like_json_object(body_raw)) {
      return(error_response(res, 400L, "malformed_json", "body",
                            "the request body must be a JSON object"))
    }
  }
  if (length(running_jobs(st)) >= cfg$max_concurrent) {
    return(error_response(res, 429L, "too_many_fits", NULL,
                          sprintf("%d fit(s) already running (R_BRMS_MAX_CONCURRENT_FITS = %d); retry later",
                                  length(running_jobs(st)), cfg$max_concurrent),
                          headers = list(`Retry-After` = cfg$retry_after_s)))
  }
  client <- client_of(req, st)
  job <- if (inline) {
    start_fit_job(st, key = key, body_hash = body_hash, data = v$data, params = v$params, client = client)
  } else {
    start_fit_job(st, key = key, body_hash = body_hash, body_raw = body_raw, client = client)
  }
  respond_when_done(job, res)
}

# The first byte after leading whitespace is '{'. Looks at the first 4 KiB only: a scan of
# the whole body in R vectors cost seconds and ~17x the body for tens of MiB.
looks_like_json_object <- function(body_raw) {
  head <- body_raw[seq_len(min(length(body_raw), 4096L))]
  i <- which(!head %in% as.raw(c(0x20, 0x09, 0x0a, 0x0d)))
  length(i) > 0 && head[i[1]] == as.raw(0x7b)  # '{'
}

# httpuv's onHeaders for the router: a body over R_BRMS_MAX_BODY_BYTES (by Content-Length;
# a chunked upload has none and counts as too large) is refused before it is read, with the
# service's JSON error shape (plumber's own answer is text/plain).
json_on_headers <- function(max_bytes) {
  function(req) {
    size <- if (length(req$CONTENT_LENGTH) > 0) suppressWarnings(as.numeric(req$CONTENT_LENGTH))
            else if (length(req$HTTP_TRANSFER_ENCODING) > 0) Inf else 0
    if (is.na(size) || size > max_bytes) {
      return(list(status = 413L, headers = list(`Content-Type` = "application/json"),
                  body = as.character(to_json(error_body("payload_too_large", "body", sprintf(
                    "the body exceeds R_BRMS_MAX_BODY_BYTES = %.0f bytes (or has no Content-Length)",
                    max_bytes))))))
    }
    NULL
  }
}

respond_when_done <- function(job, res, replayed = FALSE) {
  promises::then(job_promise(job), function(r) {
    json_response(res, r$status, structure(r$json, class = "json"),
                  headers = if (replayed) list(`Idempotent-Replayed` = "true") else list())
  })
}

# plumber error/404 handlers and request logging.
handle_error <- function(req, res, err) {
  log_line("error in %s %s: %s", req$REQUEST_METHOD, req$PATH_INFO,
           substr(conditionMessage(err), 1, 500))
  res$status <- 500L
  # a "json" string: sent verbatim by the routes' serializer (json_verbatim)
  # and by plumber's last-resort path alike
  to_json(error_body("internal_error", NULL, "unexpected server error"))
}

handle_404 <- function(req, res) {
  error_response(res, 404L, "not_found", NULL, sprintf("no route %s %s",
                 req$REQUEST_METHOD, substr(req$PATH_INFO %||% "", 1, 200)))
}

request_log_hooks <- function() {
  list(
    preroute = function(data, req, res) {
      data$t0 <- Sys.time()
    },
    postroute = function(data, req, res, value) {
      dur <- as.numeric(difftime(Sys.time(), data$t0 %||% Sys.time(), units = "secs"))
      status <- if (inherits(value, "PlumberResponse")) value$status else res$status
      log_line("%s %s %s %.3fs", req$REQUEST_METHOD, substr(req$PATH_INFO %||% "", 1, 200),
               status, dur)
      value
    }
  )
}
