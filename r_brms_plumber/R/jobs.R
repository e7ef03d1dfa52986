# Background fit jobs, the concurrency limit and idempotency.
#
# The plumber process never fits: each fit runs in its own callr::r_bg R
# process; a `later` poller watches the processes and resolves the promises
# the HTTP handlers returned, so the event loop keeps answering /healthz.

new_service_state <- function(config = service_config(), r_dir = NULL) {
  st <- new.env(parent = emptyenv())
  st$config <- config
  st$r_dir <- normalizePath(r_dir %||% getOption("r_brms_plumber.r_dir", "R"),
                            mustWork = FALSE)
  st$ready <- FALSE
  st$model_status <- "starting"  # starting | ready | failed
  st$model_error <- NULL
  st$model_path <- NULL
  st$model_key <- NULL
  st$startup <- NULL
  st$jobs <- new.env(parent = emptyenv())
  st$polling <- FALSE
  st$last_run_time <- 0
  st
}

start_bg <- function(st, fn, args) {
  logs <- list(stdout = tempfile("rbrms_out_", fileext = ".log"),
               stderr = tempfile("rbrms_err_", fileext = ".log"))
  proc <- callr::r_bg(
    bg_entry, args = list(st$r_dir, WORKER_FILES, fn, args),
    # supervise: the worker dies with the service; cleanup_tree: the chains it forks die
    # with the worker's handle (a process tree is found by processx's environment marker,
    # so orphans of a killed worker are found too)
    package = FALSE, supervise = TRUE, cleanup_tree = TRUE,
    stdout = logs$stdout, stderr = logs$stderr,
    # the internal token is never handed to worker processes
    env = c(callr::rcmd_safe_env(), R_BRMS_INTERNAL_TOKEN = "")
  )
  list(proc = proc, logs = logs)
}

tail_file <- function(path, n = 20) {
  if (is.null(path) || !file.exists(path)) return("")
  x <- tryCatch(readLines(path, warn = FALSE), error = function(e) character(0))
  paste(utils::tail(x, n), collapse = "\n")
}

cleanup_logs <- function(logs) unlink(unlist(logs))

# Start loading/compiling the model in a background process (at service start).
service_start <- function(st) {
  st$startup_attempts <- (st$startup_attempts %||% 0L) + 1L
  st$model_status <- "starting"
  st$startup <- start_bg(st, "compile_worker", list(cache_dir = st$config$cache_dir))
  st$startup$t0 <- Sys.time()
  log_line("model: loading from cache or compiling (cache dir %s)", st$config$cache_dir)
  ensure_polling(st)
  invisible(st)
}

check_startup <- function(st) {
  s <- st$startup
  if (is.null(s) || s$proc$is_alive()) return(invisible())
  secs <- as.numeric(difftime(Sys.time(), s$t0, units = "secs"))
  r <- tryCatch(s$proc$get_result(), error = function(e) e)
  if (inherits(r, "error")) {
    st$model_status <- "failed"
    st$model_error <- paste(conditionMessage(r), tail_file(s$logs$stderr), sep = "\n")
    log_line("model: FAILED after %.1fs (attempt %d): %s", secs, st$startup_attempts,
             substr(st$model_error, 1, 2000))
    if (st$startup_attempts < 3) {
      log_line("model: retrying in 60 s")
      later::later(function() service_start(st), 60)
    }
  } else {
    st$model_path <- r$path
    st$model_key <- r$key
    st$model_status <- "ready"
    st$ready <- TRUE
    log_line("model: ready in %.1fs (%s, key %s, %s)", secs,
             if (isTRUE(r$compiled)) "compiled" else "cache hit", r$key, r$path)
  }
  cleanup_logs(s$logs)
  st$startup <- NULL
  invisible()
}

# Every job, whatever its name (all.names: ls() alone hides names that start with ".").
job_ids <- function(st) ls(st$jobs, all.names = TRUE, sorted = FALSE)

