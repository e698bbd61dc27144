# The latchkey image: a statically linked release build on distroless/static
# (no shell, no libc, no package manager), run as the non-root user 65532.
# The build stage runs e2e/build-static, the same script e2e/image-check runs
# to prove that the binary starts with nothing but what this image holds.
#
#   docker build -t latchkey:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN e2e/build-static && cp target/x86_64-unknown-linux-gnu/release/latchkey /latchkey

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /latchkey /latchkey
USER 65532:65532
# The auth server's HTTP port and the admission webhook's TLS port.
EXPOSE 8080 8443
ENTRYPOINT ["/latchkey"]
CMD ["--help"]
