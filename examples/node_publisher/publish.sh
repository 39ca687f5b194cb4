#!/usr/bin/env bash
# Publish one signed murmur task with redis-cli and wait for its signed result.
#
#   ./publish.sh AGENT 'INPUT_JSON'        # env: REDIS_URL, MURMUR_SIGNING_KEYS, TIMEOUT
#
# Needs bash, redis-cli and openssl (for HMAC-SHA256). The key comes from
# MURMUR_SIGNING_KEYS ("kid:hexkey" or "hexkey", comma-separated; the first one signs);
# without it the task is unsigned. Prints the result body on stdout. Exit codes: 0 ok,
# 1 task error or rejected, 2 usage or bad result signature, 3 timeout.
# For rediss:// add --tls to REDIS_CLI_FLAGS. Wire format: docs/wire-format.md.
set -euo pipefail

agent=${1:?usage: publish.sh AGENT INPUT_JSON}
input=${2:-null}
redis_url=${REDIS_URL:-redis://localhost:6379}
timeout=${TIMEOUT:-30}
read -r -a flags <<<"${REDIS_CLI_FLAGS:-}"
rcli() { redis-cli -u "$redis_url" "${flags[@]}" "$@"; }

# hex(HMAC-SHA256(key, domain + body)) over the exact body bytes.
hmac_hex() { # DOMAIN BODY KEY_HEX
    printf '%s\n%s' "$1" "$2" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$3" -r | cut -d' ' -f1
}

now_ms=$(($(date +%s) * 1000))
task_id=$(openssl rand -hex 16)
reply_to="murmur.results.sh-$(openssl rand -hex 6)"
body=$(printf '{"v":1,"task_id":"%s","agent":"%s","input":%s,"reply_to":"%s","events_topic":null,"request_id":"%s","created_at":%d,"expires_at":%d}' \
    "$task_id" "$agent" "$input" "$reply_to" "$task_id" "$now_ms" "$((now_ms + 600000))")

fields=(body "$body" content-type application/json)
key_hex=""
if [[ -n "${MURMUR_SIGNING_KEYS:-}" ]]; then
    entry=${MURMUR_SIGNING_KEYS%%,*} # the first key signs
    key_hex=${entry##*:}
    if [[ $entry == *:* ]]; then
        kid=${entry%:*}
    else # default key id: the first 8 hex characters of sha256(key)
        kid=$(printf '%b' "$(sed 's/../\\x&/g' <<<"$key_hex")" | openssl dgst -sha256 -r | cut -c1-8)
    fi
    fields+=(murmur-sig "$(hmac_hex murmur/v1/task "$body" "$key_hex")" murmur-kid "$kid")
fi

rcli XADD "murmur.$agent.tasks" '*' "${fields[@]}" >/dev/null
echo "task $task_id -> murmur.$agent.tasks; waiting on $reply_to" >&2
trap 'rcli DEL "$reply_to" >/dev/null' EXIT

# The fresh results stream holds only our answer. --raw prints the reply flat:
# stream name, entry id, then field and value lines.
mapfile -t reply < <(rcli --raw XREAD COUNT 1 BLOCK "$((timeout * 1000))" STREAMS "$reply_to" 0-0)
if ((${#reply[@]} < 4)); then
    echo "no result within ${timeout}s" >&2
    exit 3
fi
declare -A result=()
for ((i = 2; i + 1 < ${#reply[@]}; i += 2)); do
    result[${reply[i]}]=${reply[i + 1]}
done
if [[ -n $key_hex && "$(hmac_hex murmur/v1/result "${result[body]}" "$key_hex")" != "${result[murmur-sig]:-}" ]]; then
    echo "result signature does not verify" >&2
    exit 2
fi
printf '%s\n' "${result[body]}"
[[ ${result[body]} == *'"status":"ok"'* ]]
