# Capstan's container image: built with the pinned toolchain, run from Debian slim with `nft`,
# which the user-space capture (`--l4-datapath userspace`) and `--kernel-programmer nft` run,
# and `ip` (policy routing for kept source addresses). The kernel data path and the conntrack
# cleanup speak netlink themselves. Build: `docker build -t capstan .`
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin capstan \
 && strip target/release/capstan

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/capstan /usr/local/bin/capstan
# Kubernetes runs it with the capabilities of deploy/kubernetes/capstan.yaml (NET_ADMIN,
# NET_BIND_SERVICE) and a read-only root filesystem: Capstan writes no files.
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["run"]
