# The front: nginx in the same container, before httpuv, for what httpuv 1.6 cannot do: a read
# timeout. httpuv has no header or body timeout and R cannot close one of its connections, so an
# upload stalled after a few bytes held its connection open for ever. nginx listens on the
# service's address and closes a client that sends nothing for R_BRMS_BODY_TIMEOUT_SECS (headers
# or body), and proxies everything else to httpuv on a loopback port, unbuffered: the request's
# headers reach R at once (the 413 of json_on_headers still answers before a large body is
# sent), the body streams through, the answer waits up to the fit timeout. When a client leaves,
# nginx closes its upstream connection, which is what the keyless-fit check (jobs.R) sees.
#
# R_BRMS_FRONT=nginx (default; used when nginx is installed, else the service says so and
# serves without it) | off.

front_config <- function(listen_host, listen_port, inner_port, cfg, tmp, as_root = FALSE) {
  listen <- if (grepl(":", listen_host, fixed = TRUE)) sprintf("[%s]:%d", listen_host, listen_port)
            else sprintf("%s:%d", listen_host, listen_port)
  t <- cfg$body_timeout_s
  json_error <- function(code, error, detail) sprintf(
    "    location @e%d { default_type application/json; return %d '{\"error\": \"%s\", \"field\": null, \"detail\": \"%s\"}'; }",
    code, code, error, detail)
  paste(c(
    "daemon off;",
    "master_process off;  # one process, which dies with the R server (setpriv --pdeathsig)",
    if (as_root) "user root root;",
    sprintf("pid %s/nginx.pid;", tmp),
    "error_log stderr warn;",
    "events { worker_connections 512; }",
    "http {",
    "  access_log off;",
    "  server_tokens off;",
    sprintf("  client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fastcgi;", tmp, tmp, tmp),
    sprintf("  uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;", tmp, tmp),
    sprintf("  client_header_timeout %ds; client_body_timeout %ds; send_timeout 60s;", t, t),
    "  client_max_body_size 0;  # the service's own limit answers, as JSON (json_on_headers)",
    "  keepalive_timeout 75s;",
    "  server {",
    sprintf("    listen %s;", listen),
    "    error_page 502 504 = @e502;",
    json_error(502, "service_unavailable", "the service is not answering; retry"),
    "    location / {",
    sprintf("      proxy_pass http://127.0.0.1:%d;", inner_port),
    "      proxy_http_version 1.1;",
    "      proxy_set_header Connection \"\";",
    "      proxy_set_header Host $http_host;",
    "      proxy_request_buffering off;",
    "      proxy_buffering off;",
    sprintf("      proxy_read_timeout %ds;", cfg$fit_timeout_s + 120L),
    "      proxy_send_timeout 60s;",
    "    }",
    "  }",
    "}"), collapse = "\n")
}

# Start nginx before httpuv; returns NULL (no front) or list(proc, inner_port, tmp).
start_front <- function(cfg, host, port) {
  if (identical(cfg$front, "off")) return(NULL)
  if (!identical(cfg$front, "nginx")) stop(sprintf("R_BRMS_FRONT must be nginx or off, got '%s'", cfg$front))
  nginx <- Sys.which("nginx")
  if (!nzchar(nginx)) nginx <- if (file.exists("/usr/sbin/nginx")) "/usr/sbin/nginx" else ""
  if (!nzchar(nginx)) {
    log_line("front: nginx not found: serving without it (no read timeout); install nginx or set R_BRMS_FRONT=off")
    return(NULL)
  }
  inner <- httpuv::randomPort(host = "127.0.0.1")
  tmp <- tempfile("rbrms_front_")
  dir.create(tmp, mode = "0700")
  conf <- file.path(tmp, "nginx.conf")
  as_root <- identical(unname(Sys.info()[["effective_user"]]), "root")
  writeLines(front_config(host, port, inner, cfg, tmp, as_root), conf)
  args <- c("-e", "stderr", "-p", tmp, "-c", conf)
  # killed with the R server however it ends (a SIGKILL included): util-linux's setpriv sets the
  # parent-death signal, which survives the exec of nginx
  setpriv <- Sys.which("setpriv")
  cmd <- if (nzchar(setpriv)) c(setpriv, "--pdeathsig", "KILL", "--", nginx, args) else c(nginx, args)
  proc <- processx::process$new(cmd[1], cmd[-1], stdout = "", stderr = "", cleanup = TRUE)
  list(proc = proc, inner_port = inner, tmp = tmp)
}

# After httpuv stopped: nginx finishes what it holds (SIGQUIT), then is gone.
stop_front <- function(front, wait_s = 5) {
  if (is.null(front)) return(invisible())
  p <- front$proc
  if (p$is_alive()) {
    tryCatch(p$signal(tools::SIGQUIT), error = function(e) NULL)
    p$wait(wait_s * 1000)
    if (p$is_alive()) p$kill_tree()
  }
  unlink(front$tmp, recursive = TRUE)
  invisible()
}
