# rayhead in two images, from one static binary (musl: no loader, no shared library):
#
#   docker build -t rayhead:2.60.0 .                            the Ray image with rayhead added,
#       ENTRYPOINT ["rayhead", "run"] (config/ray-cluster.rayhead.yaml)
#   docker build --target carrier -t rayhead-carrier:0.1.0 .    the binary alone, FROM scratch,
#       for an init container that copies it into any Ray image's pod
#       (config/ray-cluster.rayhead-init.yaml): no rebuild per Ray version
#
# podman build takes the same arguments. For arm64, add `--platform linux/arm64`: the build
# stage runs on the build machine's own architecture and cross-compiles, so no emulator is
# needed. The carrier is then done; the Ray image needs Ray's arm64 tag too, which Ray
# publishes apart (`-aarch64`):
#   docker build --platform linux/arm64 --build-arg RAY_IMAGE=rayproject/ray:2.60.0-aarch64 \
#       -t rayhead:2.60.0-aarch64 .
ARG RAY_IMAGE=rayproject/ray:2.60.0

# Build stage: the static binary, as `make dist` builds it (same pinned tools as the Makefile).
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /zig \
    && /zig/bin/pip install --quiet 'ziglang==0.13.0' 'cargo-zigbuild==0.20.1' \
    && rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "rayhead is built for amd64 and arm64, not ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && PATH=/zig/bin:$PATH cargo zigbuild --release --locked --target "$target" \
    && cp "target/$target/release/rayhead" /rayhead

# The carrier: nothing but the binary, as a non-root user. Its init container runs
# `/rayhead install DEST` into an emptyDir (which Kubernetes makes writable by all).
FROM scratch AS carrier
COPY --from=build /rayhead /rayhead
USER 65532:65532

# The default: the Ray image with rayhead.
FROM ${RAY_IMAGE}
COPY --from=build /rayhead /usr/local/bin/rayhead
COPY config/rayhead.toml /etc/rayhead/rayhead.toml
# The Ray image's own non-root user.
USER ray
ENTRYPOINT ["rayhead", "run"]