running_jobs <- function(st) {
  ids <- job_ids(st)
  ids[vapply(ids, function(i) identical(st$jobs[[i]]$status, "running"), logical(1))]
}

next_run_id <- function(st) {
  t <- max(floor(as.numeric(Sys.time())), st$last_run_time + 1)
  st$last_run_time <- t
  format(as.POSIXct(t, origin = "1970-01-01", tz = "UTC"), "brms-%Y%m%d-%H%M%S", tz = "UTC")
}

# Start a fit job. `data` + `params` (validated here) or `body_raw` (large
# body, validated in the worker).
start_fit_job <- function(st, key = NULL, body_hash = NULL, data = NULL,
                          params = list(), body_raw = NULL, client = NULL) {
  id <- key %||% paste0("anon-", digest::digest(list(Sys.time(), stats::runif(1)), algo = "xxhash64"))
  params$run_id <- next_run_id(st)
  params$cores <- st$config$fit_cores
  body_path <- NULL
  if (!is.null(body_raw)) {
    body_path <- tempfile("rbrms_body_", fileext = ".json")
    writeBin(body_raw, body_path)
  }
  bg <- start_bg(st, "fit_worker", list(
    model_path = st$model_path, params = params, data = data,
    body_path = body_path, max_rows = st$config$max_rows, score_range = st$config$score_range,
    max_mb = st$config$worker_max_mb))
  job <- new.env(parent = emptyenv())
  job$id <- id
  job$key <- key
  job$body_hash <- body_hash
  job$run_id <- params$run_id
  job$proc <- bg$proc
  job$logs <- bg$logs
  job$body_path <- body_path
  job$status <- "running"
  job$started <- Sys.time()
  job$waiters <- list()
  job$result <- NULL
  job$finished_at <- NULL
  job$keyed <- !is.null(key)
  attach_client(job, client)
  assign(id, job, envir = st$jobs)
  log_line("fit %s: started (%s)", job$run_id,
           if (is.null(data)) "large body, validated in worker" else sprintf("%d rows", nrow(data)))
  ensure_polling(st)
  job
}

finish_job <- function(st, job, result) {
  job$result <- result
  job$status <- if (identical(as.integer(result$status), 200L)) "done" else "failed"
  job$finished_at <- Sys.time()
  job$proc <- NULL
  cleanup_logs(job$logs)
  if (!is.null(job$body_path)) unlink(job$body_path)
  secs <- as.numeric(difftime(job$finished_at, job$started, units = "secs"))
  if (job$status == "done") {
    log_line("fit %s: done in %.1fs", job$run_id, secs)
  } else {
    # 4xx details may quote request content (e.g. a student id): log only the
    # error code and field; 5xx details (sampler / R errors) are logged.
    e <- tryCatch(jsonlite::fromJSON(result$json), error = function(e) list())
    log_line("fit %s: status %d after %.1fs: %s%s%s", job$run_id, as.integer(result$status), secs,
             e$error %||% "error", if (is.null(e$field)) "" else paste0(" field=", e$field),
             if (as.integer(result$status) >= 500) paste0(": ", substr(paste(e$detail, collapse = " "), 1, 300)) else "")
  }
  # Anonymous jobs and failures are not kept: a retry with the same key
  # after a failure starts a new fit. Successes with a key are kept for the
  # idempotency window.
  if (is.null(job$key) || job$status != "done") rm(list = job$id, envir = st$jobs)
  waiters <- job$waiters
  job$waiters <- list()
  for (w in waiters) w(result)
  invisible()
}

