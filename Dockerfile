# The feedbackloop services (stream worker, sink, web) for docker-compose.yml.
FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY feedbackloop ./feedbackloop
RUN pip install --no-cache-dir ".[stream,sinks,analysis,web]"
ENV FEEDBACKLOOP_DATA_DIR=/var/lib/feedbackloop
ENTRYPOINT ["feedbackloop"]
