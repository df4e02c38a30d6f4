#!/usr/bin/env bash
# nodewave demo: a local cluster, a Git repository made from examples-repo/, and
# nodewave rolling a good change out pool by pool, then catching a bad one.
#
#   hack/demo.sh          run the demo; at the end press Enter (or Ctrl-C) to clean up
#   hack/demo.sh --keep   run the demo and leave the cluster and nodewave running
#   hack/demo.sh down     stop what a --keep run left running
#
# Settings (environment):
#   NODEWAVE_DEMO_CLUSTER  cluster name      (default: nodewave-demo; never the shared "nodewave")
#   NODEWAVE_DEMO_DIR      work directory    (default: ${TMPDIR:-/tmp}/nodewave-demo)
#   NODEWAVE_DEMO_PORT     first port tried for nodewave's HTTP server on 127.0.0.1 (default: 18080)
#
# Needs: cargo, git, curl; Go on the first run only (hack/cluster.sh builds the
# control-plane binaries once and caches them under ~/.cache/nodewave).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

cluster="${NODEWAVE_DEMO_CLUSTER:-nodewave-demo}"
work="${NODEWAVE_DEMO_DIR:-${TMPDIR:-/tmp}/nodewave-demo}"
first_port="${NODEWAVE_DEMO_PORT:-18080}"

# Settings meant for nodewave or hack/cluster.sh in the caller's shell (another
# cluster, a config file, a branch...) must not leak into the demo.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^NODEWAVE_' || true)
unset KUBECONFIG

repo="$work/repo"
log="$work/nodewave.log"
pidfile="$work/nodewave.pid"
marker="$work/.nodewave-demo"
kwok_home="${KWOK_WORKDIR:-$HOME/.kwok}"
kubeconfig="$kwok_home/clusters/$cluster/kubeconfig.yaml"
nodewave="$root/target/debug/nodewave"

keep=false
nodewave_pid=""
started=$SECONDS
exit_code=0
cleaned=false

# ---------------------------------------------------------------- output helpers

if [ -t 1 ]; then
  bold=$'\e[1m' dim=$'\e[2m' green=$'\e[32m' red=$'\e[31m' yellow=$'\e[33m' reset=$'\e[0m'
else
  bold="" dim="" green="" red="" yellow="" reset=""
fi

