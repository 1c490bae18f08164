"""The traffic inspector: session registry, live tail, traces, control socket, CLI client."""
