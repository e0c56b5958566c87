# The `meshcp` image: one image for `meshcp serve` (controller) and `meshcp inject`
# (injector); the Deployments in deploy/ pick the subcommand with `args`.
#
#   docker build -t meshcp:0.1.0 .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && rm -rf /build

# A fixed numeric UID so Kubernetes' runAsNonRoot can verify it (deploy/ runs as 65532).
RUN groupadd --system --gid 65532 meshcp \
    && useradd --system --uid 65532 --gid 65532 --home-dir /home/meshcp --create-home \
       --shell /usr/sbin/nologin meshcp

# The root file system is read-only in deploy/: never write bytecode at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532
WORKDIR /home/meshcp
# controller: xDS (gRPC) and HTTP; injector: HTTPS webhook
EXPOSE 15128 9091 9090
ENTRYPOINT ["meshcp"]
CMD ["--help"]
