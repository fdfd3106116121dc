# Capstan's container image: built with the pinned toolchain, run from Debian slim with the two
# netfilter tools `--capture nftables` drives: `nft` (the table Capstan owns) and `conntrack`
# (stale UDP entries). A distroless base has neither, and kube-proxy's own image carries them for
# the same reason. Build: `docker build -t capstan .`
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin capstan \
 && strip target/release/capstan

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables conntrack iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/capstan /usr/local/bin/capstan
# Kubernetes runs it with the capabilities of deploy/kubernetes/capstan.yaml (NET_ADMIN,
# NET_BIND_SERVICE) and a read-only root filesystem: Capstan writes no files.
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["run"]
