# Validation of POST /growth/fit requests (spec §1, §3, §8).
# Returns list(ok = TRUE, data = data.frame, params = list) or
# list(ok = FALSE, status = 400/413, error, field, detail).

# Any request key that tries to choose the model is refused: the model and
# the priors are fixed on the server.
FORBIDDEN_KEY_RE <- "formula|prior|family|model|stan|link|brms|likelihood|distribution"

ALLOWED_KEYS <- c("rows", "n_samples", "n_chains", "seed", "horizon_week",
                  "target", "lookback_weeks")

# BRMS_SCORE_RANGE's default: growth_assets.settings.SCORE_RANGE (a test reads both)
DEFAULT_SCORE_RANGE <- c(-1000, 1000)

invalid <- function(field, detail, status = 400L, error = "invalid_request") {
  list(ok = FALSE, status = as.integer(status), error = error, field = field,
       detail = detail)
}

is_scalar_number <- function(x) {
  is.numeric(x) && length(x) == 1 && !is.na(x) && is.finite(x)
}

# Integer-valued JSON number within [lo, hi]; NULL means "use the default".
check_int <- function(body, name, default, lo, hi) {
  x <- body[[name]]
  if (is.null(x)) return(list(ok = TRUE, value = default))
  if (!is_scalar_number(x) || x != round(x) || x < lo || x > hi) {
    got <- if (length(x) == 1 && (is.numeric(x) || is.character(x) || is.logical(x))) format(x) else "?"
    return(invalid(name, sprintf("%s must be an integer in [%s, %s] (got %s)", name,
                                 format(lo, scientific = FALSE),
                                 format(hi, scientific = FALSE), substr(got, 1, 64))))
  }
  list(ok = TRUE, value = as.integer(x))
}

parse_json_body <- function(body_raw) {
  if (is.null(body_raw) || length(body_raw) == 0) {
    return(invalid("body", "the request body is empty; expected a JSON object"))
  }
  txt <- tryCatch(rawToChar(body_raw), error = function(e) NULL)
  if (is.null(txt) || !validUTF8(txt)) {
    return(invalid("body", "the request body is not valid UTF-8 text"))
  }
  body <- tryCatch(
    jsonlite::fromJSON(txt, simplifyVector = TRUE, simplifyDataFrame = TRUE,
                       simplifyMatrix = FALSE),
    error = function(e) e
  )
  if (inherits(body, "error") && grepl("memory exhausted|cannot allocate", conditionMessage(body))) {
    return(invalid("body", "parsing the body needs more memory than R_BRMS_WORKER_MAX_MB allows",
                   status = 413L, error = "payload_too_large"))
  }
  if (inherits(body, "error")) {
    return(invalid("body", paste("malformed JSON:", strsplit(conditionMessage(body), "\n")[[1]][1]),
                   error = "malformed_json"))
  }
  if (!is.list(body) || is.data.frame(body) || is.null(names(body)) ||
      any(!nzchar(names(body)))) {
    return(invalid("body", "the request body must be a JSON object"))
  }
  # a key twice: jsonlite keeps both and body[[k]] reads the first, so the second (n_chains 9)
  # went unchecked and unused; which value is meant? (the Python side refuses it in answers)
  twice <- names(body)[duplicated(names(body))]
  if (length(twice)) {
    return(invalid(substr(twice[1], 1, 64), sprintf("the key '%s' appears twice (which value is meant?)",
                                                    substr(twice[1], 1, 64))))
  }
  list(ok = TRUE, body = body, text = txt)
}

