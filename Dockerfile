# Python Hello Printer: the service image the compose stack runs (docker compose build, or make up).
#   docker build --build-arg COMMIT="$(git rev-parse HEAD)" -t hello-world .
#   docker run -p 80:80 hello-world
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# A system user without a login or home; it owns only run/ (pidfile, logs, metric textfiles).
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin hello \
    && mkdir -p /app/run \
    && chown hello:hello /app/run

# The code (.dockerignore keeps out .git, .venv, backups, run, tests and caches).
COPY . .

# /version reports HELLO_COMMIT when there is no .git (there is none in the image). Set late: a new
# commit rebuilds only this layer, not the dependencies.
ARG COMMIT=unknown
# A RUN that reads the argument puts its value in the layer cache's key under podman too: there (buildah, podman
# 4.3) an `ENV X=${COMMIT}` layer built from another commit is reused, and /version reports the old commit.
RUN test -n "${COMMIT}"
ENV HELLO_COMMIT=${COMMIT}

USER 10001:10001

# Port 80 as a non-root user: Docker 20.10+ sets net.ipv4.ip_unprivileged_port_start=0 in a container's
# network namespace, so no capability is needed (docker-compose.yml also sets it explicitly).
EXPOSE 80

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:80/healthz', timeout=4)"]

CMD ["python", "hello_world.py", "--host", "0.0.0.0", "--port", "80"]
