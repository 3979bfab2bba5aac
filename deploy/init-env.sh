#!/bin/sh
# Write .env for docker-compose.gpu.yml: a copy of .env.example with fresh secrets
# (RAY_AUTH_TOKEN, DEEPGUARD_API_TOKEN, GRAFANA_ADMIN_PASSWORD) and the compose profile.
#
#   deploy/init-env.sh gpu     # NVIDIA GPU host
#   deploy/init-env.sh cpu     # host without a GPU
#
# It never overwrites an existing .env. Keep a copy of .env with your backups: the tokens
# in it are what clients and a rebuilt host need.
set -eu
cd "$(dirname "$0")/.."
profile="${1:-gpu}"
case "$profile" in
    gpu | cpu) ;;
    *)
        echo "usage: deploy/init-env.sh gpu|cpu" >&2
        exit 2
        ;;
esac
if [ -e .env ]; then
    echo "deploy/init-env.sh: .env exists; not overwriting it" >&2
    exit 1
fi

secret() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# KEY=VALUE, where KEY stands in the file (commented out or not), else appended
set_key() {
    if grep -Eq "^(# ?)?$1=" .env.tmp; then
        sed -i -E "s|^(# ?)?$1=.*|$1=$2|" .env.tmp
    else
        printf '%s=%s\n' "$1" "$2" >>.env.tmp
    fi
}

umask 077
cp .env.example .env.tmp
set_key COMPOSE_PROFILES "$profile"
set_key RAY_AUTH_TOKEN "$(secret 32)"
set_key DEEPGUARD_API_TOKEN "$(secret 32)"
set_key GRAFANA_ADMIN_PASSWORD "$(secret 12)"
mv .env.tmp .env
echo "wrote .env (profile $profile) with new secrets; review it, then: docker compose build"