elapsed() { local s=$((SECONDS - started)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
step() { printf '\n%s==> %s%s %s[%s]%s\n' "$bold" "$*" "$reset" "$dim" "$(elapsed)" "$reset"; }
say() { printf '    %s\n' "$@"; }
ok() { printf '    %s✔ %s%s\n' "$green" "$*" "$reset"; }
warn() { printf '    %s! %s%s\n' "$yellow" "$*" "$reset"; }
die() {
  printf '\n%serror: %s%s\n' "$red" "$*" "$reset" >&2
  if [ -s "$log" ]; then
    printf '\nlast lines of %s:\n' "$log" >&2
    strip_ansi <"$log" | grep -v '^[-+@ ]' | tail -n 15 | cut -c1-220 >&2
  fi
  if $keep; then
    printf '\n(--keep: the cluster and nodewave are left running; stop them with hack/demo.sh down)\n' >&2
  fi
  exit 1
}

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# ---------------------------------------------------------------- cluster and process helpers

kubectl() { command "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
nw() { "$nodewave" "$@"; }
cluster_sh() { NODEWAVE_CLUSTER="$cluster" "$here/cluster.sh" "$@"; }

# The pid in $pidfile, only if it is still a nodewave process of this demo.
demo_pid() {
  local pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "nodewave run .*--repo $repo" || return 1
  echo "$pid"
}

stop_nodewave() {
  local pid i
  pid="$(demo_pid)" || { rm -f "$pidfile"; return 0; }
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

cmd_down() {
  echo "stopping nodewave and the '$cluster' cluster"
  stop_nodewave
  cluster_sh down
  echo "done (the work directory $work is left in place; the next run replaces it)"
}

cleanup() {
  $cleaned && return
  cleaned=true
  if $keep; then return; fi
  step "Cleaning up: stopping nodewave and the '$cluster' cluster"
  stop_nodewave
  cluster_sh down 2>&1 | sed 's/^/    /' || true
  say "The log and the Git repository stay in $work until the next run."
}

on_signal() {
  printf '\ninterrupted\n'
  keep=false
  exit 130
}

# ---------------------------------------------------------------- nodewave status helpers

# "STATUS APPLIED LAST-GOOD" of one DaemonSet (ns/name) from `nodewave status`.
status_of() {
  nw status --kubeconfig "$kubeconfig" 2>/dev/null | awk -v k="$1" '$1 == k { print $2, $3, $4; exit }'
}

# The table row of one DaemonSet, without the name, spaces squeezed.
row_of() {
  nw status --kubeconfig "$kubeconfig" 2>/dev/null | awk -v k="$1" '$1 == k { $1 = ""; sub(/^ +/, ""); print; exit }'
}

show_status() {
  nw status --kubeconfig "$kubeconfig" | sed 's/^/    /'
}

# Interesting lines of the nodewave log added since the last call, shortened to
# "time  namespace/daemonset  message".
log_lines_seen=0
last_log_message=""
new_log_lines() {
  local total
  total=$(wc -l <"$log")
  [ "$total" -gt "$log_lines_seen" ] || return 0
  head -n "$total" "$log" | tail -n +"$((log_lines_seen + 1))" | strip_ansi |
    grep -E 'new commit|commit rejected|in sync with Git|rollout started|StageStarted|BakeStarted|StagePassed|replacing pod|WARN .*gate failed|rolling back from|RollbackFinished|rollout succeeded|rolled back to|ERROR' |
    sed -E \
      -e 's/^[0-9-]+T([0-9:]+)\.[0-9]+Z +([A-Z]+) +[a-z]+\{namespace=([^ ]+) daemonset=([^ }]+)[^}]*\}: /\1  \3\/\4  /' \
      -e 's/^[0-9-]+T([0-9:]+)\.[0-9]+Z +([A-Z]+) +/\1  /' \
      -e 's/ reason="[A-Za-z]+"$//' -e 's/ gate="[a-z_]+" nodes=.*$//' \
      -e 's/(rollout started) revision=[0-9a-f]+ pool_label="[^"]*" stages=/\1, stages: /' \
      -e 's/ seconds=([0-9]+)$/ (\1s)/' |
    sed -E 's/new commit commit=/new commit /' |
    awk -v last="$last_log_message" -v keep="$work/.last-log-message" '
      { msg = $0; sub(/^[0-9:]+  /, "", msg); sub(/ \([0-9]+s\)$/, "", msg)
        if (msg != last) print "    " $0; last = msg }
      END { print last > keep }' || true
  last_log_message="$(cat "$work/.last-log-message" 2>/dev/null || true)"
  log_lines_seen=$total
}

# watch TIMEOUT DS DESCRIPTION CONDITION...: prints the DaemonSet's status row when it
# changes and nodewave's log as it goes, until CONDITION (a command) succeeds.
watch_until() {
  local timeout="$1" ds="$2" what="$3"
  shift 3
  local deadline=$((SECONDS + timeout)) row last=""
  while :; do
    new_log_lines
    if [ -n "$ds" ]; then
      row="$(row_of "$ds")"
      if [ -n "$row" ] && [ "$row" != "$last" ]; then
        printf '    %s%-9s %s: %s%s\n' "$dim" "[$(elapsed)]" "$ds" "$row" "$reset"
        last="$row"
      fi
    fi
    if "$@"; then
      new_log_lines
      return 0
    fi
    demo_pid >/dev/null || die "nodewave stopped unexpectedly while waiting for: $what"
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for: $what"
    sleep 2
  done
}

all_synced() {
  local n
  n=$(nw status --kubeconfig "$kubeconfig" 2>/dev/null | awk '$2 == "Synced"' | wc -l)
  [ "$n" -eq 5 ]
}

# is DS STATUS [COMMIT]: the DaemonSet has that status (and that applied commit).
is() {
  local s
  read -r -a s <<<"$(status_of "$1")"
  [ "${s[0]:-}" = "$2" ] || return 1
  [ -z "${3:-}" ] || [ "${s[1]:-}" = "${3:0:8}" ]
}

image_of() {
  kubectl -n "${1%/*}" get daemonset "${1#*/}" -o jsonpath='{.spec.template.spec.containers[0].image}'
}

pod_uids() {
  kubectl get pods -A -l 'app.kubernetes.io/name in (fluent-bit,node-exporter,falco)' \
    -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}={.metadata.uid}{"\n"}{end}' | sort
}

git_demo() {
  git -C "$repo" -c user.name="Dana Demo" -c user.email=dana@example.com -c commit.gpgsign=false "$@"
}

# ---------------------------------------------------------------- the demo

preflight() {
  case "$cluster" in
    nodewave) die "the demo deletes and recreates its cluster; refusing the name 'nodewave' (the cluster shared by tests). Pick another NODEWAVE_DEMO_CLUSTER" ;;
  esac
  local c
  for c in cargo git curl; do
    command -v "$c" >/dev/null || die "'$c' is not installed (the demo needs cargo, git and curl)"
  done
  if [ -e "$work" ] && [ ! -f "$marker" ] && [ -n "$(ls -A "$work" 2>/dev/null)" ]; then
    die "$work exists and was not made by this demo; set NODEWAVE_DEMO_DIR to another directory"
  fi
}

free_port() {
  local p
  for ((p = first_port; p < first_port + 20; p++)); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free port in 127.0.0.1:$first_port-$((first_port + 19)); set NODEWAVE_DEMO_PORT"
}

build() {
  step "Building nodewave (cargo build, debug profile)"
  if ! (cd "$root" && cargo build --quiet) >"$work/cargo-build.log" 2>&1; then
    cat "$work/cargo-build.log" >&2
    die "cargo build failed"
  fi
  [ -x "$nodewave" ] || die "cargo build did not produce $nodewave"
  ok "$nodewave"
}

start_cluster() {
  step "Starting a local Kubernetes cluster '$cluster'"
  say "Real etcd, kube-apiserver, controller-manager and scheduler on 127.0.0.1, with kwok faking" \
    "9 nodes in 3 node pools (label nodewave.io/pool = pool-a, pool-b, pool-c). No containers run:" \
    "kwok plays the kubelet and moves pods to Running/Ready by itself." \
    "The first run builds these binaries from source (a few minutes); later runs reuse them."
  if [ -d "$kwok_home/clusters/$cluster" ]; then
    say "A previous '$cluster' cluster exists: replacing it for a clean start."
    cluster_sh down 2>&1 | sed 's/^/    /'
  fi
  cluster_sh up 2>&1 | sed 's/^/    /' || die "hack/cluster.sh up failed"
  [ -f "$kubeconfig" ] || die "no kubeconfig at $kubeconfig after hack/cluster.sh up"
  bin="$("$here/build-binaries.sh" 2>/dev/null | tail -n 1)"
  # nodewave renders the Kustomize overlay and the Helm chart with the upstream
  # tools (built once from the Go module proxy, cached like the control plane).
  local renderers
  renderers="$("$here/build-renderers.sh" 2>/dev/null | tail -n 1)" || die "hack/build-renderers.sh failed"
  [ -x "$renderers/helm" ] && [ -x "$renderers/kustomize" ] || die "helm and kustomize not found in $renderers"
  export PATH="$renderers:$PATH"
  [ -x "$bin/kubectl" ] || die "kubectl not found in $bin"
  kubectl get nodes -L nodewave.io/pool | sed 's/^/    /'
}

make_repo() {
  step "Making a Git repository from examples-repo/"
  rm -rf "$repo"
  mkdir -p "$repo"
  cp -R "$root/examples-repo/." "$repo/"
  git init --quiet "$repo"
  git -C "$repo" symbolic-ref HEAD refs/heads/main
  git_demo add -A
  git_demo commit --quiet -m "Add fluent-bit, node-exporter and falco with their namespaces, service accounts, config and rollout policies"
  first_commit="$(git -C "$repo" rev-parse HEAD)"
  say "$repo (branch main):"
  (cd "$repo" && find . -path ./.git -prune -o -type f -print | sort | sed 's/^\.\//      /')
  say "Each YAML file is an agent as a vendor ships it: its Namespace, ServiceAccount and" \
    "ConfigMap, the DaemonSet, and its RolloutPolicy (how nodewave rolls it out, stage by stage," \
    "and when a stage counts as failed). Nothing is created with kubectl: nodewave applies the" \
    "other objects first, then the DaemonSets."
  step "Validating the repository offline: nodewave validate"
  nw validate "$repo" | sed 's/^/    /' || die "nodewave validate found errors in examples-repo/"
}

start_nodewave() {
  local port deadline
  port="$(free_port)"
  url="http://127.0.0.1:$port"
  step "Starting nodewave, tracking branch main of the repository (polling every 2s)"
  : >"$log"
  setsid "$nodewave" run \
    --repo "$repo" --branch main --poll-interval 2s \
    --listen "127.0.0.1:$port" --state-dir "$work/state" \
    --kubeconfig "$kubeconfig" >>"$log" 2>&1 </dev/null &
  nodewave_pid=$!
  echo "$nodewave_pid" >"$pidfile"
  say "nodewave run --repo $repo --branch main --poll-interval 2s --listen 127.0.0.1:$port"
  say "pid $nodewave_pid, log: $log"
  deadline=$((SECONDS + 30))
  until curl -fsS "$url/healthz" >/dev/null 2>&1; do
    kill -0 "$nodewave_pid" 2>/dev/null || die "nodewave exited at start"
    [ $SECONDS -lt $deadline ] || die "nodewave's HTTP server did not answer on $url within 30s"
    sleep 0.5
  done
  ok "listening on $url (/status, /metrics, /healthz)"
}

first_sync() {
  step "First sync: nodewave applies the five DaemonSets (three plain files, a Kustomize overlay, a Helm chart), following each policy"
  say "New DaemonSets start on every node at once, but nodewave still walks the stages" \
    "(and bakes) before calling them Synced."
  watch_until 180 "" "every DaemonSet Synced" all_synced
  echo
  show_status
  ok "everything is Synced with commit ${first_commit:0:8}"
}

good_change() {
  step "Pushing a good change: upgrade fluent-bit from 3.1.4 to 3.1.9"
  local f="$repo/logging/fluent-bit.yaml"
  sed -i -e 's#fluent-bit:3\.1\.4#fluent-bit:3.1.9-slowready#' \
    -e 's#^\(        prometheus\.io/path: /api/v1/metrics/prometheus\)$#\1\n        nodewave.io/kwok-ready-delay: "3s"#' "$f"
  grep -q 'fluent-bit:3.1.9-slowready' "$f" && grep -q 'kwok-ready-delay' "$f" ||
    die "could not edit $f (did examples-repo/logging/fluent-bit.yaml change?)"
  say "The '-slowready' tag and the kwok-ready-delay annotation make the fake kubelet report" \
    "each new pod Ready after 3s, like a real agent starting up, so the rollout can be watched."
  say "" "Before committing, nodewave diff shows what the change would do to the cluster:"
  local rc=0
  nw diff --dir "$repo" --paths-only --kubeconfig "$kubeconfig" 2>&1 | sed 's/^/      /' || rc=$?
  [ "$rc" -le 1 ] || die "nodewave diff failed"
  git_demo commit --quiet -am "logging: upgrade fluent-bit to 3.1.9"
  good_commit="$(git -C "$repo" rev-parse HEAD)"
  say "" "Committed ${good_commit:0:8}. nodewave sees it within 2s and replaces fluent-bit's pods" \
    "stage by stage: 1 canary node in pool-a (then a 10s bake), the rest of pool-a one node" \
    "at a time, pool-b two at a time (5s bake), then pool-c. Each stage waits until its new" \
    "pods are Ready. Status rows read POOL=updated/ready/total."
  watch_until 300 logging/fluent-bit "fluent-bit Synced at ${good_commit:0:8}" \
    is logging/fluent-bit Synced "$good_commit"
  ok "fluent-bit 3.1.9 runs on all 9 nodes: $(image_of logging/fluent-bit)"
}

bad_change() {
  step "Pushing a bad change: upgrade node-exporter to a build that crashes on start"
  local f="$repo/monitoring/node-exporter.yaml"
  sed -i 's#node-exporter:v1\.8\.2#node-exporter:v1.9.0-crashloop#' "$f"
  grep -q 'node-exporter:v1.9.0-crashloop' "$f" || die "could not edit $f"
  say "kwok turns an image containing 'crashloop' into a container in CrashLoopBackOff with" \
    "rising restarts. node-exporter's policy fails a stage on a fatal container state, on more" \
    "than 1 restart, or on a pod not Ready within 20s, and then rolls back automatically."
  git_demo commit --quiet -am "monitoring: upgrade node-exporter to 1.9.0"
  bad_commit="$(git -C "$repo" rev-parse HEAD)"
  say "Committed ${bad_commit:0:8}."
  watch_until 120 monitoring/node-exporter "node-exporter RolledBack" \
    is monitoring/node-exporter RolledBack
  local img
  img="$(image_of monitoring/node-exporter)"
  [ "$img" = "quay.io/prometheus/node-exporter:v1.8.2" ] ||
    die "node-exporter's DaemonSet runs $img after the rollback, expected v1.8.2"
  ok "the first pod of the first stage crashed; nodewave rolled that node back to v1.8.2," \
    "the other 8 nodes never ran the bad build"

  step "Checking that nodewave does not retry the failed commit by itself"
  say "The bad commit is still the head of main. Waiting 10s (5 fetches)..."
  local applies_before applies_after
  applies_before=$(strip_ansi <"$log" | grep -c "daemonset=node-exporter commit=${bad_commit:0:12}}: change from Git" || true)
  local i
  for ((i = 0; i < 5; i++)); do
    sleep 2
    new_log_lines
  done
  applies_after=$(strip_ansi <"$log" | grep -c "daemonset=node-exporter commit=${bad_commit:0:12}}: change from Git" || true)
  img="$(image_of monitoring/node-exporter)"
  is monitoring/node-exporter RolledBack || die "node-exporter left RolledBack: $(status_of monitoring/node-exporter)"
  [ "$img" = "quay.io/prometheus/node-exporter:v1.8.2" ] || die "node-exporter now runs $img: the failed commit was re-applied"
  [ "$applies_after" = "$applies_before" ] || die "nodewave applied the failed commit again"
  ok "still RolledBack on v1.8.2; the failed commit was applied once and never again"
  show_status
  say "" "The rollout record shows it too (kubectl get dsrollouts):"
  kubectl -n monitoring get dsrollout node-exporter | sed 's/^/      /'
}

# NODE COPY per fluent-bit pod: the ConfigMap copy it mounts.
config_mounts() {
  kubectl -n logging get pods -l app.kubernetes.io/name=fluent-bit \
    -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{.spec.volumes[?(@.name=="config")].configMap.name}{"\n"}{end}' | sort
}

config_change() {
  step "Pushing a config change: fluent-bit's log level from info to debug"
  local f="$repo/logging/fluent-bit.yaml" before deadline mounts
  sed -i 's/^      log_level: info$/      log_level: debug/' "$f"
  grep -q '^      log_level: debug$' "$f" || die "could not edit $f"
  say "Only the ConfigMap changes. nodewave applies it as a new immutable copy named by its" \
    "content hash and points the DaemonSet at it: a new pod revision, rolled out through the" \
    "same stages and gates, while the nodes of later stages keep the old copy."
  before="$(config_mounts | awk '{print $2}' | sort -u)"
  git_demo commit --quiet -am "logging: debug logging for fluent-bit"
  config_commit="$(git -C "$repo" rev-parse HEAD)"
  say "Committed ${config_commit:0:8}."
  deadline=$((SECONDS + 90))
  until [ "$(config_mounts | awk '{print $2}' | sort -u | wc -l)" -ge 2 ]; do
    [ $SECONDS -lt $deadline ] || die "the config change did not start rolling out within 90s"
    sleep 1
  done
  mounts="$(config_mounts)"
  say "" "While the first stage runs, the ConfigMap copy each node's pod mounts:"
  sed 's/^/      /' <<<"$mounts"
  grep -q "$before" <<<"$mounts" || die "no node kept the old config copy $before"
  ok "the canary runs the new config; the other nodes still mount $before"
  watch_until 300 logging/fluent-bit "fluent-bit Synced at ${config_commit:0:8}" \
    is logging/fluent-bit Synced "$config_commit"
  [ "$(config_mounts | awk '{print $2}' | sort -u | wc -l)" -eq 1 ] ||
    die "fluent-bit pods mount different config copies after the rollout"
  ok "every fluent-bit pod mounts $(config_mounts | awk '{print $2}' | sort -u); the old copy is kept for a rollback"
}

revert() {
  step "Reverting the bad commit: git revert"
  say "Git is the source of truth again: the revert brings back exactly what runs in the" \
    "cluster, so nodewave records the new commit as Synced without replacing any pod."
  local before after
  before="$(pod_uids)"
  git_demo revert --no-edit HEAD >/dev/null
  revert_commit="$(git -C "$repo" rev-parse HEAD)"
  say "Committed ${revert_commit:0:8} ($(git -C "$repo" log -1 --format=%s))."
  watch_until 60 monitoring/node-exporter "node-exporter Synced at ${revert_commit:0:8}" \
    is monitoring/node-exporter Synced "$revert_commit"

  # Synced must hold: no flicker of the status, and no more rollback bookkeeping.
  local i flips=0 s n0 n1 rerecorded
  sleep 2
  n0=$(strip_ansi <"$log" | grep -c 'daemonset=node-exporter .*rolled back to' || true)
  for ((i = 0; i < 12; i++)); do
    sleep 0.5
    s="$(status_of monitoring/node-exporter)"
    case "$s" in Synced*) ;; *) flips=$((flips + 1)) ;; esac
  done
  n1=$(strip_ansi <"$log" | grep -c 'daemonset=node-exporter .*rolled back to' || true)
  rerecorded=$((n1 - n0))
  new_log_lines
  after="$(pod_uids)"
  echo
  show_status
  if [ "$before" = "$after" ]; then
    ok "no pod churn: the same $(wc -l <<<"$after") pods run before and after the revert"
  else
    warn "pods changed during the revert:"
    diff <(echo "$before") <(echo "$after") | sed 's/^/      /' || true
    exit_code=1
  fi
  if [ "$flips" -eq 0 ] && [ "$rerecorded" -eq 0 ] && all_synced; then
    ok "every DaemonSet is Synced at ${revert_commit:0:8}"
  else
    warn "node-exporter did not settle after the revert: over 6s its status left Synced in $flips of"
    warn "12 checks and nodewave recorded the finished rollback again $rerecorded times."
    warn "The finished rollback and the sync of the reverted commit overwrite each other's status."
    exit_code=1
  fi
}

