# rayhead in the Ray image: ENTRYPOINT ["rayhead", "run"], with KubeRay keeping the
# command thanks to the pod annotation ray.io/overwrite-container-cmd: "true".
ARG RAY_IMAGE=rayproject/ray:2.60.0

# Build stage. The binary links glibc dynamically (everything else is static Rust). The Ray
# image is Ubuntu 22.04 with glibc 2.35; a binary runs on any glibc at least as new as the one
# it was built against, so it is built on Debian bullseye (glibc 2.31), not on bookworm (2.36),
# whose binaries would fail to load there with "GLIBC_2.36 not found".
FROM rust:1-bullseye AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked && strip target/release/rayhead

FROM ${RAY_IMAGE}
COPY --from=build /src/target/release/rayhead /usr/local/bin/rayhead
COPY config/rayhead.toml /etc/rayhead/rayhead.toml
# The Ray image's own non-root user.
USER ray
ENTRYPOINT ["rayhead", "run"]
