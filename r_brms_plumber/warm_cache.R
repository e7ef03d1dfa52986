#!/usr/bin/env Rscript
# Build-time warm-up of the brms service: compile the fixed growth model once
# and store it in the model cache, so a container started from the image finds
# it there (a cache hit: /readyz turns 200 in seconds, not after a compile).
#
#   R_BRMS_MODEL_CACHE=/opt/r_brms_plumber/model-cache Rscript r_brms_plumber/warm_cache.R
#   Rscript r_brms_plumber/warm_cache.R --cache-dir DIR
#
# Uses the service's own R/ files (the same ensure_compiled_model() the service
# runs at start), then loads the cache a second time and requires a cache hit,
# which proves the cache key is stable across processes. Exit 0 on success,
# 1 on any error.

local({
  args <- commandArgs(trailingOnly = TRUE)
  file_arg <- grep("^--file=", commandArgs(FALSE), value = TRUE)
  here <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else getwd()

  i <- match("--cache-dir", args)
  if (!is.na(i) && i < length(args)) Sys.setenv(R_BRMS_MODEL_CACHE = args[i + 1])

  status <- tryCatch({
    app_env <- new.env(parent = globalenv())
    for (f in list.files(file.path(here, "R"), pattern = "[.]R$", full.names = TRUE)) {
      sys.source(f, envir = app_env)
    }
    cache_dir <- app_env$default_cache_dir()
    if (!nzchar(Sys.getenv("R_BRMS_MODEL_CACHE", ""))) {
      message("warm_cache: R_BRMS_MODEL_CACHE is not set; using the default ", cache_dir,
              " (the service must run with the same setting to find it)")
    }
    first <- app_env$ensure_compiled_model(cache_dir, verbose = TRUE)
    message(sprintf("warm_cache: %s %s in %.1f s (key %s)",
                    if (isTRUE(first$compiled)) "compiled and stored" else "already cached",
                    first$path, first$seconds, first$key))
    second <- app_env$ensure_compiled_model(cache_dir, verbose = FALSE)
    if (isTRUE(second$compiled) || !identical(second$path, first$path) || !file.exists(second$path)) {
      stop("the stored model was not found again as a cache hit: ", second$path)
    }
    message(sprintf("warm_cache: cache hit verified (%s, %.1f MB)", second$path,
                    file.size(second$path) / 2^20))
    0L
  }, error = function(e) {
    message("warm_cache: FAILED: ", conditionMessage(e))
    1L
  })
  quit(save = "no", status = status)
})
