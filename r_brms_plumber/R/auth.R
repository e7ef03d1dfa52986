# Internal token check (constant-time: compares SHA-256 digests byte by byte
# with an XOR accumulator, so the time does not depend on where they differ).

sha256_raw <- function(x) {
  digest::digest(charToRaw(enc2utf8(x)), algo = "sha256", serialize = FALSE, raw = TRUE)
}

constant_time_equal <- function(a, b) {
  da <- sha256_raw(a); db <- sha256_raw(b)
  acc <- 0L
  for (i in seq_along(da)) acc <- bitwOr(acc, bitwXor(as.integer(da[i]), as.integer(db[i])))
  acc == 0L
}

# The token presented by a request: "Authorization: Bearer <t>" or
# "X-Internal-Token: <t>". Returns a character vector of candidates.
request_tokens <- function(req) {
  out <- character(0)
  auth <- req$HTTP_AUTHORIZATION
  if (!is.null(auth) && length(auth) == 1 && grepl("^bearer[[:space:]]+", auth, ignore.case = TRUE)) {
    out <- c(out, sub("^bearer[[:space:]]+", "", trimws(auth), ignore.case = TRUE))
  }
  xt <- req$HTTP_X_INTERNAL_TOKEN
  if (!is.null(xt) && length(xt) == 1) out <- c(out, trimws(xt))
  out[nzchar(out)]
}

# TRUE when the request may proceed.
token_ok <- function(req, expected) {
  if (is.null(expected) || !nzchar(expected)) return(TRUE)
  cands <- request_tokens(req)
  if (length(cands) == 0) return(FALSE)
  ok <- vapply(cands, constant_time_equal, logical(1), b = expected)
  any(ok)
}

PUBLIC_PATHS <- c("/healthz", "/readyz")
