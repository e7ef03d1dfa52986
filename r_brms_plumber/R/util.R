# Small helpers: configuration, JSON, responses, logging.

env_int <- function(name, default, min = -Inf, max = Inf) {
  v <- Sys.getenv(name, "")
  if (!nzchar(v)) return(as.integer(default))
  x <- suppressWarnings(as.numeric(v))
  if (length(x) != 1 || is.na(x) || x != round(x) || x < min || x > max) {
    stop(sprintf("environment variable %s must be an integer in [%s, %s], got '%s'",
                 name, min, max, v))
  }
  as.integer(x)
}

env_num <- function(name, default, min = -Inf) {
  v <- Sys.getenv(name, "")
  if (!nzchar(v)) return(default)
  x <- suppressWarnings(as.numeric(v))
  if (length(x) != 1 || is.na(x) || x < min) {
    stop(sprintf("environment variable %s must be a number >= %s, got '%s'", name, min, v))
  }
  x
}

# Service configuration, read once at start.
service_config <- function() {
  list(
    token = trimws(Sys.getenv("R_BRMS_INTERNAL_TOKEN", "")),
    max_concurrent = env_int("R_BRMS_MAX_CONCURRENT_FITS", 1L, min = 1L),
    # defaults a pod of a few GiB serves: parsing costs ~22x the body; 120,000 rows are
    # 10,000 students x 12 weeks, beyond what brms fits in an hour on a few cores
    max_rows = env_int("R_BRMS_MAX_ROWS", 120000L, min = 3L),
    max_body_bytes = env_num("R_BRMS_MAX_BODY_BYTES", 16777216, min = 1),
    # the R heap of a fit's worker process (mem.maxVSize, mem.maxNSize), MiB each
    worker_max_mb = env_int("R_BRMS_WORKER_MAX_MB", 6144L, min = 128L),
    fit_timeout_s = env_int("R_BRMS_FIT_TIMEOUT_SECS", 3600L, min = 1L),
    # a keyed fit whose clients have all gone is stopped after this long (a retry with the key
    # reattaches within it)
    orphan_grace_s = env_int("R_BRMS_ORPHAN_GRACE_SECS", 120L, min = 0L),
    idempotency_ttl_s = env_int("R_BRMS_IDEMPOTENCY_TTL_SECS", 900L, min = 0L),
    retry_after_s = env_int("R_BRMS_RETRY_AFTER_SECS", 30L, min = 1L),
    # bodies up to this size are validated in the server process (fast);
    # larger ones in the fit's worker process, so the event loop never blocks
    inline_validate_bytes = env_int("R_BRMS_INLINE_VALIDATE_BYTES", 1048576L, min = 0L),
    fit_cores = env_int("R_BRMS_FIT_CORES",
                        max(1L, parallel::detectCores(logical = TRUE), na.rm = TRUE),
                        min = 1L),
    score_range = env_range("BRMS_SCORE_RANGE", DEFAULT_SCORE_RANGE),
    cache_dir = default_cache_dir(),
    # the front (R/front.R): nginx before httpuv, for the read timeouts httpuv lacks
    front = Sys.getenv("R_BRMS_FRONT", "nginx"),
    body_timeout_s = env_int("R_BRMS_BODY_TIMEOUT_SECS", 30L, min = 1L)
  )
}

# "lo,hi" (the Python settings' format), finite, lo < hi.
env_range <- function(name, default) {
  v <- Sys.getenv(name, "")
  if (!nzchar(v)) return(default)
  x <- suppressWarnings(as.numeric(strsplit(v, ",", fixed = TRUE)[[1]]))
  if (length(x) != 2 || anyNA(x) || any(!is.finite(x)) || x[1] >= x[2]) {
    stop(sprintf("environment variable %s must be two finite numbers lo,hi with lo < hi, got '%s'", name, v))
  }
  x
}

LOOPBACK_HOSTS <- c("127.0.0.1", "::1", "localhost")

# Refuse to start open to the network: a token is required, unless the service is started
# for development (--allow-no-token) and bound to the loopback interface only.
check_startup_config <- function(cfg, host, allow_no_token = FALSE) {
  if (nzchar(cfg$token)) return(invisible(TRUE))
  if (!isTRUE(allow_no_token)) {
    stop("R_BRMS_INTERNAL_TOKEN is not set: refusing to serve fits without a token ",
         "(for local development only: --allow-no-token with --host 127.0.0.1)", call. = FALSE)
  }
  if (!host %in% LOOPBACK_HOSTS) {
    stop(sprintf("--allow-no-token serves only 127.0.0.1 / ::1 / localhost, not %s", host), call. = FALSE)
  }
  invisible(TRUE)
}

to_json <- function(x) {
  jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA, null = "null",
                   na = "null", dataframe = "rows")
}

# Write a JSON response and return the response object (plumber then skips
# its own serializer).
json_response <- function(res, status, body, headers = list()) {
  res$status <- as.integer(status)
  res$setHeader("Content-Type", "application/json")
  for (h in names(headers)) res$setHeader(h, as.character(headers[[h]]))
  res$body <- if (inherits(body, "json")) as.character(body) else as.character(to_json(body))
  res
}

error_body <- function(error, field = NULL, detail = NULL) {
  list(error = error, field = field, detail = detail)
}

error_response <- function(res, status, error, field = NULL, detail = NULL,
                           headers = list()) {
  json_response(res, status, error_body(error, field, detail), headers)
}

log_line <- function(...) {
  if (isTRUE(getOption("r_brms_plumber.quiet"))) return(invisible())
  cat(format(Sys.time(), "%Y-%m-%dT%H:%M:%OS3Z", tz = "UTC"), " ",
      sprintf(...), "\n", sep = "", file = stderr())
}

`%||%` <- function(a, b) if (is.null(a)) b else a
