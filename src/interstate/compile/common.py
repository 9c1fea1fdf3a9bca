"""Small protobuf helpers shared by the per-type builders: durations, ADS config source, Any."""

from __future__ import annotations

from datetime import timedelta

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message


def duration(value: timedelta | float) -> duration_pb2.Duration:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def pack(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic: the packed bytes are opaque to the outer serializer, and map fields (the
    # access log's Struct) would otherwise come out in a per-process order, changing the
    # content-hashed LDS version at every control-plane restart.
    out.Pack(message, deterministic=True)
    return out
