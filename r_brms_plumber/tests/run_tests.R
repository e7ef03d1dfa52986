#!/usr/bin/env Rscript
# Run the service's tests:  Rscript r_brms_plumber/tests/run_tests.R
# Env: R_BRMS_SKIP_SERVER_TEST=1 skips the end-to-end test (starts a server,
# compiles the model on the first run, ~1-2 min; later runs hit the cache).
file_arg <- grep("^--file=", commandArgs(FALSE), value = TRUE)
here <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else "tests"
suppressPackageStartupMessages(library(testthat))
res <- testthat::test_dir(file.path(here, "testthat"), reporter = "summary",
                          stop_on_failure = FALSE)
df <- as.data.frame(res)
n_fail <- sum(df$failed) + sum(df$error)
cat(sprintf("\n%d test blocks, %d expectations, %d failed/errored, %d skipped\n",
            nrow(df), sum(df$nb), n_fail, sum(df$skipped)))
quit(status = if (n_fail > 0) 1 else 0)
