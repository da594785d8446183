#!/usr/bin/env bash
# Start an MLflow tracking server for dgmeta: SQLite backend, artifacts proxied by the server.
#
#   mlflow/start_server.sh                     # ./mlflow-server/{mlflow.db,artifacts}, 127.0.0.1:5000
#   MLFLOW_PORT=5001 MLFLOW_HOME=/data/mlflow mlflow/start_server.sh
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then every dgmeta command logs there
#
# Binds to localhost only; see mlflow/README.md before exposing it to a network.
set -euo pipefail

HOME_DIR="${MLFLOW_HOME:-$PWD/mlflow-server}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
MLFLOW_BIN="${MLFLOW_BIN:-mlflow}"

mkdir -p "$HOME_DIR/artifacts"
HOME_DIR="$(cd "$HOME_DIR" && pwd)"

echo "MLflow tracking server: http://$HOST:$PORT (store $HOME_DIR/mlflow.db, artifacts $HOME_DIR/artifacts)"
echo "point dgmeta at it with: export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
exec "$MLFLOW_BIN" server \
    --backend-store-uri "sqlite:///$HOME_DIR/mlflow.db" \
    --artifacts-destination "$HOME_DIR/artifacts" \
    --host "$HOST" \
    --port "$PORT" \
    --workers "$WORKERS"
