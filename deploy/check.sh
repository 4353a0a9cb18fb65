#!/usr/bin/env bash
# Checks deploy/ with the real tools, offline: kustomize builds of every
# overlay validated against the Kubernetes OpenAPI schemas, the pod's security
# and sizing rules read back from the rendered objects, each overlay's config
# through the forwarder's own check-config, promtool on the alert rules and
# their unit tests, shellcheck and hadolint, and the certificate script run for
# real with a mutual-TLS handshake on loopback.
# .ci/run installs the tools and calls this; run it from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest and the newest Kubernetes versions whose schemas
# kubernetes-validate ships here.
K8S_VERSIONS=(1.25.0 1.37.0)
OVERLAYS=(stdout private-backend external-mtls private-backend-pvc)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { echo "-- $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

for tool in kubectl promtool shellcheck openssl curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (.ci/run installs it)"
done

python3 -c 'import kubernetes_validate, yaml' 2>/dev/null \
  || fail "kubernetes-validate is not installed (.ci/run installs it)"
# Through python3 -m: works whether or not pip's script directory is on PATH.
kubernetes_validate() { python3 -m kubernetes_validate "$@"; }

step "kustomize builds (kubectl $(kubectl version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kustomizeVersion"])' 2>/dev/null || echo '?'))"
for o in "${OVERLAYS[@]}"; do
  kubectl kustomize "deploy/overlays/$o" > "$work/$o.yaml"
done
kubectl kustomize deploy/monitoring > "$work/monitoring.yaml"
kubectl kustomize deploy/base > "$work/base.yaml"

step "schemas: every object but the Prometheus Operator's, strict, Kubernetes ${K8S_VERSIONS[*]}"
# kubernetes-validate knows only the built-in kinds: the ServiceMonitor is
# split off here and checked by shape below.
python3 - "$work" "${OVERLAYS[@]}" <<'EOF'
import sys, yaml
work, overlays = sys.argv[1], sys.argv[2:]
for name in overlays + ["monitoring"]:
    docs = list(yaml.safe_load_all(open(f"{work}/{name}.yaml")))
    core = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
    crd = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
    yaml.safe_dump_all(core, open(f"{work}/{name}.core.yaml", "w"))
    yaml.safe_dump_all(crd, open(f"{work}/{name}.crd.yaml", "w"))
EOF
for v in "${K8S_VERSIONS[@]}"; do
  for f in "${OVERLAYS[@]}" monitoring; do
    kubernetes_validate --strict --quiet -k "$v" "$work/$f.core.yaml" \
      || fail "$f does not validate against Kubernetes $v"
  done
  # The sources too, as an operator might apply them one by one.
  for f in deploy/base/*.yaml; do
    case "$f" in */config.yaml|*/kustomization.yaml) continue ;; esac
    kubernetes_validate --quiet -k "$v" "$f" || fail "$f does not validate against Kubernetes $v"
  done
done

step "rendered objects: security posture, probes, grace period, memory and disk buffer sizing, network policy, ServiceMonitor"
python3 - "$work" "${OVERLAYS[@]}" <<'EOF'
import copy, re, sys, yaml
work, overlays = sys.argv[1], sys.argv[2:]
MIB = 1 << 20
problems = []

def need(cond, what):
    if not cond:
        problems.append(what)

