#!/usr/bin/env bash
# `make run`: the whole of Tern on this machine, in the foreground.
#
# Installs the pinned nats-server if needed, builds the workspace (release), starts
# nats-server with JetStream (store .tern/nats, client :4222, monitoring :8222), the
# four services with config/dev.toml and a webhook receiver (`ternctl listen` on
# :9999), waits until all are ready, writes .tern/dev.env, prints a curl to try, then
# streams the logs (.tern/logs/<name>.log) until Ctrl-C, and stops everything.
#
# Knobs: see scripts/lib.sh (TERN_SKIP_BUILD=1, TERN_READY_TIMEOUT, ...).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Services write JSON logs when not on a terminal; people read these ones.
export TERN_LOG__FORMAT="${TERN_LOG__FORMAT:-pretty}"

tern_install_traps

# Fail before a long build if the ports are taken.
tern_check_ports --receiver
"$TERN_ROOT/scripts/nats-server.sh" >/dev/null
tern_build

tern_start_system --store .tern/nats --logs .tern/logs --receiver
tern_write_env .tern/dev.env

url="$(tern_ingress_url)"
auth="Authorization: Bearer $TERN_DEV_API_KEY"
receiver="http://127.0.0.1:$TERN_RECEIVER_PORT"
body="{\"queue\":\"default\",\"webhook_url\":\"$receiver/webhook\",\"payload\":{\"hello\":\"world\"}}"

cat <<EOF

Tern is running.
  ingress    $url
  resolver   $(tern_resolver_url)
  receiver   $receiver   (ternctl listen; checks signatures)
  nats       $(tern_cfg nats url)   (monitoring http://127.0.0.1:$TERN_NATS_HTTP_PORT)
  logs       .tern/logs/
  env        source .tern/dev.env   (TERN_URL, TERN_API_KEY, TERN_SIGNING_SECRET, ...)

Dev API key: $TERN_DEV_API_KEY

Create a task (paste into another terminal):
  curl -sS -X POST $url/v1/tasks -H "$auth" -H 'Content-Type: application/json' -d '$body'

Then its status, with the task_id from the answer in place of TASK_ID:
  curl -sS $url/v1/tasks/TASK_ID -H "$auth"

Or with ternctl (it reads .tern/dev.env):
  $TERN_BIN_DIR/ternctl tasks submit --webhook-url $receiver/webhook --payload '{"hello":"world"}'
  $TERN_BIN_DIR/ternctl tasks get TASK_ID

Streaming logs; Ctrl-C stops everything.

EOF

tern_stream_logs
tern_wait_forever
