# syntax=docker/dockerfile:1
# tracehook: the one binary in a small, non-root image.
#   docker build -t tracehook/tracehook:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build directory across builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tracehook \
 && cp target/release/tracehook /tracehook

# distroless/cc: glibc and CA roots, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tracehook /usr/local/bin/tracehook
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/tracehook"]
CMD ["serve"]
