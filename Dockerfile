FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY floodgate ./floodgate
COPY streams ./streams
COPY connectors ./connectors
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENTRYPOINT []
