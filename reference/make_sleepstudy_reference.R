# Regenerate reference/sleepstudy.brms.json: brms's long-run posterior of lme4's sleepstudy
# under the contract's model and priors (docs/growth-model-spec.md §2-§3), with the service's
# own model code (r_brms_plumber/R/model.R), 4 chains x 6,000 iterations (1,000 warm-up).
#   Rscript reference/make_sleepstudy_reference.R [out.json]
# Takes ~10 minutes on 2 cores (compile + sample). The committed file came from brms 2.18.0 /
# rstan 2.21.7 (Debian 12); a rerun on other versions agrees within Monte Carlo error.
args <- commandArgs(trailingOnly = TRUE)
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])))
out <- if (length(args)) args[1] else file.path(here, "sleepstudy.brms.json")
for (f in list.files(file.path(here, "..", "r_brms_plumber", "R"), full.names = TRUE)) source(f)
suppressPackageStartupMessages({library(brms); library(posterior)})
configure_rstan()

data <- utils::read.csv(file.path(here, "sleepstudy.csv"), stringsAsFactors = FALSE)
sc <- prior_scales(data$score)
iter <- as.integer(Sys.getenv("REF_ITER", "6000"))  # a quick check of the script: REF_ITER=1500
t0 <- Sys.time()
fit <- brms::brm(score ~ week + (week | student_id), data = data, family = gaussian(),
                 prior = growth_brms_prior(), stanvars = growth_stanvars(sc$ybar, sc$s),
                 chains = 4, iter = iter, warmup = 1000, seed = 1234, cores = 2, refresh = 0)
elapsed <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
draws <- posterior::as_draws_array(fit)
pop <- posterior::summarise_draws(posterior::subset_draws(draws, variable = POPULATION_PARS),
                                  "mean", "sd", ~quantile(.x, c(0.05, 0.95)), "rhat", "ess_bulk",
                                  "ess_tail", "mcse_mean", "mcse_sd")
conv <- posterior::summarise_draws(posterior::subset_draws(draws, variable = setdiff(
  posterior::variables(draws), c("lp__", "lprior"))), "rhat", "ess_bulk", "ess_tail")
dm <- posterior::as_draws_matrix(draws)
targets <- c(250, 300, 350, 400)
ids <- sort(unique(data$student_id))
students <- lapply(ids, function(id) {
  a <- dm[, "b_Intercept"] + dm[, sprintf("r_student_id[%s,Intercept]", id)]
  b <- dm[, "b_week"] + dm[, sprintf("r_student_id[%s,week]", id)]
  list(student_id = id, n_obs = sum(data$student_id == id), mean_a = mean(a), mean_b = mean(b),
       var_a = stats::var(as.numeric(a)), var_b = stats::var(as.numeric(b)),
       cov_ab = stats::cov(as.numeric(a), as.numeric(b)),
       horizons = lapply(c(11, 15), function(h) {
         y <- as.numeric(a + b * h)
         list(h = h, mean = mean(y), sd = stats::sd(y), P = vapply(targets, function(t) mean(y >= t), 0))
       }))
})
v <- engine_versions()
ref <- list(name = "sleepstudy", brms = v$brms, rstan = v$rstan, iter = iter, warmup = 1000,
            chains = 4, n_draws = nrow(dm), ybar = sc$ybar, s = sc$s, targets = targets,
            sample_s = elapsed, population = pop, max_rhat_all = max(conv$rhat),
            min_ess_bulk_all = min(conv$ess_bulk), min_ess_tail_all = min(conv$ess_tail),
            n_divergent = sum(brms::nuts_params(fit)$Value[brms::nuts_params(fit)$Parameter == "divergent__"]),
            n_students = length(ids), n_obs = nrow(data), students = students)
jsonlite::write_json(ref, out, auto_unbox = TRUE, digits = NA, pretty = FALSE)
cat("wrote", out, "\n")
