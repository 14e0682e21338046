"""The starter: HTTP API, CLI and the embedded dev stack that start operations on Temporal."""
