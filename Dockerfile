# Capstan's container image: built with the pinned toolchain, run from a distroless base
# (glibc, CA certificates, no shell). Build: `docker build -t capstan .`
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin capstan \
 && strip target/release/capstan

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/capstan /usr/local/bin/capstan
# Kubernetes runs it with the capabilities of deploy/kubernetes/capstan.yaml (NET_ADMIN,
# NET_BIND_SERVICE) and a read-only root filesystem: Capstan writes no files.
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["run"]
