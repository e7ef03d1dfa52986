# Code that runs inside background R processes (callr::r_bg). These
# functions must be self-contained: they receive the R/ directory and source
# it into the fresh process.

WORKER_FILES <- c("util.R", "model.R", "validate.R", "fit.R", "worker.R")

# The function handed to callr::r_bg. callr resets its environment to the
# child's global environment, so it may only use its arguments and base R:
# it sources the service's R files, then calls the named worker.
bg_entry <- function(r_dir, files, fn, args) {
  for (f in files) source(file.path(r_dir, f), local = globalenv())
  do.call(fn, args, envir = globalenv())
}

# Compile (or load from the disk cache) the template model.
compile_worker <- function(cache_dir) {
  ensure_compiled_model(cache_dir, verbose = TRUE)
}

# One fit. Either `data` (already validated in the server process) or
# `body_path` (a large body, parsed and validated here so the server's event
# loop never blocks on it). Returns list(status, json).
fit_worker <- function(model_path, params, data = NULL, body_path = NULL,
                       max_rows = 120000L, score_range = DEFAULT_SCORE_RANGE,
                       max_mb = NULL) {
  # a cap on this process's vector heap: a body or fit too large fails here, with an R error
  # the service answers as a 500, instead of the pod's OOM killer taking the whole service
  # (R's vector heap and its cons cells, each to max_mb; C++ memory of the sampler is not
  # counted, which the pod's limit bounds)
  if (!is.null(max_mb)) {
    mem.maxVSize(max_mb)
    mem.maxNSize(floor(max_mb * 2^20 / 56))  # a cons cell is 56 bytes on 64-bit R
  }
  tryCatch({
    if (!is.null(body_path)) {
      raw <- readBin(body_path, what = "raw", n = file.size(body_path))
      v <- validate_fit_request(raw, max_rows, score_range)
      rm(raw)
      if (!isTRUE(v$ok)) {
        return(list(status = v$status,
                    json = as.character(to_json(error_body(v$error, v$field, v$detail)))))
      }
      data <- v$data
      params <- utils::modifyList(v$params, params)
    }
    out <- run_growth_fit(model_path, data, params)
    list(status = 200L, json = as.character(to_json(out)),
         elapsed_s = out$diagnostics$elapsed_s)
  }, error = function(e) {
    list(status = 500L,
         json = as.character(to_json(error_body(
           "fit_failed", NULL, substr(conditionMessage(e), 1, 2000)))))
  })
}
