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
    max_rows = env_int("R_BRMS_MAX_ROWS", 2000000L, min = 3L),
    max_body_bytes = env_num("R_BRMS_MAX_BODY_BYTES", 1073741824, min = 1),
    fit_timeout_s = env_int("R_BRMS_FIT_TIMEOUT_SECS", 3600L, min = 1L),
    idempotency_ttl_s = env_int("R_BRMS_IDEMPOTENCY_TTL_SECS", 900L, min = 0L),
    retry_after_s = env_int("R_BRMS_RETRY_AFTER_SECS", 30L, min = 1L),
    # bodies up to this size are validated in the server process (fast);
    # larger ones in the fit's worker process, so the event loop never blocks
    inline_validate_bytes = env_int("R_BRMS_INLINE_VALIDATE_BYTES", 1048576L, min = 0L),
    fit_cores = env_int("R_BRMS_FIT_CORES",
                        max(1L, parallel::detectCores(logical = TRUE), na.rm = TRUE),
                        min = 1L),
    cache_dir = default_cache_dir()
  )
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
