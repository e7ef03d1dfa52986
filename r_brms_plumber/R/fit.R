# One fit of the fixed growth model on validated data (spec §3, §4, §6, §8).
# Runs in a background R process started by the service (see jobs.R).

POPULATION_DRAWS <- 1000L  # growth_assets.model.contract.POPULATION_DRAWS
POPULATION_PARS <- c("b_Intercept", "b_week", "sd_student_id__Intercept",
                     "sd_student_id__week", "cor_student_id__Intercept__week",
                     "sigma")

# data: data.frame(student_id chr, week int, score dbl), already validated.
# params: list(n_chains, n_samples, seed, horizon_week, target, lookback_weeks,
#              run_id, cores)
run_growth_fit <- function(model_path, data, params) {
  t0 <- Sys.time()
  suppressPackageStartupMessages({
    requireNamespace("brms"); requireNamespace("rstan"); requireNamespace("posterior")
  })
  configure_rstan()
  template <- readRDS(model_path)

  # Internal, order-preserving level codes: student ids never reach Stan
  # variable names (they may contain any character).
  ids <- sort(unique(data$student_id))
  codes <- sprintf("L%07d", seq_along(ids))
  fdata <- data.frame(
    student_id = codes[match(data$student_id, ids)],
    week = as.integer(data$week),
    score = as.numeric(data$score),
    stringsAsFactors = FALSE
  )
  sc <- prior_scales(fdata$score)

  n_samples <- as.integer(params$n_samples)
  n_warmup <- n_samples %/% 2L
  n_chains <- as.integer(params$n_chains)
  cores <- max(1L, min(n_chains, as.integer(params$cores %||% 1L)))

  t_sample <- Sys.time()
  fit_warnings <- character(0)
  fit <- withCallingHandlers(stats::update(
    template, newdata = fdata, recompile = FALSE,
    stanvars = growth_stanvars(sc$ybar, sc$s),
    chains = n_chains, iter = n_samples, warmup = n_warmup,
    seed = as.integer(params$seed), cores = cores, refresh = 0, silent = 2
  ), warning = function(w) {
    fit_warnings <<- c(fit_warnings, conditionMessage(w))
    invokeRestart("muffleWarning")
  })
  sample_s <- as.numeric(difftime(Sys.time(), t_sample, units = "secs"))

  draws <- posterior::as_draws_array(fit)
  vars <- posterior::variables(draws)
  # "all sampled parameters": every saved variable except lp__ and lprior
  # (log density and log prior are not parameters): the six population parameters and every
  # r_student_id[...]. brms does not save the centred Intercept (the native engine's set has it
  # and no r_student_id: README, "Engines").
  diag_vars <- setdiff(vars, c("lp__", "lprior"))
  conv <- posterior::summarise_draws(
    posterior::subset_draws(draws, variable = diag_vars),
    rhat = posterior::rhat, ess_bulk = posterior::ess_bulk,
    ess_tail = posterior::ess_tail
  )
  pop <- posterior::summarise_draws(
    posterior::subset_draws(draws, variable = POPULATION_PARS),
    mean = mean, sd = stats::sd,
    q5 = function(x) stats::quantile(x, probs = 0.05, names = FALSE),
    q95 = function(x) stats::quantile(x, probs = 0.95, names = FALSE),
    rhat = posterior::rhat, ess_bulk = posterior::ess_bulk,
    ess_tail = posterior::ess_tail
  )
  posterior_summary <- list()
  for (k in seq_len(nrow(pop))) {
    posterior_summary[[pop$variable[k]]] <- list(
      mean = num1(pop$mean[k]), sd = num1(pop$sd[k]),
      q5 = num1(pop$q5[k]), q95 = num1(pop$q95[k]),
      rhat = num1(pop$rhat[k]), ess_bulk = num1(pop$ess_bulk[k]),
      ess_tail = num1(pop$ess_tail[k])
    )
  }

  np <- brms::nuts_params(fit)  # post-warmup only
  n_div <- sum(np$Value[np$Parameter == "divergent__"] > 0)
  max_td <- fit$fit@stan_args[[1]]$control$max_treedepth %||% 10
  n_td <- sum(np$Value[np$Parameter == "treedepth__"] >= max_td)

  # Per-student line posterior and prediction at horizon h (spec §6).
  dm <- posterior::as_draws_matrix(draws)
  b0 <- as.numeric(dm[, "b_Intercept"])
  b1 <- as.numeric(dm[, "b_week"])
  r0 <- dm[, sprintf("r_student_id[%s,Intercept]", codes), drop = FALSE]
  r1 <- dm[, sprintf("r_student_id[%s,week]", codes), drop = FALSE]
  # A thinned set of the population draws (the real-time path's "update": the contract's
  # POPULATION_DRAWS, evenly spaced over all chains' draws), beside the summary.
  keep <- unique(round(seq(1, nrow(dm), length.out = min(POPULATION_DRAWS, nrow(dm)))))
  population_draws <- lapply(stats::setNames(POPULATION_PARS, POPULATION_PARS),
                             function(p) I(as.numeric(dm[keep, p])))
  rm(dm)
  a <- unclass(r0) + b0
  b <- unclass(r1) + b1
  rm(r0, r1)
  nd <- nrow(a)
  h <- as.numeric(params$horizon_week)
  target <- as.numeric(params$target)
  mean_a <- colMeans(a); mean_b <- colMeans(b)
  ac <- sweep(a, 2, mean_a); bc <- sweep(b, 2, mean_b)
  var_a <- colSums(ac^2) / (nd - 1)
  var_b <- colSums(bc^2) / (nd - 1)
  cov_ab <- colSums(ac * bc) / (nd - 1)
  rm(ac, bc)
  y <- a + b * h
  mu <- colMeans(y)
  sigma <- sqrt(colSums(sweep(y, 2, mu)^2) / (nd - 1))
  P <- colMeans(y >= target)
  rm(a, b, y)
  n_obs <- as.integer(table(factor(fdata$student_id, levels = codes)))

  predictions <- data.frame(
    student_id = ids, n_obs = n_obs,
    mean_a = unname(mean_a), mean_b = unname(mean_b),
    var_a = unname(var_a), var_b = unname(var_b), cov_ab = unname(cov_ab),
    mu = unname(mu), sigma = unname(sigma), P = unname(P),
    stringsAsFactors = FALSE
  )

  list(
    run_id = params$run_id,
    engine = "brms",
    engine_version = engine_version_string(),
    formula = GROWTH_FORMULA,
    priors = priors_record(sc$ybar, sc$s),
    seed = as.integer(params$seed),
    n_chains = n_chains,
    n_samples = n_samples,
    n_warmup = n_warmup,
    n_obs = nrow(fdata),
    n_students = length(ids),
    lookback_weeks = as.integer(params$lookback_weeks),
    horizon_week = as.integer(params$horizon_week),
    target = target,
    posterior_summary = posterior_summary,
    population_draws = population_draws,
    diagnostics = list(
      max_rhat = num1(worst(conv$rhat, max)),
      min_ess_bulk = num1(worst(conv$ess_bulk, min)),
      min_ess_tail = num1(worst(conv$ess_tail, min)),
      n_divergent = as.integer(n_div),
      n_max_treedepth = as.integer(n_td),
      sample_s = sample_s,
      elapsed_s = as.numeric(difftime(Sys.time(), t0, units = "secs"))
    ),
    predictions = predictions,
    sampler_warnings = I(unique(fit_warnings))
  )
}

num1 <- function(x) as.numeric(unclass(x))[1]

# max R-hat / min ESS over every sampled parameter: one that posterior leaves undefined (NA:
# constant or non-finite draws, a stuck chain) makes the result NA (JSON null), which the
# checks fail; it is never dropped (na.rm = TRUE hid it).
worst <- function(x, pick) {
  x <- as.numeric(x)
  if (!length(x) || anyNA(x) || any(!is.finite(x))) return(NA_real_)
  pick(x)
}

`%||%` <- function(a, b) if (is.null(a)) b else a
