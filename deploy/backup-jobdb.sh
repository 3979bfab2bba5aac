#!/bin/sh
# Online backup of the SQLite job store, taken inside the running dashboard container with
# SQLite's backup API (the store runs in WAL mode: copying jobs.sqlite3 is not a backup).
#
#   deploy/backup-jobdb.sh [DIR]     # default DIR: backups/; keeps the newest $KEEP (14)
#
# Prints the path of the new backup. Run it from cron, e.g. /etc/cron.d/deepguard:
#   15 3 * * * root cd /opt/deepguard && deploy/backup-jobdb.sh /srv/backups/deepguard
set -eu
cd "$(dirname "$0")/.."
dir="${1:-backups}"
keep="${KEEP:-14}"
stamp="$(date +%Y%m%d-%H%M%S)"
snapshot="/jobdb/.backup-$stamp.sqlite3"
mkdir -p "$dir"

docker compose exec -T dashboard sqlite3 /jobdb/jobs.sqlite3 ".backup '$snapshot'"
check="$(docker compose exec -T dashboard sqlite3 "$snapshot" 'PRAGMA integrity_check')"
if [ "$check" != "ok" ]; then
    docker compose exec -T dashboard rm -f "$snapshot"
    echo "deploy/backup-jobdb.sh: the snapshot failed its integrity check: $check" >&2
    exit 1
fi
docker compose cp "dashboard:$snapshot" "$dir/jobs-$stamp.sqlite3"
docker compose exec -T dashboard rm -f "$snapshot"

# keep the newest $keep backups
ls -1t "$dir"/jobs-*.sqlite3 | tail -n +"$((keep + 1))" | while read -r old; do rm -f "$old"; done
echo "$dir/jobs-$stamp.sqlite3"