check_job <- function(st, job) {
  if (!identical(job$status, "running")) return(invisible())
  p <- job$proc
  if (p$is_alive() && client_gone(job, grace_s = if (isTRUE(job$keyed)) st$config$orphan_grace_s else 0)) {
    tryCatch(p$kill_tree(), error = function(e) NULL)
    log_line("fit %s: %s: stopped", job$run_id, if (isTRUE(job$keyed))
      sprintf("no client has waited for it (or reattached with its key) for %d s", st$config$orphan_grace_s)
      else "its client went away and no Idempotency-Key can reattach to it")
    finish_job(st, job, list(status = 499L, json = as.character(to_json(error_body(
      "client_closed_request", NULL, "the client closed the connection before the fit ended")))))
    return(invisible())
  }
  if (p$is_alive()) {
    el <- as.numeric(difftime(Sys.time(), job$started, units = "secs"))
    if (el > st$config$fit_timeout_s) {
      p$kill_tree()
      finish_job(st, job, list(status = 500L, json = as.character(to_json(error_body(
        "fit_timeout", NULL, sprintf("the fit exceeded R_BRMS_FIT_TIMEOUT_SECS = %d s and was stopped",
                                     st$config$fit_timeout_s))))))
    }
    return(invisible())
  }
  # the worker is gone (done, or killed: the OOM killer's kill -9 leaves its chains running)
  tryCatch(p$kill_tree(), error = function(e) NULL)
  r <- tryCatch(p$get_result(), error = function(e) e)
  if (inherits(r, "error") || is.null(r$status) || is.null(r$json)) {
    msg <- if (inherits(r, "error")) conditionMessage(r) else "worker returned no result"
    err <- tail_file(job$logs$stderr, 5)
    r <- list(status = 500L, json = as.character(to_json(error_body(
      "fit_failed", NULL, substr(paste(msg, err, sep = "\n"), 1, 2000)))))
  }
  finish_job(st, job, r)
}

# --- clients that went away --------------------------------------------------------------------

# A fit without an Idempotency-Key is answered only on the connection that asked for it: once
# that connection is gone (the client disconnected, or gave up), nobody can ever get the answer,
# so the fit is stopped and its slot freed. httpuv does not tell R that a connection closed;
# Linux's /proc/net/tcp and tcp6 do: the (server port, client port) pair is no longer
# ESTABLISHED. Where those files cannot be read, a connection counts as alive (the fit runs to
# its end, as before), and a port pair that matches any established socket counts as alive too:
# the check errs towards finishing a fit, never towards stopping one a client still waits for.
tcp_established <- function(local_port, remote_port, files = c("/proc/net/tcp", "/proc/net/tcp6")) {
  readable <- FALSE
  for (f in files) {
    lines <- tryCatch(suppressWarnings(readLines(f, warn = FALSE)), error = function(e) NULL)
    if (is.null(lines)) next
    readable <- TRUE
    x <- strsplit(trimws(lines[-1]), "[[:space:]]+")
    x <- x[lengths(x) >= 4]
    if (!length(x)) next
    port_of <- function(k) strtoi(sub(".*:", "", vapply(x, `[`, "", k)), 16L)
    state <- vapply(x, `[`, "", 4)
    if (any(port_of(2) == local_port & port_of(3) == remote_port & state == "01", na.rm = TRUE)) return(TRUE)
  }
  !readable
}

# The client of a request without a key: the service's listening port and the client's port.
client_of <- function(req, st) {
  rp <- suppressWarnings(as.integer(req$REMOTE_PORT %||% NA))
  lp <- st$listen_port
  if (is.null(lp) || is.na(rp)) return(NULL)
  list(local_port = as.integer(lp), remote_port = rp)
}

# A client that waits for the job's answer: the one that started it, or one that reattached with
# its Idempotency-Key (NULL: its port is not known, and the job is never stopped on a guess).
attach_client <- function(job, client) {
  if (is.null(job$clients)) job$clients <- list()
  if (is.null(job$client_checked)) job$client_checked <- Sys.time()
  if (is.null(client)) {
    job$unknown_client <- TRUE
    return(invisible(job))
  }
  job$clients <- c(job$clients, list(client))
  job$orphan_since <- NULL
  invisible(job)
}

