# rayhead in two images, from one portable binary:
#
#   docker build -t rayhead:2.60.0 .                            the Ray image with rayhead added,
#       ENTRYPOINT ["rayhead", "run"] (config/ray-cluster.rayhead.yaml)
#   docker build --target carrier -t rayhead-carrier:0.1.0 .    the binary alone, FROM scratch,
#       for an init container that copies it into any Ray image's pod
#       (config/ray-cluster.rayhead-init.yaml): no rebuild per Ray version
ARG RAY_IMAGE=rayproject/ray:2.60.0

# Build stage: the portable binary, as `make dist` builds it. cargo-zigbuild links against
# glibc 2.17's symbols, so it loads on every Ray image, UBI 8 and Amazon Linux 2, whatever
# glibc this stage has. Same pinned tools as the Makefile.
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /zig \
    && /zig/bin/pip install --quiet 'ziglang==0.13.0' 'cargo-zigbuild==0.20.1'
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN PATH=/zig/bin:$PATH cargo zigbuild --release --locked --target x86_64-unknown-linux-gnu.2.17 \
    && strip target/x86_64-unknown-linux-gnu/release/rayhead

# The carrier: nothing but the binary. Its init container runs `/rayhead install DEST`.
FROM scratch AS carrier
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/rayhead /rayhead

# The default: the Ray image with rayhead.
FROM ${RAY_IMAGE}
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/rayhead /usr/local/bin/rayhead
COPY config/rayhead.toml /etc/rayhead/rayhead.toml
# The Ray image's own non-root user.
USER ray
ENTRYPOINT ["rayhead", "run"]
