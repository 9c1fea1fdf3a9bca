"""interstate: a service mesh whose control plane is Python and whose data plane is real Envoy.

Data flows one way (see DESIGN.md): mesh files -> config (decode, validate) -> model/index ->
compile (pure, per proxy) -> xds snapshots -> ADS server -> Envoy. The standalone supervisor
starts the processes; the CLI and admin API are the edges.
"""

__version__ = "0.1.0"