# TRUE when nobody can get the job's answer any more: every client's connection is gone (checked
# at most every `every_s`), for `grace_s` (a keyed fit: a client that timed out may retry with
# the key and reattach; one that gave up never comes back, and the fit would hold its slot until
# R_BRMS_FIT_TIMEOUT_SECS).
client_gone <- function(job, every_s = 1, grace_s = 0) {
  if (isTRUE(job$unknown_client) || !length(job$clients) && is.null(job$orphan_since)) return(FALSE)
  if (as.numeric(difftime(Sys.time(), job$client_checked, units = "secs")) < every_s) return(FALSE)
  job$client_checked <- Sys.time()
  alive <- vapply(job$clients, function(c) tcp_established(c$local_port, c$remote_port), logical(1))
  job$clients <- job$clients[alive]
  if (any(alive)) {
    job$orphan_since <- NULL
    return(FALSE)
  }
  if (is.null(job$orphan_since)) job$orphan_since <- Sys.time()
  as.numeric(difftime(Sys.time(), job$orphan_since, units = "secs")) >= grace_s
}

purge_jobs <- function(st) {
  ttl <- st$config$idempotency_ttl_s
  for (id in job_ids(st)) {
    j <- st$jobs[[id]]
    if (!identical(j$status, "running") && !is.null(j$finished_at) &&
        as.numeric(difftime(Sys.time(), j$finished_at, units = "secs")) > ttl) {
      rm(list = id, envir = st$jobs)
    }
  }
}

poll_once <- function(st) {
  check_startup(st)
  for (id in running_jobs(st)) check_job(st, st$jobs[[id]])
  purge_jobs(st)
}

ensure_polling <- function(st, interval = 0.2) {
  if (isTRUE(st$polling)) return(invisible())
  st$polling <- TRUE
  tick <- function() {
    tryCatch(poll_once(st), error = function(e) log_line("poller error: %s", conditionMessage(e)))
    if (!is.null(st$startup) || length(running_jobs(st)) > 0) {
      later::later(tick, interval)
    } else {
      st$polling <- FALSE
    }
  }
  later::later(tick, interval)
  invisible()
}

# A promise for the job's result (list(status, json)).
job_promise <- function(job) {
  promises::promise(function(resolve, reject) {
    if (!is.null(job$result)) resolve(job$result) else job$waiters <- c(job$waiters, list(resolve))
  })
}


# --- shutdown (SIGTERM, via serve.sh's stop file; or SIGINT) --------------------------------------

# Stop taking work, answer every running fit's requests with 503 shutting_down (a client
# retries elsewhere with its Idempotency-Key), kill the fits' process trees, drop temp files.
begin_shutdown <- function(st) {
  st$stopping <- TRUE
  st$ready <- FALSE
  ids <- running_jobs(st)
  log_line("shutdown: stopping; %d running fit(s) answered 503 and stopped", length(ids))
  for (id in ids) {
    job <- st$jobs[[id]]
    tryCatch(job$proc$kill_tree(), error = function(e) NULL)
    finish_job(st, job, list(status = 503L, json = as.character(to_json(error_body(
      "shutting_down", NULL, "the service is shutting down; retry (another replica will take the fit)")))))
  }
  invisible(length(ids))
}

# The service loop: httpuv serves until serve.sh's stop file exists (its SIGTERM, looked for
# after every poll of at most 250 ms) or an interrupt (SIGINT) arrives, then begin_shutdown, a
# short drain so the 503s are written, and the server stops. The stop file, not an interrupt,
# carries SIGTERM: an interrupt that arrives while httpuv runs a request's handler is lost.
serve_until_interrupted <- function(st, server, drain_s = 2, stop_file = Sys.getenv("GROWTH_R_STOP_FILE")) {
  repeat {
    stop_now <- tryCatch({
      httpuv::service(250)
      nzchar(stop_file) && file.exists(stop_file)
    }, interrupt = function(e) TRUE)
    if (stop_now) break
  }
  begin_shutdown(st)
  t_end <- Sys.time() + drain_s
  while (Sys.time() < t_end) tryCatch(httpuv::service(50), interrupt = function(e) NULL)
  httpuv::stopServer(server)
  log_line("shutdown: done")
  invisible()
}