summary() {
  local took
  took="$(elapsed)"
  step "Done in $took"
  cat <<EOF
    What is where:
      export KUBECONFIG=$kubeconfig
      nodewave:   $url  (try: curl -s $url/status; curl -s $url/metrics | grep ^nodewave_)
      status:     $nodewave status --kubeconfig $kubeconfig
      log:        $log
      Git repo:   $repo  (commit and nodewave follows: cd $repo && git log --oneline)
EOF
}

main() {
  case "${1:-}" in
    down) cmd_down; exit 0 ;;
    --keep) keep=true ;;
    "") ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  preflight
  mkdir -p "$work"
  touch "$marker"
  stop_nodewave # a nodewave left by an earlier --keep run
  trap cleanup EXIT
  trap on_signal INT TERM

  build
  start_cluster
  make_repo
  start_nodewave
  first_sync
  good_change
  config_change
  bad_change
  revert
  if $keep; then
    summary
    echo "      stop:       hack/demo.sh down"
  elif [ -t 0 ]; then
    summary
    printf '\n    Everything keeps running until you press Enter (or Ctrl-C); then it is cleaned up.\n    (Run with --keep to leave it running; stop it later with hack/demo.sh down.)\n'
    read -r _ || true
  else
    step "Done in $(elapsed) (not on a terminal: cleaning up now; use --keep to leave it running)"
  fi
  exit "$exit_code"
}

main "$@"
