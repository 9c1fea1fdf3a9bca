"""The ADS stream's bookkeeping without gRPC (`xds.sync`, issue 22): what a request is against a
stream's state, and the per-node sums that status reads. The protocol itself, against scripted
clients and real Envoys, is `test_xds_protocol.py` and `test_xds_envoy.py`."""

from __future__ import annotations

import subprocess
import sys

from interstate.xds import resources as rt
from interstate.xds.sync import Nack, Request, StreamState, TypeState, classify, node_syncs


def test_a_request_is_a_subscription_a_stale_one_a_re_request_an_ack_or_a_nack() -> None:
    ts = TypeState(nonce="3.7")
    assert classify(ts, "", has_error=False) is Request.SUBSCRIBE
    assert classify(ts, "", has_error=True) is Request.SUBSCRIBE  # no nonce: what it rejected is unknown
    assert classify(ts, "3.6", has_error=False) is Request.STALE
    assert classify(ts, "3.7", has_error=False) is Request.ACK
    assert classify(ts, "3.7", has_error=True) is Request.NACK
    ts.answered = True
    assert classify(ts, "3.7", has_error=False) is Request.RE_REQUEST
    assert classify(ts, "3.7", has_error=True) is Request.RE_REQUEST


def test_a_rejection_holds_for_its_version_only() -> None:
    ts = TypeState(nack=Nack("v2", "bad listener", 0.0))
    assert ts.rejected("v2") and not ts.rejected("v3")
    assert not TypeState().rejected("")


def test_node_syncs_sum_streams_per_node_and_list_subscribed_types_only() -> None:
    one, two, other = StreamState(node_id="a"), StreamState(node_id="a"), StreamState(node_id="b")
    one.types[rt.CLUSTER].subscribed = True
    one.types[rt.CLUSTER].sent = ("v1", None)
    one.types[rt.CLUSTER].acked = "v1"
    syncs = node_syncs([one, two, other])
    assert syncs["a"].streams == 2 and syncs["b"].streams == 1
    assert list(syncs["a"].types) == [rt.SHORT[rt.CLUSTER]]
    assert (syncs["a"].types["CDS"].sent, syncs["a"].types["CDS"].acked) == ("v1", "v1")
    assert syncs["b"].types == {}


def test_status_and_the_dashboard_import_no_grpc() -> None:
    code = "import sys, interstate.core.status, interstate.api.dashboard; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
