# dwcp agent image, for machines with the internet (`deno compile` downloads denort).
#   docker build -t dwcp . && docker run --rm -p 7700:7700 -p 7701:7701 dwcp
# The build stage installs what scripts/setup.sh needs (Node and npm from Debian), runs it, and compiles
# one binary with the C shim embedded; the runtime stage holds that binary, ONNX Runtime and the shared
# libraries libdwcp links against.

FROM debian:bookworm AS build
RUN apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    ca-certificates debian-archive-keyring nodejs npm \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Drop anything built on the host: setup.sh and make would take a copied .tools/ or stale objects as done.
RUN rm -rf .tools node_modules dwcp-bin c-shim/*.o c-shim/libdwcp.so \
  && bash scripts/setup.sh
# The "compile" task of deno.json: deno compile --allow-all --include c-shim/libdwcp.so --output dwcp-bin main.ts
RUN PATH="$PWD/.tools/node_modules/.bin:$PATH" deno task compile

FROM debian:bookworm-slim
RUN apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libzstd1 liblz4-1 libsnappy1v5 libxxhash0 libibverbs1 qemu-system-x86 \
  && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/dwcp-bin /usr/local/bin/dwcp
# Optional: the forecaster's ONNX Runtime. Without it the agent runs and reports the capability as absent.
COPY --from=build /src/.tools/onnxruntime/lib/libonnxruntime.so.1 /usr/local/lib/dwcp/libonnxruntime.so.1
ENV DWCP_ORT_PATH=/usr/local/lib/dwcp/libonnxruntime.so.1
# The API listens on 127.0.0.1 unless told otherwise; to publish it, run with
#   -e DWCP_API=0.0.0.0:7700 -e DWCP_TOKEN=<16+ characters> (a token is required off loopback).
EXPOSE 7700 7701
ENTRYPOINT ["/usr/local/bin/dwcp", "agent"]
