# The fixed growth model (spec §2-§3): one compiled brms/rstan model, with the
# prior scales passed as data (stanvars), cached on disk and reused for every fit.
#
# Everything here runs in a background R process (callr) or at service start;
# nothing in this file is ever built from request content.

GROWTH_FORMULA <- "score ~ week + (week | student_id)"

# Prior scales from the data (spec §3): ybar = mean(score), s = sd(score) (n-1).
prior_scales <- function(score) {
  list(ybar = mean(score), s = stats::sd(score))
}

# brms prior specification; the numbers are Stan data (prior_ybar, prior_s).
growth_brms_prior <- function() {
  brms::set_prior("normal(prior_ybar, 2.5 * prior_s)", class = "Intercept") +
    brms::set_prior("normal(0, prior_s)", class = "b", coef = "week") +
    brms::set_prior("cauchy(0, prior_s)", class = "sd") +
    brms::set_prior("cauchy(0, prior_s)", class = "sigma") +
    brms::set_prior("lkj(2)", class = "cor")
}

growth_stanvars <- function(ybar, s) {
  brms::stanvar(as.numeric(ybar), name = "prior_ybar", block = "data") +
    brms::stanvar(as.numeric(s), name = "prior_s", block = "data")
}

# The priors as reported in the fit result (spec §8).
priors_record <- function(ybar, s) {
  list(
    list(class = "Intercept", dist = "normal", args = c(ybar, 2.5 * s)),
    list(class = "b", coef = "week", dist = "normal", args = c(0, s)),
    list(class = "sd", dist = "cauchy", args = c(0, s), lb = 0),
    list(class = "sigma", dist = "cauchy", args = c(0, s), lb = 0),
    list(class = "cor", dist = "lkj", args = I(2))
  )
}

# Tiny built-in data set used only to compile the model once.
template_data <- function() {
  set.seed(1)
  d <- expand.grid(week = 0:4, student_id = sprintf("t%02d", 1:4),
                   stringsAsFactors = FALSE)
  d$score <- 1 + 0.1 * d$week + stats::rnorm(nrow(d), sd = 0.5)
  d[, c("student_id", "week", "score")]
}

engine_versions <- function() {
  list(
    brms = as.character(utils::packageVersion("brms")),
    rstan = as.character(utils::packageVersion("rstan")),
    stanheaders = as.character(utils::packageVersion("StanHeaders")),
    r = paste(R.version$major, R.version$minor, sep = ".")
  )
}

engine_version_string <- function(v = engine_versions()) {
  sprintf("brms %s / rstan %s", v$brms, v$rstan)
}

# Stan code of the fixed model (no compilation).
growth_stancode <- function() {
  d <- template_data()
  sc <- prior_scales(d$score)
  code <- brms::make_stancode(
    stats::as.formula(GROWTH_FORMULA), data = d, family = stats::gaussian(),
    prior = growth_brms_prior(), stanvars = growth_stanvars(sc$ybar, sc$s)
  )
  # first line holds the brms version banner; the version is in the key anyway
  as.character(code)
}

# Cache key: brms/rstan/StanHeaders/R versions + the Stan code of the model.
model_cache_key <- function(code = growth_stancode(), v = engine_versions()) {
  payload <- paste(c(v$brms, v$rstan, v$stanheaders, v$r, code), collapse = "\n")
  substr(digest::digest(payload, algo = "sha256", serialize = FALSE), 1, 16)
}

default_cache_dir <- function() {
  env <- Sys.getenv("R_BRMS_MODEL_CACHE", "")
  if (nzchar(env)) return(env)
  d <- tryCatch(tools::R_user_dir("r_brms_plumber", which = "cache"),
                error = function(e) "")
  if (nzchar(d)) return(d)
  file.path(tempdir(), "r_brms_plumber_cache")
}

configure_rstan <- function() {
  # Debian's r-cran-bh keeps the Boost headers in /usr/include.
  if (dir.exists("/usr/include/boost")) {
    rstan::rstan_options(boost_lib = "/usr/include")
  }
  rstan::rstan_options(auto_write = FALSE)
  invisible(NULL)
}

# Load the compiled template model from the cache, or compile and store it.
# Returns list(path, key, compiled (logical), seconds).
ensure_compiled_model <- function(cache_dir = default_cache_dir(), verbose = TRUE) {
  t0 <- Sys.time()
  suppressPackageStartupMessages({
    requireNamespace("brms"); requireNamespace("rstan")
  })
  configure_rstan()
  code <- growth_stancode()
  key <- model_cache_key(code)
  dir.create(cache_dir, recursive = TRUE, showWarnings = FALSE)
  path <- file.path(cache_dir, sprintf("growth_model_%s.rds", key))
  if (file.exists(path)) {
    ok <- tryCatch({
      fit <- readRDS(path)
      inherits(fit, "brmsfit") && identical(attr(fit, "growth_cache_key"), key)
    }, error = function(e) FALSE)
    if (ok) {
      return(list(path = path, key = key, compiled = FALSE,
                  seconds = as.numeric(difftime(Sys.time(), t0, units = "secs"))))
    }
    if (verbose) message("model cache unreadable or stale, recompiling: ", path)
  }
  if (verbose) message("compiling the growth model (once per brms/rstan version)")
  d <- template_data()
  sc <- prior_scales(d$score)
  fit <- suppressWarnings(brms::brm(
    stats::as.formula(GROWTH_FORMULA), data = d, family = stats::gaussian(),
    prior = growth_brms_prior(), stanvars = growth_stanvars(sc$ybar, sc$s),
    chains = 1, iter = 20, warmup = 10, seed = 1, refresh = 0, silent = 2,
    backend = "rstan"
  ))
  attr(fit, "growth_cache_key") <- key
  tmp <- tempfile(pattern = "growth_model_", tmpdir = cache_dir, fileext = ".rds.tmp")
  saveRDS(fit, tmp)
  if (!file.rename(tmp, path)) {
    unlink(tmp)
    stop("could not write the model cache to ", path)
  }
  # drop stale cache files of other keys
  old <- setdiff(list.files(cache_dir, pattern = "^growth_model_.*\\.rds$", full.names = TRUE), path)
  unlink(old)
  list(path = path, key = key, compiled = TRUE,
       seconds = as.numeric(difftime(Sys.time(), t0, units = "secs")))
}
