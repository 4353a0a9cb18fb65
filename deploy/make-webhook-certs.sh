#!/usr/bin/env bash
# Makes everything the HTTPS webhook needs, in one go:
#   - a small CA of its own (kept and reused by the next runs, so that renewing
#     the certificates does not change what the API server trusts),
#   - the forwarder's serving certificate, with the Service's ClusterIP and
#     DNS names as subject alternative names (the API server dials the IP, and
#     Go refuses a certificate without a matching IP SAN),
#   - the API server's client certificate (CN kube-apiserver-audit by default,
#     the name the external-mtls overlay allows),
#   - the kubernetes.io/tls secret (tls.crt, tls.key, ca.crt) the Deployment
#     mounts at /certificates, applied with kubectl,
#   - the webhook kubeconfig for --audit-webhook-config-file, certificates
#     embedded.
#
# The serving certificate comes from this CA rather than a Kubernetes
# CertificateSigningRequest: the built-in kubernetes.io/kube-apiserver-client
# signer only issues client certificates, and kubernetes.io/legacy-unknown is
# gone from current clusters.
#
# Needs openssl and kubectl (kubectl only talks to the cluster for the
# ClusterIP and to apply the secret; --cluster-ip and --no-apply avoid both).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/make-webhook-certs.sh [options]

  -n, --namespace NS    namespace of the forwarder (kube-audit-forwarder)
  -s, --service NAME    its Service (kube-audit-forwarder)
  -o, --out DIR         where the files go (./webhook-certs); keep it private
      --cluster-ip IP   the Service's ClusterIP; asked from the cluster if unset
      --ip IP           one more IP SAN for the serving certificate (repeatable)
      --dns NAME        one more DNS SAN for the serving certificate (repeatable)
      --client-cn CN    CN of the API server's client certificate (kube-apiserver-audit)
      --port PORT       Service port in the webhook URL (443)
      --path PATH       path in the webhook URL (/post)
      --days N          validity of the serving and client certificates (365)
      --ca-days N       validity of a new CA (3650)
      --new-ca          make a new CA even if DIR has one (the API server must
                        then get the new webhook kubeconfig)
      --no-apply        write the files, apply nothing (secret.yaml is left for
                        kubectl apply -f)
  -h, --help            this text
EOF
}

namespace=kube-audit-forwarder
service=kube-audit-forwarder
out=./webhook-certs
cluster_ip=""
extra_ips=()
extra_dns=()
client_cn=kube-apiserver-audit
port=443
path=/post
days=365
ca_days=3650
new_ca=false
apply=true

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--namespace) namespace=$2; shift 2 ;;
    -s|--service) service=$2; shift 2 ;;
    -o|--out) out=$2; shift 2 ;;
    --cluster-ip) cluster_ip=$2; shift 2 ;;
    --ip) extra_ips+=("$2"); shift 2 ;;
    --dns) extra_dns+=("$2"); shift 2 ;;
    --client-cn) client_cn=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --ca-days) ca_days=$2; shift 2 ;;
    --new-ca) new_ca=true; shift ;;
    --no-apply) apply=false; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

for tool in openssl kubectl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done

if [ -z "$cluster_ip" ]; then
  if ! answer=$(kubectl -n "$namespace" get service "$service" -o jsonpath='{.spec.clusterIP}' 2>&1); then
    echo "error: could not read the ClusterIP of service $namespace/$service: $(tail -n 1 <<<"$answer")" >&2
    echo "pass --cluster-ip IP (with --no-apply, no cluster is needed)" >&2
    exit 1
  fi
  cluster_ip=$answer
  if [ -z "$cluster_ip" ] || [ "$cluster_ip" = None ]; then
    echo "error: service $namespace/$service has no ClusterIP; pass --cluster-ip" >&2
    exit 1
  fi
fi

umask 077
mkdir -p "$out"
cd "$out"
echo "writing to $(pwd)"

# 1. The CA, unless one is already here.
if $new_ca || [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  echo "making a new CA (valid $ca_days days)"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days "$ca_days" \
    -subj "/CN=$service webhook CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt
else
  echo "reusing the CA in ca.crt (expires $(openssl x509 -in ca.crt -noout -enddate | cut -d= -f2))"
fi

# 2. The serving certificate: the ClusterIP and the Service's names.
sans="IP:$cluster_ip"
for ip in "${extra_ips[@]+"${extra_ips[@]}"}"; do sans+=",IP:$ip"; done
for name in "$service" "$service.$namespace" "$service.$namespace.svc" \
  "$service.$namespace.svc.cluster.local" "${extra_dns[@]+"${extra_dns[@]}"}"; do
  sans+=",DNS:$name"
done
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out tls.key
openssl req -new -key tls.key -subj "/CN=$service.$namespace.svc" -out tls.csr
cat > server.ext <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
EOF
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -sha256 -days "$days" -extfile server.ext -out tls.crt 2>/dev/null
echo "serving certificate: $sans"

# 3. The API server's client certificate.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out apiserver-client.key
openssl req -new -key apiserver-client.key -subj "/CN=$client_cn" -out apiserver-client.csr
cat > client.ext <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
EOF
openssl x509 -req -in apiserver-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -sha256 -days "$days" -extfile client.ext -out apiserver-client.crt 2>/dev/null
echo "client certificate: CN=$client_cn"
rm -f tls.csr apiserver-client.csr server.ext client.ext

openssl verify -CAfile ca.crt -purpose sslserver tls.crt >/dev/null
openssl verify -CAfile ca.crt -purpose sslclient apiserver-client.crt >/dev/null

# 4. The secret the Deployment mounts at /certificates: ca.crt is the CA that
#    the API server's client certificate must chain to (client_ca_file).
kubectl create secret generic "$service-tls" --namespace "$namespace" \
  --type=kubernetes.io/tls \
  --from-file=tls.crt=tls.crt --from-file=tls.key=tls.key --from-file=ca.crt=ca.crt \
  --dry-run=client -o yaml > secret.yaml

# 5. The webhook kubeconfig, everything embedded: one file to copy to each
#    control-plane node.
kubeconfig=webhook-kubeconfig.yaml
rm -f "$kubeconfig"
kubectl config --kubeconfig="$kubeconfig" set-cluster "$service" \
  --server="https://$cluster_ip:$port$path" \
  --certificate-authority=ca.crt --embed-certs=true >/dev/null
kubectl config --kubeconfig="$kubeconfig" set-credentials kube-apiserver \
  --client-certificate=apiserver-client.crt --client-key=apiserver-client.key \
  --embed-certs=true >/dev/null
kubectl config --kubeconfig="$kubeconfig" set-context audit \
  --cluster="$service" --user=kube-apiserver >/dev/null
kubectl config --kubeconfig="$kubeconfig" use-context audit >/dev/null

if $apply; then
  kubectl apply -f secret.yaml
  echo "secret $namespace/$service-tls applied; the forwarder picks up the new files without a restart"
else
  echo "not applied: kubectl apply -f $(pwd)/secret.yaml"
fi
cat <<EOF

Next: copy $(pwd)/$kubeconfig to every control-plane node
(e.g. /etc/kubernetes/audit/webhook-kubeconfig.yaml) and start the API server
with --audit-webhook-config-file pointing at it (deploy/README.md).
Keep ca.key safe: the next run reuses it to renew the certificates.
EOF