# jsonlite's simplification turns a row's `true` among numbers into 1 and a number among
# strings into a string: the raw text says what the JSON had. A match can only be a real
# value: inside a JSON string a quote is escaped, so `"score":` cannot appear there.
check_row_types <- function(txt) {
  if (grepl("\\", txt, fixed = TRUE)) {  # escapes: a key may be one of these in disguise
    bad <- check_escapes(txt)
    if (!is.null(bad)) return(bad)
  }
  if (grepl('"score"\\s*:\\s*[^-0-9\\s]', txt, perl = TRUE)) {
    return(invalid("rows.score", "score must be a JSON number in every row (not a string, boolean or null)"))
  }
  if (grepl('"week"\\s*:\\s*[^-0-9\\s]', txt, perl = TRUE)) {
    return(invalid("rows.week", "week must be a JSON number in every row (not a string, boolean or null)"))
  }
  if (grepl('"student_id"\\s*:\\s*[^"\\s]', txt, perl = TRUE)) {
    return(invalid("rows.student_id", "student_id must be a JSON string in every row"))
  }
  # a key twice in one row (rows are flat objects: no brace between its keys; a string holds
  # no unescaped quote, so a match is a key): jsonlite kept the first ("score": 1, "score": 900).
  # Looked for with every string but these three keys blanked (each string from its opening
  # quote: a key of the three is skipped whole, any other string becomes ""): an id "a}", or
  # another key holding a brace, hid a row's second score from the pattern
  flat <- gsub('"(?:student_id|week|score)"\\s*:(*SKIP)(*FAIL)|"(?:[^"\\\\]|\\\\.)*"', '""', txt, perl = TRUE)
  for (k in c("student_id", "week", "score")) {
    if (grepl(sprintf('\\{[^{}]*"%s"\\s*:[^{}]*"%s"\\s*:', k, k), flat, perl = TRUE)) {
      return(invalid(paste0("rows.", k), sprintf("a row has the key '%s' twice (which value is meant?)", k)))
    }
  }
  NULL
}

# The JSON strings of a text with escapes, tokenised left to right (the text starts outside a
# string, and a string's escaped quotes are inside its match): a key written with escapes
# ("\u0073core" is score to jsonlite, not to the checks above) is refused, and so is a string
# with a NUL (jsonlite cut "b\u0000x" to "b": another student's id) or a lone surrogate
# (jsonlite made it "?").
check_escapes <- function(txt) {
  m <- gregexpr('"(?:[^"\\\\]|\\\\.)*"(\\s*:)?', txt, perl = TRUE)[[1]]
  if (m[1] < 0) return(NULL)
  tokens <- regmatches(txt, list(m))[[1]]
  tokens <- tokens[grepl("\\", tokens, fixed = TRUE)]
  keys <- tokens[grepl(":$", tokens)]
  if (length(keys)) {
    key <- tryCatch(jsonlite::fromJSON(sub("\\s*:$", "", keys[1], perl = TRUE)), error = function(e) "?")
    field <- if (key %in% c("student_id", "week", "score")) paste0("rows.", key) else substr(key, 1, 64)
    return(invalid(field, sprintf("the key '%s' is written with escapes; write keys plainly", substr(key, 1, 64))))
  }
  # vectorised over the strings (a cohort's non-ASCII ids all come escaped): a \u0000 after an
  # even run of backslashes; then, one by one, only the strings with a surrogate escape
  if (any(grepl("(?<!\\\\)(?:\\\\\\\\)*\\\\u0000", tokens, perl = TRUE))) {
    return(invalid("rows.student_id", "a string holds a NUL (\\u0000): student_id must be text without it"))
  }
  for (tok in tokens[grepl("\\\\u[dD][89a-fA-F]", tokens, perl = TRUE)]) {
    why <- bad_escape(tok)
    if (!is.null(why)) {
      return(invalid("rows.student_id", sprintf("a string holds %s: student_id must be text without it", why)))
    }
  }
  NULL
}

