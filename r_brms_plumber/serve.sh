#!/bin/sh
# The service's entrypoint (the image's CMD, `growth-assets r-service`): runs run.R and turns
# SIGTERM, which Kubernetes sends on every rollout and R does not handle (it dies at once),
# into SIGINT, which R raises as an interrupt: the service then stops taking work, answers
# its in-flight fits with 503 shutting_down, kills their processes and exits (run.R).
here="$(cd "$(dirname "$0")" && pwd)"
Rscript "$here/run.R" "$@" &
child=$!
trap 'kill -INT "$child" 2>/dev/null' TERM INT
status=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  status=$?
done
exit "$status"
