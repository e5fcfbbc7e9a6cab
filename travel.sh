#!/usr/bin/env bash
#
# travel.sh: run the data-waddle pipeline end to end.
#
#   download -> schema -> load -> export -> metrics
#
# download_dataset.py fetches the three CSVs; travel.sql goes through psql with
# ON_ERROR_STOP; transform_load_csv_data.py cleanses and loads PostgreSQL;
# batch_transfer_data_to_cloud_storage.py exports the day's batches to S3; the Lambda's
# code (lambda/lambda_function.py) then prints the day's per-destination metrics.
#
# Local mode: with no .env and none of the pipeline's variables set, everything runs on
# this machine: the sample dataset in sample_data/ (or a generated one, --rows N), an
# embedded PostgreSQL with its data in .local/postgres, and moto's S3 server on 127.0.0.1
# whose bucket is mirrored to .local/s3. Needs `pip install -r requirements-dev.txt`.
# Local runs take turns on .local: a second one while the first runs is refused.
# Configured mode: with .env (or --env-file, or the variables set) nothing is started;
# the configured sources, PostgreSQL and S3 are used.
#
# Needs bash 4+ and python3 3.11+ (the one on PATH, or $PYTHON, or ./.venv).

set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO_DIR
readonly STAGES=(download schema load export metrics)
readonly LOCAL_STATE=".local"
# Any of these in the environment means "configured": local mode never overrides them.
readonly CONFIG_VARS=(
  DATABASE_URL DB_SECRET_ID PGHOST PGHOSTADDR PGDATABASE PGSERVICE S3_BUCKET_NAME
  CUSTOMER_CSV_URL DESTINATION_CSV_URL BOOKING_CSV_URL
)

FROM_STAGE="download"
ONLY_STAGE=""
ENV_FILE=""
ROWS=""
DAY=""
VERBOSE=()
PYTHON_BIN=""
SERVICES_PID=""
SERVICES_IN=""
SERVICES_OUT=""
LOCK_FD=""

usage() {
  cat <<EOF
Usage: ./travel.sh [options]

Runs the pipeline: ${STAGES[*]}.
With no .env and no pipeline variables set it runs in local mode (sample data, embedded
PostgreSQL, local S3 server; state under ${LOCAL_STATE}/); otherwise it uses the configured
services.

Options:
  --from STAGE      start at STAGE and run the stages after it
  --only STAGE      run STAGE alone
  --env-file FILE   read configuration from FILE (instead of ./.env beside travel.sh)
  --rows N          local mode: a generated dataset of N customers and N bookings
                    instead of the shipped sample (cached in ${LOCAL_STATE}/)
  --date YYYY-MM-DD the export's day (default: today in UTC)
  --verbose         pass --verbose to every stage
  -h, --help        show this help

Exit status: 0 on success, else the exit status of the first stage that failed
(2 for bad usage of travel.sh itself).
EOF
}

say() {
  echo "travel.sh: $*" >&2
}

err() {
  echo "travel.sh: error: $*" >&2
}

die_usage() {
  err "$*"
  echo "Try './travel.sh --help'." >&2
  exit 2
}

is_stage() {
  local name="$1" stage
  for stage in "${STAGES[@]}"; do
    [[ "${stage}" == "${name}" ]] && return 0
  done
  return 1
}

parse_args() {
  while (($# > 0)); do
    case "$1" in
      -h | --help)
        usage
        exit 0
        ;;
      --from | --only | --env-file | --rows | --date)
        (($# >= 2)) || die_usage "$1 needs a value"
        case "$1" in
          --from) FROM_STAGE="$2" ;;
          --only) ONLY_STAGE="$2" ;;
          --env-file) ENV_FILE="$2" ;;
          --rows) ROWS="$2" ;;
          --date) DAY="$2" ;;
        esac
        shift 2
        ;;
      --verbose)
        VERBOSE=(--verbose)
        shift
        ;;
      *) die_usage "unknown argument: $1" ;;
    esac
  done
  is_stage "${FROM_STAGE}" || die_usage "unknown stage for --from: ${FROM_STAGE} (stages: ${STAGES[*]})"
  if [[ -n "${ONLY_STAGE}" ]] && ! is_stage "${ONLY_STAGE}"; then
    die_usage "unknown stage for --only: ${ONLY_STAGE} (stages: ${STAGES[*]})"
  fi
  if [[ -n "${ROWS}" && ! "${ROWS}" =~ ^[1-9][0-9]*$ ]]; then
    die_usage "--rows needs a positive whole number, got: ${ROWS}"
  fi
  if [[ -n "${ENV_FILE}" ]]; then
    [[ -f "${ENV_FILE}" ]] || die_usage "env file ${ENV_FILE} does not exist"
    ENV_FILE="$(cd "$(dirname "${ENV_FILE}")" && pwd)/$(basename "${ENV_FILE}")"
  fi
}

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    PYTHON_BIN="${PYTHON}"
  elif [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO_DIR}/.venv/bin/python" ]]; then
    PYTHON_BIN="${REPO_DIR}/.venv/bin/python"
  else
    PYTHON_BIN="python3"
  fi
  command -v "${PYTHON_BIN}" >/dev/null || { err "python not found: ${PYTHON_BIN}"; exit 1; }
}