# NULL, or what is wrong with a JSON string's escapes: a NUL, or a surrogate not in a pair
bad_escape <- function(tok) {
  e <- gregexpr("\\\\(u[0-9a-fA-F]{4}|.)", tok, perl = TRUE)[[1]]
  if (e[1] < 0) return(NULL)
  codes <- regmatches(tok, list(e))[[1]]
  at <- as.integer(e)
  u <- ifelse(substr(codes, 2, 2) == "u", strtoi(substr(codes, 3, 6), 16L), NA_integer_)
  if (any(u == 0L, na.rm = TRUE)) return("a NUL (\\u0000)")
  k <- 1L
  while (k <= length(u)) {
    v <- u[k]
    if (!is.na(v) && v >= 0xD800 && v <= 0xDBFF) {  # high: a low must follow at once
      ok <- k < length(u) && !is.na(u[k + 1]) && u[k + 1] >= 0xDC00 && u[k + 1] <= 0xDFFF &&
        at[k + 1] == at[k] + 6L
      if (!ok) return("a lone surrogate")
      k <- k + 2L
      next
    }
    if (!is.na(v) && v >= 0xDC00 && v <= 0xDFFF) return("a lone surrogate")
    k <- k + 1L
  }
  NULL
}

validate_rows <- function(rows, max_rows, score_range = DEFAULT_SCORE_RANGE) {
  if (is.null(rows)) return(invalid("rows", "rows is required: a non-empty array of objects"))
  if (is.list(rows) && !is.data.frame(rows) && length(rows) == 0) {
    return(invalid("rows", "rows must be a non-empty array of objects"))
  }
  if (!is.data.frame(rows)) {
    return(invalid("rows", "rows must be an array of objects {student_id, week, score}"))
  }
  n <- nrow(rows)
  if (n == 0) return(invalid("rows", "rows must be a non-empty array of objects"))
  if (n > max_rows) {
    return(invalid("rows", sprintf("%d rows exceed the limit of %d (R_BRMS_MAX_ROWS)", n, max_rows),
                   status = 413L, error = "payload_too_large"))
  }
  for (col in c("student_id", "week", "score")) {
    if (!col %in% names(rows)) {
      return(invalid(paste0("rows.", col), sprintf("every row needs '%s'", col)))
    }
  }
  extra <- setdiff(names(rows), c("student_id", "week", "score"))
  if (length(extra)) {  # as at the top level: a "weight" a caller thinks applied is refused, named
    return(invalid(paste0("rows.", substr(extra[1], 1, 64)), sprintf(
      "unknown key '%s' in a row; a row is {student_id, week, score}", substr(extra[1], 1, 64))))
  }
  sid <- rows$student_id
  if (!is.character(sid) || anyNA(sid) || any(!nzchar(sid))) {
    return(invalid("rows.student_id", "student_id must be a non-empty string in every row"))
  }
  wk <- rows$week
  if (!is.numeric(wk)) return(invalid("rows.week", "week must be an integer within 0..1000000 in every row"))
  bad <- which(is.na(wk) | !is.finite(wk) | wk != round(wk) | wk < 0 | wk > 1e6)
  if (length(bad)) {
    return(invalid("rows.week", sprintf("week must be an integer within 0..1000000 in every row: row %d has %s",
                                        bad[1] - 1L, format(wk[bad[1]], digits = 10))))
  }
  sc <- rows$score
  if (!is.numeric(sc)) return(invalid("rows.score", "score must be a finite number in every row"))
  bad <- which(is.na(sc) | !is.finite(sc))
  if (length(bad)) {
    return(invalid("rows.score", sprintf("score must be a finite number in every row: row %d has %s",
                                         bad[1] - 1L, format(sc[bad[1]]))))
  }
  out <- which(sc < score_range[1] | sc > score_range[2])
  if (length(out)) {
    i <- out[1]
    return(invalid("rows.score", sprintf(
      "%d score(s) outside BRMS_SCORE_RANGE [%s, %s], the first in row %d (%s)", length(out),
      format(score_range[1]), format(score_range[2]), i - 1L, format(sc[i], digits = 6))))
  }
  data <- data.frame(student_id = sid, week = as.integer(wk), score = as.numeric(sc),
                     stringsAsFactors = FALSE)
  if (n < 3) return(invalid("rows", sprintf("at least 3 rows are needed, got %d", n)))
  n_students <- length(unique(sid))
  if (n_students < 2) {
    return(invalid("rows", sprintf("at least 2 students are needed, got %d", n_students)))
  }
  dup <- duplicated(data[, c("student_id", "week")])
  if (any(dup)) {
    i <- which(dup)[1]
    return(invalid("rows", sprintf("duplicate (student_id, week): row %d repeats student '%s' week %d",
                                   i - 1L, substr(data$student_id[i], 1, 64), data$week[i])))
  }
  s <- stats::sd(data$score)
  if (!is.finite(s) || s <= 0) {
    return(invalid("rows.score", "sd(score) must be > 0 (all scores are equal)"))
  }
  list(ok = TRUE, data = data)
}

