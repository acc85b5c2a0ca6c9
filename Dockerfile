# webmacs server image. Runs `webmacs serve` as a non-root user.
# Default database: embedded SQLite in /data; set WEBMACS_DATABASE_URL for PostgreSQL/TimescaleDB
# (run `webmacs migrate` once against it, e.g. `docker run --rm ... webmacs migrate`).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WEBMACS_DATABASE_URL=sqlite:////data/webmacs.db

WORKDIR /opt/webmacs
COPY setup.py README.md alembic.ini ./
COPY webmacs ./webmacs
COPY migrations ./migrations
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /home/webmacs webmacs \
    && mkdir -p /data && chown webmacs:webmacs /data

USER webmacs
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import json,sys,urllib.request; r=urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4); sys.exit(0 if json.load(r)['status']=='ok' else 1)"

STOPSIGNAL SIGTERM
CMD ["webmacs", "serve", "--host", "0.0.0.0", "--port", "8000"]