def quantity(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    return int(m.group(1)) * {"Ki": 1 << 10, "Mi": MIB, "Gi": 1 << 30, "Ti": 1 << 40, None: 1}[m.group(2)]

def pod_template(workload):
    """The pod template without what an overlay may set for itself: the
    buffer volume (an emptyDir or a claim), the ephemeral-storage request, the
    memory limit and the generated ConfigMap's name."""
    t = copy.deepcopy(workload["spec"]["template"])
    pod = t["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "buffer"]
    for v in pod["volumes"]:
        if "configMap" in v:
            v["configMap"]["name"] = "CONFIG"
    res = pod["containers"][0]["resources"]
    res["requests"].pop("ephemeral-storage", None)
    res["limits"].pop("memory", None)
    return t

base_dep = [d for d in yaml.safe_load_all(open(f"{work}/base.yaml")) if d["kind"] == "Deployment"][0]

for o in overlays:
    docs = list(yaml.safe_load_all(open(f"{work}/{o}.yaml")))
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    ns = by_kind["Namespace"][0]["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        need(ns.get(f"pod-security.kubernetes.io/{mode}") == "restricted", f"{o}: namespace {mode} is not restricted")
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    need(len(workloads) == 1, f"{o}: {len(workloads)} Deployments and StatefulSets, not one")
    dep = workloads[0]
    pod = dep["spec"]["template"]["spec"]
    # A StatefulSet overlay brings its own copy of the base's pod.
    if dep["kind"] == "StatefulSet":
        need(pod_template(dep) == pod_template(base_dep), f"{o}: the StatefulSet's pod differs from base/deployment.yaml's")
    psc = pod["securityContext"]
    need(psc.get("runAsNonRoot") is True, f"{o}: pod runAsNonRoot")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{o}: seccomp RuntimeDefault")
    c = pod["containers"][0]
    sc = c["securityContext"]
    need(sc.get("allowPrivilegeEscalation") is False, f"{o}: allowPrivilegeEscalation")
    need(sc.get("readOnlyRootFilesystem") is True, f"{o}: readOnlyRootFilesystem")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{o}: capabilities drop ALL")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(ports == {"http": 3000, "https": 4443, "metrics": 9090}, f"{o}: container ports {ports}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        need(get["path"] == path and ports.get(get["port"], get["port"]) == 9090, f"{o}: {probe}")
    need(c["args"] == ["--config", "/etc/kube-audit-forwarder/config.yaml"], f"{o}: args {c['args']}")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    cert = mounts.get("/certificates")
    need(cert is not None and cert.get("readOnly") is True, f"{o}: /certificates read-only")
    need(cert is not None and vols[cert["name"]]["secret"].get("optional") is True, f"{o}: TLS secret optional")
    dl = mounts.get("/var/lib/kube-audit-forwarder")
    need(dl is not None and not dl.get("readOnly") and "emptyDir" in vols[dl["name"]], f"{o}: writable dead-letter emptyDir")
    # The config the pod reads, from the generated ConfigMap it mounts.
    cm_name = vols[mounts["/etc/kube-audit-forwarder"]["name"]]["configMap"]["name"]
    cm = [d for d in by_kind["ConfigMap"] if d["metadata"]["name"] == cm_name]
    need(len(cm) == 1, f"{o}: the Deployment mounts ConfigMap {cm_name}, which the build does not have")
    cfg = yaml.safe_load(cm[0]["data"]["config.yaml"])
    deadline = cfg.get("shutdown", {}).get("deadline_secs", 25)
    need(pod["terminationGracePeriodSeconds"] > deadline, f"{o}: grace period not above deadline {deadline}")
    # Memory limit = capacity_bytes summed over the sinks + 2 x max_body_bytes
    # + 64 MiB (deploy/README.md, "Sizing").
    body = cfg.get("source", {}).get("http", {}).get("max_body_bytes", 64 * MIB)
    queues = sum(s.get("queue", {}).get("capacity_bytes", 256 * MIB) for s in cfg["sinks"])
    want = queues + 2 * body + 64 * MIB
    got = quantity(c["resources"]["limits"]["memory"])
    need(got == want, f"{o}: memory limit {got // MIB} MiB, the sizing rule gives {want // MIB} MiB")
    need(quantity(c["resources"]["requests"]["memory"]) <= got, f"{o}: memory request above limit")
    # Service, NetworkPolicy, PodDisruptionBudget.
    svc = by_kind["Service"][0]["spec"]
    need(svc["type"] == "ClusterIP", f"{o}: Service type")
    need({(p["port"], p["targetPort"]) for p in svc["ports"]} == {(80, "http"), (443, "https"), (9090, "metrics")}, f"{o}: Service ports")
    np = by_kind["NetworkPolicy"][0]["spec"]
    peers = [(p.get("namespaceSelector", {}).get("matchLabels"), p.get("podSelector", {}).get("matchLabels"))
             for rule in np["ingress"] for p in rule["from"]]
    for labels in ({"k8s-app": "konnectivity-agent"}, {"app": "konnectivity-agent"}, {"app": "vpn-shoot"}):
        need(({"kubernetes.io/metadata.name": "kube-system"}, labels) in peers, f"{o}: NetworkPolicy lacks kube-system {labels}")
    need(({"kubernetes.io/metadata.name": "monitoring"}, None) in peers, f"{o}: NetworkPolicy lacks the monitoring namespace")
    need("PodDisruptionBudget" in by_kind, f"{o}: no PodDisruptionBudget")
    sel = dep["spec"]["selector"]["matchLabels"]
    for kind, s in (("Service", svc["selector"]), ("NetworkPolicy", np["podSelector"]["matchLabels"]),
                    ("PodDisruptionBudget", by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"])):
        need(s == sel, f"{o}: {kind} selects {s}, the pods carry {sel}")
    print(f"   {o}: memory limit {got // MIB} MiB = {queues // MIB} MiB queues + 2 x {body // MIB} MiB bodies + 64 MiB")
    # The disk buffer: on, on a writable volume of its own at buffer.path that
    # is larger than buffer.max_bytes by a tenth (at least two segments) for
    # the filesystem and the files being replaced (deploy/README.md, "Disk
    # buffer"); owned by the pod's group; emptyDirs requested from the node.
    buf = cfg.get("buffer", {})
    need(buf.get("type") == "disk", f"{o}: buffer.type is {buf.get('type', 'memory')}, not disk")
    bpath = buf.get("path", "/var/lib/kube-audit-forwarder/buffer")
    max_bytes = buf.get("max_bytes", 10 << 30)
    least = max_bytes + max(max_bytes // 10, 2 * buf.get("segment_bytes", 64 * MIB))
    bmount = mounts.get(bpath)
    need(bmount is not None and not bmount.get("readOnly"), f"{o}: buffer.path {bpath} is not a writable volume mount")
    claims = {t["metadata"]["name"]: t for t in dep["spec"].get("volumeClaimTemplates", [])}
    size, where = 0, "nothing"
    if bmount is not None and bmount["name"] in claims:
        spec = claims[bmount["name"]]["spec"]
        need(spec["accessModes"] == ["ReadWriteOnce"], f"{o}: buffer claim access modes {spec['accessModes']}")
        size, where = quantity(spec["resources"]["requests"]["storage"]), "a claim of"
    elif bmount is not None and "emptyDir" in vols.get(bmount["name"], {}):
        ed = vols[bmount["name"]]["emptyDir"]
        need(ed.get("medium") != "Memory", f"{o}: the buffer's emptyDir is a tmpfs (medium: Memory)")
        need("sizeLimit" in ed, f"{o}: the buffer's emptyDir has no sizeLimit")
        size, where = quantity(ed.get("sizeLimit", 0)), "an emptyDir of"
    need(size >= least, f"{o}: buffer volume {size // MIB} MiB, buffer.max_bytes {max_bytes // MIB} MiB needs {least // MIB} MiB")
    need(psc.get("fsGroup") == psc.get("runAsGroup") and psc.get("fsGroupChangePolicy") == "OnRootMismatch",
         f"{o}: the pod's fsGroup must be its group, changed OnRootMismatch")
    empty = sum(quantity(v["emptyDir"].get("sizeLimit", 0)) for v in pod["volumes"] if "emptyDir" in v)
    eph = quantity(c["resources"]["requests"].get("ephemeral-storage", 0))
    need(eph >= empty, f"{o}: ephemeral-storage request {eph // MIB} MiB, the emptyDirs may take {empty // MIB} MiB")
    print(f"   {o}: disk buffer of {max_bytes / (1 << 30):g} GiB on {where} {size / (1 << 30):g} GiB ({dep['kind']})")

# The ServiceMonitor, by shape: it must select the Service and its metrics port.
for sm in yaml.safe_load_all(open(f"{work}/monitoring.crd.yaml")):
    need(sm["kind"] == "ServiceMonitor", f"unexpected {sm['kind']}")
    spec = sm["spec"]
    need(spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kube-audit-forwarder"}, "ServiceMonitor selector")
    need(spec["namespaceSelector"]["matchNames"] == ["kube-audit-forwarder"], "ServiceMonitor namespace")
    need([e["port"] for e in spec["endpoints"]] == ["metrics"] and spec["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
svc_labels = [d for d in yaml.safe_load_all(open(f"{work}/stdout.yaml")) if d["kind"] == "Service"][0]["metadata"].get("labels", {})
need(svc_labels.get("app.kubernetes.io/name") == "kube-audit-forwarder", f"the ServiceMonitor selects by a label the Service lacks: {svc_labels}")
dash = [d for d in yaml.safe_load_all(open(f"{work}/monitoring.core.yaml")) if d["kind"] == "ConfigMap"]
need(len(dash) == 1 and dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap")

if problems:
    print("\n".join("FAILED: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
EOF

step "overlay configs through kube-audit-forwarder check-config"
cargo build --quiet --locked --bin kube-audit-forwarder
bin=target/debug/kube-audit-forwarder
for f in deploy/base/config.yaml deploy/overlays/*/config.yaml; do
  if out=$("$bin" check-config "$f" 2>&1); then
    echo "   $out"
  else
    fail "$out"
  fi
done

step "promtool: rules and their unit tests"
promtool check rules deploy/monitoring/alerts.yaml
promtool test rules deploy/monitoring/alerts_test.yaml
# The PrometheusRule that deploy/README.md makes from alerts.yaml.
{
  printf 'apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: kube-audit-forwarder\n  namespace: kube-audit-forwarder\nspec:\n'
  sed 's/^/  /' deploy/monitoring/alerts.yaml
} > "$work/prometheusrule.yaml"
python3 - "$work/prometheusrule.yaml" <<'EOF'
import sys, yaml
rule = yaml.safe_load(open(sys.argv[1]))
plain = yaml.safe_load(open("deploy/monitoring/alerts.yaml"))
assert rule["spec"] == plain, "the PrometheusRule's spec differs from alerts.yaml"
EOF

step "shellcheck"
shellcheck deploy/check.sh deploy/make-webhook-certs.sh

step "hadolint"
if command -v hadolint >/dev/null; then
  hadolint Dockerfile
else
  echo "   hadolint not installed: skipped"
fi

step "make-webhook-certs.sh without a cluster suggests --cluster-ip"
if out=$(KUBECONFIG=/dev/null deploy/make-webhook-certs.sh --no-apply -o "$work/no-cluster" 2>&1); then
  fail "make-webhook-certs.sh without a cluster and without --cluster-ip succeeded"
fi
grep -qF -- "--cluster-ip" <<<"$out" || fail "make-webhook-certs.sh without a cluster does not suggest --cluster-ip: $out"

step "webhook kubeconfig examples"
for f in deploy/webhook/*.kubeconfig; do
  server=$(kubectl config view --kubeconfig "$f" -o jsonpath='{.clusters[0].cluster.server}')
  [[ "$server" =~ ^https?://[0-9.]+/post$ ]] || fail "$f: server $server is not http(s)://IP/post"
done

step "make-webhook-certs.sh: files, SANs, and a mutual-TLS handshake with the kubeconfig's credentials"
certs="$work/certs"
deploy/make-webhook-certs.sh --no-apply --cluster-ip 127.0.0.1 --dns audit.example.test -o "$certs" >/dev/null
for f in ca.crt ca.key tls.crt tls.key apiserver-client.crt apiserver-client.key secret.yaml webhook-kubeconfig.yaml; do
  [ -s "$certs/$f" ] || fail "make-webhook-certs.sh wrote no $f"
done
sans=$(openssl x509 -in "$certs/tls.crt" -noout -ext subjectAltName)
for want in "IP Address:127.0.0.1" "DNS:kube-audit-forwarder.kube-audit-forwarder.svc" "DNS:audit.example.test"; do
  grep -qF "$want" <<<"$sans" || fail "serving certificate lacks $want: $sans"
done
openssl x509 -in "$certs/apiserver-client.crt" -noout -subject | grep -q "CN *= *kube-apiserver-audit" \
  || fail "client certificate CN"
kubernetes_validate --strict --quiet "$certs/secret.yaml" || fail "secret.yaml does not validate"
python3 - "$certs/secret.yaml" <<'EOF'
import sys, yaml
s = yaml.safe_load(open(sys.argv[1]))
assert s["type"] == "kubernetes.io/tls", s["type"]
assert sorted(s["data"]) == ["ca.crt", "tls.crt", "tls.key"], sorted(s["data"])
assert s["metadata"]["name"] == "kube-audit-forwarder-tls" and s["metadata"]["namespace"] == "kube-audit-forwarder"
EOF
kc="$certs/webhook-kubeconfig.yaml"
jp() { kubectl config view --kubeconfig "$kc" --raw -o jsonpath="$1"; }
server=$(jp '{.clusters[0].cluster.server}')
[ "$server" = "https://127.0.0.1:443/post" ] || fail "kubeconfig server $server"
jp '{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$work/k-ca.crt"
jp '{.users[0].user.client-certificate-data}' | base64 -d > "$work/k-client.crt"
jp '{.users[0].user.client-key-data}' | base64 -d > "$work/k-client.key"
# A TLS server with the forwarder's files that requires a client certificate
# of ca.crt, as the HTTPS listener does; the client is given only what the
# API server would have: the kubeconfig.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
openssl s_server -quiet -accept "127.0.0.1:$port" -cert "$certs/tls.crt" -key "$certs/tls.key" \
  -CAfile "$certs/ca.crt" -Verify 1 -verify_return_error -www >"$work/s_server.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
curl -sS --fail -o /dev/null --cacert "$work/k-ca.crt" --cert "$work/k-client.crt" --key "$work/k-client.key" \
  "https://127.0.0.1:$port/" || fail "mutual TLS with the kubeconfig's credentials failed"
if curl -sS --fail -o /dev/null --cacert "$work/k-ca.crt" "https://127.0.0.1:$port/" 2>/dev/null; then
  fail "the server took a client without a certificate: the check proves nothing"
fi
# A second run renews the leaves under the same CA: the API server's
# kubeconfig keeps trusting the forwarder.
fingerprint() { openssl x509 -in "$1" -noout -fingerprint -sha256; }
ca_before=$(fingerprint "$certs/ca.crt")
leaf_before=$(fingerprint "$certs/tls.crt")
deploy/make-webhook-certs.sh --no-apply --cluster-ip 127.0.0.1 -o "$certs" >/dev/null
[ "$(fingerprint "$certs/ca.crt")" = "$ca_before" ] || fail "a second run replaced the CA"
[ "$(fingerprint "$certs/tls.crt")" != "$leaf_before" ] || fail "a second run did not renew the serving certificate"
openssl verify -CAfile "$work/k-ca.crt" -purpose sslserver "$certs/tls.crt" >/dev/null \
  || fail "the renewed serving certificate does not verify with the old kubeconfig's CA"

echo "deploy checks passed"