validate_fit_request <- function(body_raw, max_rows = 120000L, score_range = DEFAULT_SCORE_RANGE) {
  p <- parse_json_body(body_raw)
  if (!isTRUE(p$ok)) return(p)
  body <- p$body

  bad <- names(body)[grepl(FORBIDDEN_KEY_RE, names(body), ignore.case = TRUE)]
  if (length(bad)) {
    return(invalid(bad[1], sprintf(
      "'%s' is not accepted: the model (%s, gaussian) and its priors are fixed by the server",
      substr(bad[1], 1, 64), GROWTH_FORMULA), error = "model_is_fixed"))
  }

  unknown <- setdiff(names(body), ALLOWED_KEYS)
  if (length(unknown)) {
    return(invalid(substr(unknown[1], 1, 64), sprintf(
      "unknown key '%s'; the accepted keys are %s", substr(unknown[1], 1, 64),
      paste(ALLOWED_KEYS, collapse = ", "))))
  }
  bad_type <- check_row_types(p$text)
  if (!is.null(bad_type)) return(bad_type)
  # jsonlite makes a one-element array a number: [2] passed as n_chains 2; and null is NULL,
  # which read as "absent": "target": null (a missing value serialised) was a P for target 0
  for (k in setdiff(ALLOWED_KEYS, "rows")) {
    if (grepl(sprintf('"%s"\\s*:\\s*[[{]', k), p$text, perl = TRUE)) {
      return(invalid(k, sprintf("%s must be a single JSON number, not an array or object", k)))
    }
    if (grepl(sprintf('"%s"\\s*:\\s*null', k), p$text, perl = TRUE)) {
      return(invalid(k, sprintf("%s must be a JSON number, not null (leave the key out for its default)", k)))
    }
  }

  r <- validate_rows(body$rows, max_rows, score_range)
  if (!isTRUE(r$ok)) return(r)

  params <- list()
  chk <- check_int(body, "n_chains", 4L, 1, 8); if (!isTRUE(chk$ok)) return(chk)
  params$n_chains <- chk$value
  chk <- check_int(body, "n_samples", 2000L, 200, 20000); if (!isTRUE(chk$ok)) return(chk)
  params$n_samples <- chk$value
  chk <- check_int(body, "seed", NA_integer_, 0, .Machine$integer.max)
  if (!isTRUE(chk$ok)) return(chk)
  params$seed <- if (is.na(chk$value)) sample.int(.Machine$integer.max, 1) else chk$value
  chk <- check_int(body, "lookback_weeks", 12L, 1, 520); if (!isTRUE(chk$ok)) return(chk)
  params$lookback_weeks <- chk$value
  beyond <- which(r$data$week >= params$lookback_weeks)
  if (length(beyond)) {  # spec 1: a row's week is 0 .. lookback_weeks - 1
    i <- beyond[1]
    return(invalid("rows.week", sprintf("week %d in row %d is beyond lookback_weeks %d (weeks are 0 .. %d)",
                                        r$data$week[i], i - 1L, params$lookback_weeks,
                                        params$lookback_weeks - 1L)))
  }
  chk <- check_int(body, "horizon_week", params$lookback_weeks - 1L + 4L, 0, 1e6)
  if (!isTRUE(chk$ok)) return(chk)
  params$horizon_week <- chk$value
  tg <- body$target
  if (is.null(tg)) {
    params$target <- 0.0
  } else if (!is_scalar_number(tg)) {
    return(invalid("target", "target must be a finite number"))
  } else {
    params$target <- as.numeric(tg)
  }
  list(ok = TRUE, data = r$data, params = params)
}
