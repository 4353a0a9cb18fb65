# kube-audit-forwarder image: built with the official Rust image, run on
# distroless (glibc, CA certificates, no shell) as the "nonroot" user 65532.
# librdkafka (the kafka sink) is built from source into the binary; it links
# Debian 12's libssl3, which both the build image and distroless/cc have.
#   docker build -t registry.example.com/kube-audit-forwarder:0.1.0 .
# The Deployment in deploy/ expects exactly this user and a read-only root
# filesystem; nothing here writes outside /var/lib/kube-audit-forwarder.

FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
# Dependencies are downloaded in their own layer, so that a change to src/
# does not download them again. Cargo.toml names the test and bench targets, so
# their files must exist for the manifest to load.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs benches/decode.rs \
    && cargo fetch --locked
COPY src ./src
COPY tests/it ./tests/it
COPY benches ./benches
RUN cargo build --release --locked --bin kube-audit-forwarder \
    && cp target/release/kube-audit-forwarder /kube-audit-forwarder

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kube-audit-forwarder /usr/local/bin/kube-audit-forwarder
USER 65532:65532
# 3000 webhook (HTTP), 4443 webhook (HTTPS), 9090 metrics and health.
EXPOSE 3000 4443 9090
# Without arguments: the built-in default (stdout sink). The Deployment passes
# --config /etc/kube-audit-forwarder/config.yaml.
ENTRYPOINT ["/usr/local/bin/kube-audit-forwarder"]