is_configured() {
  local var
  [[ -n "${ENV_FILE}" || -f "${REPO_DIR}/.env" ]] && return 0
  for var in "${CONFIG_VARS[@]}"; do
    [[ -n "${!var:-}" ]] && return 0
  done
  return 1
}

configuration_source() {
  if [[ -n "${ENV_FILE}" ]]; then
    echo "${ENV_FILE} and the environment"
  elif [[ -f "${REPO_DIR}/.env" ]]; then
    echo "${REPO_DIR}/.env and the environment"
  else
    echo "the environment"
  fi
}

selected_stages() {
  local stage started=""
  for stage in "${STAGES[@]}"; do
    if [[ -n "${ONLY_STAGE}" ]]; then
      [[ "${stage}" == "${ONLY_STAGE}" ]] && echo "${stage}"
    else
      [[ "${stage}" == "${FROM_STAGE}" ]] && started=1
      [[ -n "${started}" ]] && echo "${stage}"
    fi
  done
  return 0
}

# --- local mode ------------------------------------------------------------------------

# One local run at a time: a second one would stop the first's PostgreSQL (a server it did
# not start looks left over) and share its downloads. The lock belongs to the open lock
# file, which this script and its services keep open (bash does not pass it to the stages),
# so it ends with the run however the run ends, kill -9 included.
lock_local_state() {
  local holder status=0
  if ! mkdir -p "${LOCAL_STATE}" 2>/dev/null; then
    err "cannot create the folder ${REPO_DIR}/${LOCAL_STATE} for local mode (is a file in the way?)"
    exit 1
  fi
  exec {LOCK_FD}<>"${LOCAL_STATE}/travel.lock"
  holder="$("${PYTHON_BIN}" -m waddle_common.local_services lock --pid "$$" <&"${LOCK_FD}")" || status=$?
  if ((status == 3)); then
    err "another travel.sh run is using ${REPO_DIR}/${LOCAL_STATE} (pid ${holder:-unknown});" \
      "local mode runs one at a time: wait for it to finish"
    exit 1
  elif ((status != 0)); then
    err "cannot lock ${REPO_DIR}/${LOCAL_STATE}/travel.lock (see the lines above)"
    exit 1
  fi
}

start_local_services() {
  local line fd pid
  # A coprocess: it stops its services when this script closes its stdin, so a killed
  # travel.sh cannot leave a PostgreSQL or S3 server behind. It holds the lock on fd 3.
  coproc LOCAL {
    exec "${PYTHON_BIN}" -m waddle_common.local_services serve --state "${LOCAL_STATE}" --lock-fd 3 \
      2>&1 3<&"${LOCK_FD}"
  }
  pid="${LOCAL_PID}"
  # Bash closes a coprocess's descriptors once it has reaped it: reading then fails with
  # "Bad file descriptor" and loses its last lines. Keep copies, and close the originals so
  # that closing our copy of its stdin is what tells it to stop.
  exec {SERVICES_OUT}<&"${LOCAL[0]}" {SERVICES_IN}>&"${LOCAL[1]}"
  SERVICES_PID="${pid}"
  fd="${LOCAL[0]}"
  exec {fd}<&-
  fd="${LOCAL[1]}"
  exec {fd}>&-
  while IFS= read -r line <&"${SERVICES_OUT}"; do
    [[ "${line}" == "READY" ]] && break
    say "  ${line}"
  done
  if [[ "${line:-}" != "READY" ]]; then
    err "the local services did not start (see the lines above)"
    exit 1
  fi
  set -a
  # shellcheck source=/dev/null
  . "${LOCAL_STATE}/services.env"
  set +a
}

stop_local_services() {
  [[ -n "${SERVICES_PID}" ]] || return 0
  local line status=0
  # Closing its stdin tells the coprocess to mirror the bucket and stop the servers.
  exec {SERVICES_IN}>&-
  while IFS= read -r line <&"${SERVICES_OUT}"; do
    say "  ${line}"
  done
  exec {SERVICES_OUT}<&-
  wait "${SERVICES_PID}" 2>/dev/null || status=$?
  SERVICES_PID=""
  if ((status > 128)); then
    err "the local services were killed (signal $((status - 128))) before the run ended;" \
      "the next run stops what they left running"
  fi
}

