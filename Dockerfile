# One image for every role: `ferry api` (the default), `ferry worker`, `ferry beat`, `ferry migrate`.
#   docker build -t ferry .        docker run --env-file ferry.env ferry [api|worker|beat|migrate]
# The dependency layer is built from pyproject.toml alone, so a code change rebuilds only the last layers.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the engine's record splice (workers/engine/_splice.c); the final image holds only its build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/ferry
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /opt/ferry/bin/pip install -r requirements.txt
COPY README.md LICENSE setup.py ./
COPY api ./api
COPY cli ./cli
COPY models ./models
COPY migrations ./migrations
COPY workers ./workers
RUN /opt/ferry/bin/pip install --no-deps . && /opt/ferry/bin/ferry --version

FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="Ferry" \
      org.opencontainers.image.description="Kafka cluster-to-cluster replication with an MSK Replicator compatible API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ferry-replication/ferry"
ENV PATH=/opt/ferry/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FERRY_WORKER_LIVENESS_FILE=/tmp/ferry-worker.live FERRY_LOG_FORMAT=json
COPY --from=build /opt/ferry /opt/ferry
RUN useradd --system --uid 10001 --home-dir /home/ferry --create-home ferry
USER 10001
WORKDIR /home/ferry
EXPOSE 8080
# Checks whichever role this container runs: the API's /livez, a worker's liveness file, beat's process.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 CMD ["ferry", "healthcheck"]
ENTRYPOINT ["ferry"]
CMD ["api"]
