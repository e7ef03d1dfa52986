# Thin routes for the growth-model service. The logic lives in R/*.R.
# Start with: Rscript run.R --port 8080 [--host 0.0.0.0]
#
# When loaded by run.R (or the tests) the R/ files and the service state
# `.svc` are already in this file's environment; when plumbed directly the
# block below sets them up (the working directory is this file's directory).
if (!exists(".svc", inherits = FALSE)) {
  for (f in list.files("R", pattern = "[.]R$", full.names = TRUE)) source(f, local = TRUE)
  .svc <- new_service_state(service_config(), r_dir = "R")
  service_start(.svc)
}

# POST /growth/fit reads the raw body itself (req$bodyRaw) so that malformed
# JSON is a 400, not a plumber parse error: this parser accepts every content
# type and parses nothing. (plumber's own "none" parser has an invalid regex.)
if (!"rbrms_raw" %in% plumber::registered_parsers()) {
  plumber::register_parser("rbrms_raw", function(...) function(value, ...) NULL,
                           fixed = c("application/json", "text/plain",
                                     "application/octet-stream"),
                           regex = ".*", verbose = FALSE)
}

#* @plumber
function(pr) {
  pr |>
    plumber::pr_set_error(handle_error) |>
    plumber::pr_set_404(handle_404) |>
    plumber::pr_hooks(request_log_hooks()) |>
    plumber::pr_set_docs(FALSE)
}

#* Token check for every route but /healthz and /readyz
#* @filter internal_token
function(req, res) {
  denied <- auth_check(req, res, .svc)
  if (is.null(denied)) plumber::forward() else denied
}

#* Liveness: always answers at once, also while a fit is running
#* @get /healthz
#* @serializer unboxedJSON list(json_verbatim = TRUE)
function(req, res) handle_healthz(req, res, .svc)

#* Readiness: 200 once the model is compiled or loaded, 503 before
#* @get /readyz
#* @serializer unboxedJSON list(json_verbatim = TRUE)
function(req, res) handle_readyz(req, res, .svc)

#* Fit the growth model (spec §8); the fit runs in a background R process
#* @post /growth/fit
#* @parser rbrms_raw
#* @serializer unboxedJSON list(json_verbatim = TRUE)
function(req, res) handle_fit(req, res, .svc)
