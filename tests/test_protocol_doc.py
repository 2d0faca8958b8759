"""docs/protocol.md must name every message type and record key the code puts on the wire."""

from pathlib import Path

from fedmmkt_strategy import protocol

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()


def test_every_protocol_name_is_documented():
    names = {k: v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str)}
    missing = sorted(f"{k} = {v!r}" for k, v in names.items() if f"`{v}`" not in DOC)
    assert not missing, f"docs/protocol.md does not mention: {missing}"
