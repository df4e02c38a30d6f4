#!/usr/bin/env bash
# Checks and unit-tests nodewave's Prometheus alert rules with promtool:
#   1. promtool check rules   deploy/prometheus/nodewave-rules.yaml
#   2. promtool test rules    deploy/prometheus/tests/*.yaml
#   3. spec.groups of deploy/prometheus/nodewave-prometheusrule.yaml equals the
#      plain rules file's groups (and passes `promtool check rules` itself).
# Installs Debian's `prometheus` package when promtool is missing.
# Usage: hack/promtool-test.sh        (from anywhere; exits non-zero on failure)
set -euo pipefail

cd "$(dirname "$0")/.."
rules=deploy/prometheus/nodewave-rules.yaml
operator_rules=deploy/prometheus/nodewave-prometheusrule.yaml

install_promtool() {
  echo "promtool not found; installing Debian's prometheus package" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to apt-get install prometheus" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq prometheus >/dev/null
  # We only want promtool: the package enables and may start a Prometheus
  # server on :9090, which would clash with the Prometheus the e2e tests start.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${sudo[@]}" systemctl stop prometheus || true
    "${sudo[@]}" systemctl disable --quiet prometheus || true
  fi
}

command -v promtool >/dev/null || install_promtool
promtool --version 2>&1 | head -n1

echo "== promtool check rules $rules"
promtool check rules "$rules"

echo "== promtool test rules deploy/prometheus/tests/*.yaml"
promtool test rules deploy/prometheus/tests/*.yaml

echo "== $operator_rules spec.groups == $rules groups"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The PrometheusRule is the plain file's `groups:` block indented by two
# spaces under `spec:`; strip that indent and compare text.
sed -n '/^groups:/,$p' "$rules" > "$tmp/plain.yaml"
sed -n '/^  groups:/,$p' "$operator_rules" | sed 's/^  //' > "$tmp/operator.yaml"
if ! diff -u "$tmp/plain.yaml" "$tmp/operator.yaml"; then
  echo "FAIL: $operator_rules spec.groups differs from $rules; regenerate it (see docs/metrics.md)" >&2
  exit 1
fi
promtool check rules "$tmp/operator.yaml" >/dev/null
# Semantic comparison as well when PyYAML is available (the text comparison
# above already implies it; this catches a hand-edited file that still parses
# differently, e.g. a changed block-scalar indicator).
if command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null; then
  python3 - "$rules" "$operator_rules" <<'PY'
import sys, yaml
plain = yaml.safe_load(open(sys.argv[1]))["groups"]
op = yaml.safe_load(open(sys.argv[2]))
assert op["apiVersion"] == "monitoring.coreos.com/v1" and op["kind"] == "PrometheusRule", "not a PrometheusRule"
assert op["spec"]["groups"] == plain, "spec.groups differs from the plain rules file"
PY
fi
echo "OK: alert rules checked, unit-tested, PrometheusRule in sync"
