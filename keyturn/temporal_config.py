"""Where and how to reach Temporal: Temporal's own environment configuration, Keyturn's on top.

``temporalio.envconfig`` reads a profile (``TEMPORAL_PROFILE``, else ``default``) from the TOML
file named by ``TEMPORAL_CONFIG_FILE`` (or the default place,
``~/.config/temporalio/temporal.toml``) and the ``TEMPORAL_*`` variables over it (address,
namespace, API key, TLS with its certificates, gRPC metadata), as every Temporal tool does. Each
``KEYTURN_TEMPORAL_*`` setting that is set wins over them. An API key implies TLS unless TLS is
explicitly turned off; with nothing configured Keyturn reaches the local dev server.
"""

from __future__ import annotations

from temporalio.envconfig import ClientConfig, ClientConnectConfig

DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"

__all__ = ["ClientConnectConfig", "temporal_connection"]


def temporal_connection(
    profile: str | None,
    *,
    address: str | None = None,
    namespace: str | None = None,
    api_key: str | None = None,
    tls: bool | None = None,
) -> ClientConnectConfig:
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", DEFAULT_ADDRESS)
    config.setdefault("namespace", DEFAULT_NAMESPACE)
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    if api_key:
        config["api_key"] = api_key
        if tls is None and not config.get("tls"):
            config["tls"] = True
    if tls is False:
        config["tls"] = False
    elif tls and not config.get("tls"):
        config["tls"] = True  # the profile's own TLS settings (certificates), if any, stay
    return config