local_dataset() {
  if [[ -z "${ROWS}" ]]; then
    echo "${REPO_DIR}/sample_data"
    return
  fi
  local dir="${REPO_DIR}/${LOCAL_STATE}/generated-${ROWS}"
  if [[ ! -f "${dir}/booking.csv" ]]; then
    "${PYTHON_BIN}" "${REPO_DIR}/sample_data/generate.py" --rows "${ROWS}" --dirty --out "${dir}.tmp" >&2
    rm -rf "${dir}"
    mv "${dir}.tmp" "${dir}"
  fi
  echo "${dir}"
}

enter_local_mode() {
  local data table
  say "local mode: no .env and no pipeline variables set, so everything runs on this machine"
  data="$(local_dataset)"
  say "  sources:    ${data}/{customer,destination,booking}.csv (file:// URLs)"
  for table in customer destination booking; do
    export "${table^^}_CSV_URL=file://${data}/${table}.csv"
  done
  export DOWNLOAD_DIR="${LOCAL_STATE}/download" REJECTS_DIR="${LOCAL_STATE}/rejects"
  say "  files:      downloads in ${REPO_DIR}/${DOWNLOAD_DIR}, rejected rows in ${REPO_DIR}/${REJECTS_DIR}"
  start_local_services
}

# --- stages ----------------------------------------------------------------------------

env_file_args() {
  [[ -n "${ENV_FILE}" ]] && printf '%s\n' --env-file "${ENV_FILE}"
  return 0
}

stage_download() {
  "${PYTHON_BIN}" download_dataset.py "${COMMON_ARGS[@]}"
}

stage_schema() {
  # psql reads the connection (password included) from the environment the shared module
  # derives from .env / DATABASE_URL / DB_SECRET_ID: never from its argument list.
  "${PYTHON_BIN}" -m waddle_common "${COMMON_ARGS[@]}" psql -- -X -q -v ON_ERROR_STOP=1 -f travel.sql
}

stage_load() {
  "${PYTHON_BIN}" transform_load_csv_data.py "${COMMON_ARGS[@]}"
}

stage_export() {
  "${PYTHON_BIN}" batch_transfer_data_to_cloud_storage.py "${COMMON_ARGS[@]}" --date "${DAY}"
}

stage_metrics() {
  "${PYTHON_BIN}" lambda/lambda_function.py "${COMMON_ARGS[@]}" --date "${DAY}"
}

elapsed_since() {
  local start="$1" now="${EPOCHREALTIME:-${SECONDS}}"
  awk -v a="${start}" -v b="${now}" 'BEGIN { printf "%.1f", b - a }'
}

run_stage_timed() {
  local stage="$1" number="$2" total="$3" start status=0
  start="${EPOCHREALTIME:-${SECONDS}}"
  say "[${number}/${total}] ${stage}: started"
  "stage_${stage}" || status=$?
  if ((status != 0)); then
    err "stage ${stage} failed with exit status ${status} after $(elapsed_since "${start}") s; stopping"
    exit "${status}"
  fi
  say "[${number}/${total}] ${stage}: done in $(elapsed_since "${start}") s"
}

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  stop_local_services
  exit "${status}"
}

main() {
  local stages stage number=0 run_start
  parse_args "$@"
  cd "${REPO_DIR}"
  find_python
  # The stages import waddle_common from here, also when PYTHONSAFEPATH keeps a script's
  # folder and the working directory off sys.path.
  PYTHONPATH="${REPO_DIR}${PYTHONPATH:+:${PYTHONPATH}}"
  export PYTHONPATH
  LC_NUMERIC=C
  export LC_NUMERIC
  DAY="${DAY:-$(date -u +%F)}"
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if is_configured; then
    [[ -z "${ROWS}" ]] || die_usage "--rows generates data for local mode; in configured mode the *_CSV_URL sources are used"
    say "configured mode: settings from $(configuration_source); nothing local is started"
  else
    lock_local_state
    enter_local_mode
  fi
  mapfile -t COMMON_ARGS < <(env_file_args)
  COMMON_ARGS+=("${VERBOSE[@]}")
  mapfile -t stages < <(selected_stages)
  run_start="${EPOCHREALTIME:-${SECONDS}}"
  for stage in "${stages[@]}"; do
    number=$((number + 1))
    run_stage_timed "${stage}" "${number}" "${#stages[@]}"
  done
  say "all ${#stages[@]} stages done in $(elapsed_since "${run_start}") s (export day ${DAY})"
}

main "$@"
