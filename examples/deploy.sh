#!/usr/bin/env bash
# A reference deploy: wait until the target colour is healthy, dry-run a staged rollout
# to it, start it, and follow it to the end. Needs only bash, curl and jq.
#
#   examples/deploy.sh [options]
#
#   -s, --socket PATH        admin socket            (env CUTOVER_SOCKET, default cutover.sock)
#   -c, --color COLOUR       colour to roll out      (env DEPLOY_COLOR, default green)
#       --steps LIST         e.g. 1:30m,10:1h,25,50,100: percentages, bare or PERCENT:DURATION
#                                                    (env DEPLOY_STEPS, default 1,10,50,100)
#       --step DURATION      length of a bare step   (env DEPLOY_STEP; default [rollout] step_duration)
#       --max-error-rate R   1% or 0.01              (env DEPLOY_MAX_ERROR_RATE, default 1%)
#       --max-p99 DURATION   e.g. 250ms              (env DEPLOY_MAX_P99, default none)
#       --min-requests N     per step                (env DEPLOY_MIN_REQUESTS, default the server's 100)
#       --health-timeout S   wait at most S seconds for the colour's backends to be healthy
#                                                    (env DEPLOY_HEALTH_TIMEOUT, default 60)
#       --timeout S          give up following after S seconds, 0 = never; the rollout
#                            goes on without us     (env DEPLOY_TIMEOUT, default 0)
#       --poll S             seconds between polls   (env DEPLOY_POLL, default 1)
#
# Exit status: 0 promoted, 2 rolled back or aborted, 1 any error (refused dry run,
# unhealthy colour, unreachable socket, superseded rollout, timeout).
set -euo pipefail

SOCKET=${CUTOVER_SOCKET:-cutover.sock}
COLOR=${DEPLOY_COLOR:-green}
STEPS=${DEPLOY_STEPS:-1,10,50,100}
STEP=${DEPLOY_STEP:-}
MAX_ERROR_RATE=${DEPLOY_MAX_ERROR_RATE:-1%}
MAX_P99=${DEPLOY_MAX_P99:-}
MIN_REQUESTS=${DEPLOY_MIN_REQUESTS:-}
HEALTH_TIMEOUT=${DEPLOY_HEALTH_TIMEOUT:-60}
TIMEOUT=${DEPLOY_TIMEOUT:-0}
POLL=${DEPLOY_POLL:-1}

die() {
    echo "deploy: $*" >&2
    exit 1
}

usage() {
    sed -n '2,22s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ "$#" -gt 0 ]; do
    case $1 in
    -s | --socket) SOCKET=${2:?}; shift 2 ;;
    -c | --color) COLOR=${2:?}; shift 2 ;;
    --steps) STEPS=${2:?}; shift 2 ;;
    --step) STEP=${2:?}; shift 2 ;;
    --max-error-rate) MAX_ERROR_RATE=${2:?}; shift 2 ;;
    --max-p99) MAX_P99=${2:?}; shift 2 ;;
    --min-requests) MIN_REQUESTS=${2:?}; shift 2 ;;
    --health-timeout) HEALTH_TIMEOUT=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --poll) POLL=${2:?}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "deploy: unknown argument $1" >&2; usage 1 >&2 ;;
    esac
done

for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done
case $COLOR in blue | green) ;; *) die "colour must be blue or green, not $COLOR" ;; esac
for n in "$HEALTH_TIMEOUT" "$TIMEOUT"; do
    [[ $n =~ ^[0-9]+$ ]] || die "a timeout must be whole seconds, not $n"
done

# api METHOD PATH [BODY]: one admin call. Sets STATUS (the HTTP status) and BODY.
STATUS=000
BODY=
api() {
    local method=$1 path=$2 out
    local args=(-sS --max-time 10 --unix-socket "$SOCKET" -X "$method" -w '\n%{http_code}')
    if [ "$#" -ge 3 ]; then
        args+=(-H 'content-type: application/json' --data "$3")
    fi
    out=$(curl "${args[@]}" "http://cutover$path") || die "cannot reach cutover at $SOCKET"
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
}

