#!/bin/sh
# The service's entrypoint (the image's CMD, `growth-assets r-service`): runs run.R and turns
# SIGTERM, which Kubernetes sends on every rollout and R does not handle (it dies at once),
# into a stop file that the service's loop looks for between its polls (every 250 ms): the
# service then stops taking work, answers its in-flight fits with 503 shutting_down, kills
# their processes and exits (run.R). Not an interrupt: a SIGINT that arrives while httpuv runs
# one of R's request handlers is lost (seen: a SIGTERM during a burst of /readyz calls left the
# service running its fit). SIGINT (Ctrl-C in a terminal) still interrupts R.
here="$(cd "$(dirname "$0")" && pwd)"
stop_dir="$(mktemp -d)"
GROWTH_R_STOP_FILE="$stop_dir/stop"
export GROWTH_R_STOP_FILE
Rscript "$here/run.R" "$@" &
child=$!
trap ': > "$GROWTH_R_STOP_FILE"' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
status=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  status=$?
done
rm -rf "$stop_dir"
exit "$status"
