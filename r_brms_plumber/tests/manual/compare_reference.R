# Compare a /growth/fit response for sleepstudy against the brms reference.
#   Rscript tests/manual/compare_reference.R response.json [reference.json]
# reference.json defaults to $GROWTH_REFERENCE_DIR/sleepstudy.brms.json, else ../reference/ (the
# reference/ folder of the repository).
# Pass criterion (reference README): population means within 0.15 posterior
# sd of the reference, posterior sds within 10 %.
args <- commandArgs(trailingOnly = TRUE)
resp <- jsonlite::fromJSON(args[1], simplifyVector = FALSE)
ref_dir <- Sys.getenv("GROWTH_REFERENCE_DIR", "../reference")
ref_path <- if (length(args) > 1) args[2] else file.path(ref_dir, "sleepstudy.brms.json")
ref <- jsonlite::fromJSON(ref_path, simplifyVector = FALSE)
ok <- TRUE
cat(sprintf("%-34s %11s %11s %8s %9s %9s %7s\n", "parameter", "mean", "ref mean",
            "dz(sd)", "sd", "ref sd", "sd %"))
for (p in ref$population) {
  v <- p$variable; got <- resp$posterior_summary[[v]]
  dz <- (got$mean - p$mean) / p$sd
  dsd <- 100 * (got$sd / p$sd - 1)
  pass <- abs(dz) <= 0.15 && abs(dsd) <= 10
  ok <- ok && pass
  cat(sprintf("%-34s %11.4f %11.4f %8.3f %9.4f %9.4f %6.1f%% %s\n", v, got$mean, p$mean, dz,
              got$sd, p$sd, dsd, if (pass) "ok" else "FAIL"))
}
# per-student line posterior
pr <- resp$predictions
ids <- vapply(pr, function(x) x$student_id, "")
da <- db <- numeric(0)
for (s in ref$students) {
  g <- pr[[match(s$student_id, ids)]]
  da <- c(da, (g$mean_a - s$mean_a) / sqrt(s$var_a))
  db <- c(db, (g$mean_b - s$mean_b) / sqrt(s$var_b))
}
cat(sprintf("students: max |dz| mean_a %.3f, mean_b %.3f (in posterior sd)\n",
            max(abs(da)), max(abs(db))))
h_idx <- vapply(ref$students[[1]]$horizons, function(x) x$h, 0)
if (resp$horizon_week %in% h_idx) {
  hi <- match(resp$horizon_week, h_idx)
  ti <- match(resp$target, unlist(ref$targets))
  dmu <- dP <- numeric(0)
  for (s in ref$students) {
    g <- pr[[match(s$student_id, ids)]]; hz <- s$horizons[[hi]]
    dmu <- c(dmu, (g$mu - hz$mean) / hz$sd)
    if (!is.na(ti)) dP <- c(dP, g$P - hz$P[[ti]])
  }
  cat(sprintf("h=%d: max |dz| mu %.3f; max |dP| %s\n", resp$horizon_week, max(abs(dmu)),
              if (length(dP)) sprintf("%.4f", max(abs(dP))) else "n/a"))
}
cat(sprintf("diagnostics: max_rhat %.4f, min_ess_bulk %.0f, min_ess_tail %.0f, divergent %d, treedepth %d, elapsed %.1fs\n",
            resp$diagnostics$max_rhat, resp$diagnostics$min_ess_bulk, resp$diagnostics$min_ess_tail,
            resp$diagnostics$n_divergent, resp$diagnostics$n_max_treedepth, resp$diagnostics$elapsed_s))
cat(if (ok) "PASS\n" else "FAIL\n")
quit(status = if (ok) 0 else 1)
