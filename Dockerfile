# Tollgate image: the `tollgate` CLI (collector-processor + billing-api), used by docker-compose.yml for
# the tollgate-processor and tollgate-api services (same image, different --roles) and, with another
# entrypoint, for the example MCP server (otel-config/example-mcp-server.mjs).
#
#   docker build -t tollgate .
#   docker run --rm tollgate start --roles processor ...
#
# linux/amd64 only for now: package-lock.json pins chDB's linux-x64-gnu engine, which
# collector-processor imports at start even in ClickHouse-server mode (docker-compose.yml sets
# `platform: linux/amd64`).
FROM node:20-bookworm-slim

WORKDIR /app

# Dependencies first, from the lockfile only, so source edits do not invalidate this layer. Dev
# dependencies are kept on purpose: TypeScript builds the image, and the example MCP server uses
# @modelcontextprotocol/sdk (a root devDependency).
COPY package.json package-lock.json ./
COPY contracts/package.json contracts/
COPY collector-processor/package.json collector-processor/
COPY billing-api/package.json billing-api/
COPY instrumentation/package.json instrumentation/
RUN npm ci --no-audit --no-fund

# Sources (.dockerignore keeps dist/, *.tsbuildinfo, node_modules and tests out), then the build:
# tsc -b emits collector-processor/dist/cli/main.js next to collector-processor/{defaults,lua,migrations,proto}.
COPY . .
RUN npm run build \
 && mkdir -p /var/lib/tollgate \
 && chown node:node /var/lib/tollgate

ENV NODE_ENV=production \
    TOLLGATE_DATA_DIR=/var/lib/tollgate

# Spool (write-ahead log of acknowledged exports), instance id, plan snapshots: must survive restarts.
VOLUME ["/var/lib/tollgate"]

USER node

# OTLP/HTTP and OTLP/gRPC receivers (processor role) and HTTP API (api role); see
# collector-processor/src/config/settings.ts.
EXPOSE 4318 4317 8080

ENTRYPOINT ["node", "collector-processor/bin/tollgate.js"]
CMD ["start"]
