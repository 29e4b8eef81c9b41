#!/usr/bin/env bash
# One entry point for set-up, demo, tests and benchmarks.
#   ./pancreasai.sh demo     set up (if needed), then segment / assess the bundled samples
#   ./pancreasai.sh test     set up (if needed), then run the test suite
#   ./pancreasai.sh bench    set up (if needed), then run the benchmarks
#   ./pancreasai.sh setup    only create .venv and install the pinned requirements
#   ./pancreasai.sh mutation set up, then mutation-test the core (output/mutation/REPORT.md; long)
#   ./pancreasai.sh review DIR  set up, then review a results folder in the browser (verdicts -> DIR/review.csv)
# Options after the command go to it: ./pancreasai.sh test -m "not slow", ./pancreasai.sh demo --help
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
venv="${PANCREASAI_VENV:-$here/.venv}"
py="$venv/bin/python"

setup() {
  local stamp="$venv/.requirements.sha256"
  local want
  want="$(cat "$here/requirements-dev.txt" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "Setting up $venv (first run installs about 7 GB; later runs reuse it)..."
  command -v python3.11 >/dev/null && base=python3.11 || base=python3
  "$base" -m venv "$venv"
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet -r "$here/requirements-dev.txt"
  "$py" -m pip install --quiet --no-deps -e "$here"
  echo "$want" > "$stamp"
}

browser() {
  # The browser tests (Testing/test_review_browser.py) drive Debian's chromium through Playwright,
  # whose own browser download is not used. Installed here when missing and this user may.
  command -v chromium >/dev/null && return 0
  local run=""
  if [[ "$(id -u)" != 0 ]]; then
    sudo -n true 2>/dev/null && run="sudo -n" || {
      echo "No chromium: install it (apt-get install chromium) or deselect the browser tests with -m 'not browser'." >&2
      return 0; }
  fi
  command -v apt-get >/dev/null || { echo "No chromium and no apt-get: install a chromium to run the browser tests." >&2; return 0; }
  echo "Installing Debian's chromium for the browser tests..."
  $run apt-get update -qq && DEBIAN_FRONTEND=noninteractive $run apt-get install -y -qq chromium >/dev/null
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; exec "$py" "$here/Resources/demo.py" "$@" ;;
  test)  setup; browser; cd "$here"; exec "$py" -m pytest Testing "$@" ;;
  bench) setup; exec "$py" "$here/Testing/Benchmarks/benchmark.py" "$@" ;;
  mutation) setup; exec "$py" "$here/Testing/Mutation/mutation.py" "$@" ;;
  review) setup; exec "$py" -m PancreasAILib.pancreasai_cli review "$@" ;;
  help|-h|--help) sed -n '2,10p' "$0" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
