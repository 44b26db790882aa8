#!/usr/bin/env bash
# Brings the dev stack up in one command: Redis (flags all off) and one
# reportd on SQLite, built from this checkout, at http://localhost:${APP_PORT:-8000}.
#
#   bash scripts/dev-up.sh            # build, start, wait until healthy
#   docker compose --profile dev down # stop it (add -v to drop the data)
#
# A missing .env is created from .env.example with random secrets.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v docker >/dev/null 2>&1 || { echo "docker not found: install Docker (with the compose plugin)" >&2; exit 1; }
docker compose version >/dev/null 2>&1 || { echo "the docker compose plugin is missing" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }

random_secret() {
    # 32 random bytes as hex: no character that needs quoting in .env or a URL.
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

if [ ! -f .env ]; then
    echo "creating .env from .env.example with random secrets"
    sed -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(random_secret)/" \
        -e "s/^JWT_SECRET=.*/JWT_SECRET=$(random_secret)/" \
        -e "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$(random_secret)/" \
        -e "s/^GRAFANA_ADMIN_PASSWORD=.*/GRAFANA_ADMIN_PASSWORD=$(random_secret)/" \
        -e "s/^APP_ENV=.*/APP_ENV=dev/" \
        .env.example > .env
    chmod 600 .env
fi

docker compose --profile dev up -d --build

# Wait until both containers report healthy (their HEALTHCHECKs: redis-cli
# ping with the password, `reportd healthcheck`).
echo -n "waiting for the stack to be healthy"
for _ in $(seq 1 90); do
    unhealthy=0
    for service in redis app; do
        id=$(docker compose --profile dev ps -q "$service")
        status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
        [ "$status" = healthy ] || unhealthy=1
    done
    if [ "$unhealthy" -eq 0 ]; then
        echo
        port=$(grep -E '^APP_PORT=' .env | cut -d= -f2); port=${port:-8000}
        echo "reportd is up: http://localhost:${port}/ (readiness: http://localhost:${port}/readyz)"
        exit 0
    fi
    echo -n .
    sleep 2
done
echo
echo "the stack did not become healthy in 3 minutes; its logs:" >&2
docker compose --profile dev logs --tail 50 >&2
exit 1
