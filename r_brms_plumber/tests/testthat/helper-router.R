# Helpers: load the service code and call the plumber router in-process.
options(r_brms_plumber.quiet = TRUE)

pkg_dir <- function() {
  d <- normalizePath(file.path(testthat::test_path(), "..", ".."), mustWork = TRUE)
  d
}

load_service_env <- function(config = list()) {
  env <- new.env(parent = globalenv())
  for (f in list.files(file.path(pkg_dir(), "R"), pattern = "[.]R$", full.names = TRUE)) {
    sys.source(f, envir = env)
  }
  cfg <- env$service_config()
  cfg[names(config)] <- config
  env$.svc <- env$new_service_state(cfg, r_dir = file.path(pkg_dir(), "R"))
  env
}

make_router <- function(env) {
  suppressPackageStartupMessages(library(plumber))
  plumber::pr(file.path(pkg_dir(), "plumber.R"), envir = env)
}

fake_input <- function(body) {
  raw <- if (is.raw(body)) body else charToRaw(enc2utf8(body))
  pos <- 0L
  list(
    read = function(l = -1L) {
      if (pos >= length(raw)) return(raw(0))
      out <- raw[(pos + 1L):length(raw)]; pos <<- length(raw); out
    },
    rewind = function() pos <<- 0L,
    read_lines = function() strsplit(rawToChar(raw), "\n")[[1]]
  )
}

# Call the router like httpuv would; returns list(status, headers, body, json).
call_route <- function(pr, method, path, body = "", headers = list()) {
  req <- new.env()
  req$REQUEST_METHOD <- method
  req$PATH_INFO <- path
  req$QUERY_STRING <- ""
  req$HTTP_CONTENT_TYPE <- "application/json"
  req$rook.input <- fake_input(body)
  for (h in names(headers)) {
    assign(paste0("HTTP_", toupper(gsub("-", "_", h))), headers[[h]], envir = req)
  }
  out <- pr$call(req)
  body_txt <- if (is.raw(out$body)) rawToChar(out$body) else paste(out$body, collapse = "")
  json <- tryCatch(jsonlite::fromJSON(body_txt, simplifyVector = FALSE), error = function(e) NULL)
  list(status = out$status, headers = out$headers, body = body_txt, json = json)
}

rows_json <- function(d) {
  as.character(jsonlite::toJSON(d, dataframe = "rows", digits = NA))
}

small_rows <- function() {
  data.frame(student_id = rep(c("a", "b", "c"), each = 3), week = rep(0:2, 3),
             score = c(1, 1.2, 1.5, 0.4, 0.6, 0.5, 2, 2.2, 2.1))
}
