"""The header allow-list at the mesh boundary: into the ingress, and out to ExternalServices.

Envoy has no native "remove every header but these", so a small Lua filter does it where
requests cross the boundary, and only there (the ingress listener; on side-cars, only the routes
to ExternalServices and passed-through hosts), leaving calls inside the mesh free of its cost.
It removes each header that is not allowed and records every removed *name* (never values; each
cut to `MAX_NAME_LEN`; the ingress admits at most `limits.MAX_HEADERS_COUNT` headers a request,
a side-car `limits.INBOUND_MAX_HEADERS_COUNT`, so the list is bounded, and no name can be hidden
behind others) in the request's dynamic metadata; the access log carries them as `stripped`,
and the control plane counts them per name (`telemetry.boundary`). `x-envoy-*` and
`x-forwarded-client-cert` are never allowed in.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from interstate.compile.common import pack
from interstate.model.index import MeshIndex

FILTER = "envoy.filters.http.lua"
METADATA_NAMESPACE = "interstate.boundary"
METADATA_KEY = "stripped"
ACCESS_LOG_FIELD = f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{METADATA_KEY})%"
SOURCE_NAME = "boundary"
MAX_NAME_LEN = 64

_SCRIPT = """
local allowed = {%(names)s}
local prefixes = {%(prefixes)s}
local function ok(name)
  if allowed[name] or string.sub(name, 1, 1) == ":" then return true end
  for i = 1, #prefixes do
    if string.sub(name, 1, #prefixes[i]) == prefixes[i] then return true end
  end
  return false
end
function envoy_on_request(handle)
  local headers = handle:headers()
  local strip, seen = {}, {}
  for name, _ in pairs(headers) do
    if not seen[name] and not ok(name) then
      seen[name] = true
      strip[#strip + 1] = name
    end
  end
  if #strip == 0 then return end
  local shown = {}
  for i = 1, #strip do
    headers:remove(strip[i])
    shown[i] = string.sub(strip[i], 1, %(max_len)d)
  end
  handle:streamInfo():dynamicMetadata():set("%(namespace)s", "%(key)s", table.concat(shown, ","))
end
"""


def _lua_string(text: str) -> str:
    # header names are [a-z0-9-] (validated), so quoting needs no escapes
    return '"' + text + '"'


def script(names: frozenset[str], prefixes: tuple[str, ...]) -> str:
    return _SCRIPT % {
        "names": ", ".join(f"[{_lua_string(n)}] = true" for n in sorted(names)),
        "prefixes": ", ".join(_lua_string(p) for p in prefixes),
        "max_len": MAX_NAME_LEN,
        "namespace": METADATA_NAMESPACE,
        "key": METADATA_KEY,
    }


def filter_for(index: MeshIndex, everywhere: bool) -> hcm_pb2.HttpFilter | None:
    """The allow-list filter, or None when the Mesh allows every header. `everywhere`: on every
    route (the ingress); otherwise off unless a route turns it on (`enable_on`)."""
    allowed = index.boundary_headers
    if allowed is None:
        return None
    code = script(*allowed)
    lua = lua_pb2.Lua(source_codes={SOURCE_NAME: {"inline_string": code}})
    if everywhere:
        lua.default_source_code.inline_string = code
    return hcm_pb2.HttpFilter(name=FILTER, typed_config=pack(lua), disabled=not everywhere)


def enable_on(index: MeshIndex, vhost: rc.VirtualHost) -> None:
    """Turn the (off by default) allow-list filter on for the routes of `vhost`."""
    if index.boundary_headers is None:
        return
    on = rc.FilterConfig(config=pack(lua_pb2.LuaPerRoute(name=SOURCE_NAME)), disabled=False)
    vhost.typed_per_filter_config[FILTER].CopyFrom(pack(on))