# The server's error text of the last answer (or the whole body).
error_text() {
    jq -r '.error // .' <<<"$BODY" 2>/dev/null || printf '%s\n' "$BODY"
}

# The plan: the rollout body, built (and its numbers checked) by jq.
PLAN=$(jq -cn \
    --arg to "$COLOR" --arg steps "$STEPS" --arg step "$STEP" \
    --arg rate "$MAX_ERROR_RATE" --arg p99 "$MAX_P99" --arg min "$MIN_REQUESTS" '
    def num: if test("^ *[0-9]+(\\.[0-9]+)? *$") then tonumber
             else error("\(.) is not a number") end;
    def rate: if endswith("%") then (rtrimstr("%") | num) / 100 else num end;
    {
        to: $to,
        steps: ($steps | split(",") | map(
            rtrimstr("%") as $s
            | if test(":") then (split(":") | {percent: (.[0] | rtrimstr("%") | num), duration: .[1]})
              else ($s | num) end)),
        gates: ({}
            + (if $rate == "" then {} else {max_error_rate: ($rate | rate)} end)
            + (if $p99 == "" then {} else {max_p99: $p99} end)
            + (if $min == "" then {} else {min_requests: ($min | num)} end))
    }
    + (if $step == "" then {} else {step_duration: $step} end)
') || die "bad --steps or gate value (see above)"

echo "deploy: waiting up to ${HEALTH_TIMEOUT}s for $COLOR to be healthy"
deadline=$((SECONDS + HEALTH_TIMEOUT))
while :; do
    api GET /status
    [ "$STATUS" = 200 ] || die "GET /status answered $STATUS: $(error_text)"
    pool=$(jq -r --arg c "$COLOR" '.pools[$c] | "\(.healthy) \(.total)"' <<<"$BODY")
    read -r healthy total <<<"$pool"
    if [ "$total" -gt 0 ] && [ "$healthy" -eq "$total" ]; then
        echo "deploy: $COLOR is healthy ($healthy/$total backends)"
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        die "$COLOR is not healthy after ${HEALTH_TIMEOUT}s ($healthy/$total backends up)"
    fi
    sleep 1
done

api POST /rollout "$(jq -c '. + {dry_run: true}' <<<"$PLAN")"
[ "$STATUS" = 200 ] || die "the dry run was refused ($STATUS): $(error_text)"
echo "deploy: dry run ok: $(jq -r '.rollout | "\(.from) → \(.plan.to), \(.plan.steps | map("\(.weight / 100)% for \(.duration)") | join(", "))"' <<<"$BODY")"

api POST /rollout "$PLAN"
[ "$STATUS" = 200 ] || die "the rollout did not start ($STATUS): $(error_text)"
id=$(jq -r .id <<<"$BODY")
echo "deploy: rollout $id started"

started=$SECONDS
last=
while :; do
    api GET /rollout
    [ "$STATUS" = 200 ] || die "GET /rollout answered $STATUS: $(error_text)"
    [ "$(jq -r .id <<<"$BODY")" = "$id" ] || die "another rollout replaced ours"
    state=$(jq -r .state <<<"$BODY")
    line=$(jq -r '"step \(.step + 1)/\(.plan.steps | length) at \(.weight / 100)%: \(.state)"
        + (if .reason then " (\(.reason))" else "" end)' <<<"$BODY")
    if [ "$line" != "$last" ]; then
        echo "deploy: $line"
        last=$line
    fi
    case $state in
    promoted)
        echo "deploy: $COLOR is live"
        exit 0
        ;;
    rolled_back | aborted)
        echo "deploy: $state; $(jq -r .from <<<"$BODY") is live" >&2
        jq -r '.breach // empty | "deploy: breach: \(.gate) measured \(.value) against \(.threshold)"' <<<"$BODY" >&2
        exit 2
        ;;
    running | paused | awaiting_approval) ;;
    *) die "the rollout ended $state: $(jq -r '.reason // ""' <<<"$BODY")" ;;
    esac
    if [ "$TIMEOUT" -gt 0 ] && [ $((SECONDS - started)) -ge "$TIMEOUT" ]; then
        die "still $state after ${TIMEOUT}s; it goes on (see cutover ctl rollout status)"
    fi
    sleep "$POLL"
done
