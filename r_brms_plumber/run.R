#!/usr/bin/env Rscript
# Entry point of the growth-model service.
#
#   r_brms_plumber/serve.sh [--port 8080] [--host 0.0.0.0] [--allow-no-token]
#
# (serve.sh runs this file and turns SIGTERM into a stop file, GROWTH_R_STOP_FILE, which shuts
# the service down gracefully: 503 to in-flight fits, their processes killed; so does SIGINT.)
#
# Environment (all optional):
#   R_BRMS_INTERNAL_TOKEN         required token for every route but /healthz, /readyz; without
#                                 it the service does not start (but with --allow-no-token,
#                                 for development, bound to 127.0.0.1 only)
#   BRMS_SCORE_RANGE              -1000,1000  scores outside: 400 (the Python side's range)
#   R_BRMS_MAX_CONCURRENT_FITS    1      fits beyond this get 429 + Retry-After
#   R_BRMS_MAX_ROWS               120000 more rows: 413 (estimated before parsing)
#   R_BRMS_MAX_BODY_BYTES         16 MiB larger bodies: 413, before the body is read
#   R_BRMS_WORKER_MAX_MB          6144   vector heap of a fit's worker (mem.maxVSize)
#   R_BRMS_MODEL_CACHE            cache dir of the compiled model
#                                 (default tools::R_user_dir("r_brms_plumber", "cache"))
#   R_BRMS_FIT_TIMEOUT_SECS       3600   a longer fit is stopped (500)
#   R_BRMS_IDEMPOTENCY_TTL_SECS   900    how long a finished fit is kept for its Idempotency-Key
#   R_BRMS_RETRY_AFTER_SECS       30     Retry-After value on 429/503
#   R_BRMS_FIT_CORES              number of cores; parallel chains per fit
#   R_BRMS_INLINE_VALIDATE_BYTES  1 MiB  larger bodies are parsed in the worker process
#   R_BRMS_FRONT                  nginx  nginx before httpuv (read timeouts; R/front.R) | off
#   R_BRMS_BODY_TIMEOUT_SECS      30     a client silent this long (headers or body) is closed
#   R_BRMS_HOST / R_BRMS_PORT     defaults for --host / --port

local({
  args <- commandArgs(trailingOnly = TRUE)
  get_arg <- function(name, default) {
    i <- match(name, args)
    if (!is.na(i) && i < length(args)) return(args[i + 1])
    hit <- grep(paste0("^", name, "="), args, value = TRUE)
    if (length(hit)) return(sub(paste0("^", name, "="), "", hit[1]))
    default
  }
  file_arg <- grep("^--file=", commandArgs(FALSE), value = TRUE)
  here <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else getwd()

  host <- get_arg("--host", Sys.getenv("R_BRMS_HOST", "0.0.0.0"))
  port <- as.integer(get_arg("--port", Sys.getenv("R_BRMS_PORT", "8080")))
  if (is.na(port) || port < 1 || port > 65535) stop("--port must be 1..65535")
  allow_no_token <- "--allow-no-token" %in% args

  suppressPackageStartupMessages({
    library(plumber); library(promises)
  })
  app_env <- new.env(parent = globalenv())
  for (f in list.files(file.path(here, "R"), pattern = "[.]R$", full.names = TRUE)) {
    sys.source(f, envir = app_env)
  }
  cfg <- app_env$service_config()
  app_env$check_startup_config(cfg, host, allow_no_token)
  options(plumber.maxRequestSize = cfg$max_body_bytes)
  st <- app_env$new_service_state(cfg, r_dir = file.path(here, "R"))
  app_env$.svc <- st

  pr <- plumber::pr(file.path(here, "plumber.R"), envir = app_env)
  # the body-size check before the body is read, with the JSON error shape
  unlockBinding("onHeaders", pr)
  pr$onHeaders <- app_env$json_on_headers(cfg$max_body_bytes)
  lockBinding("onHeaders", pr)
  app_env$log_line("r_brms_plumber: listening on %s:%d (token %s, max concurrent fits %d, max rows %d)",
                   host, port, if (nzchar(cfg$token)) "required" else "NOT required",
                   cfg$max_concurrent, cfg$max_rows)
  app_env$service_start(st)
  # httpuv serves the router; SIGTERM (serve.sh's stop file) or an interrupt (SIGINT) shuts
  # down gracefully (serve_until_interrupted) instead of dropping in-flight requests
  old_wd <- setwd(here)
  # nginx on host:port before httpuv on a loopback port, for the read timeouts (R/front.R)
  front <- app_env$start_front(cfg, host, port)
  inner_host <- if (is.null(front)) host else "127.0.0.1"
  inner_port <- if (is.null(front)) port else front$inner_port
  st$listen_port <- inner_port  # a fit whose client went away is found by this port (jobs.R)
  server <- httpuv::startServer(inner_host, inner_port, pr)
  if (!is.null(front)) {
    app_env$log_line("front: nginx on %s:%d (read timeout %d s) -> httpuv on 127.0.0.1:%d",
                     host, port, cfg$body_timeout_s, inner_port)
  }
  tryCatch(app_env$serve_until_interrupted(st, server), finally = app_env$stop_front(front))
  setwd(old_wd)
})
