"""Threads are pinned where work runs, never at import: the simulation engine imports the
ClientApp inside the process that runs the ServerApp, which must keep every core."""

import subprocess
import sys

import torch
from flwr.app import Context, Message, RecordDict

from client_app.app import pin_threads
from fedmmkt_strategy.runs.inprocess import ensure_task_identity
from fedmmkt_strategy.runs.runner import use_server_threads


def test_importing_the_client_app_leaves_the_process_threads_alone():
    code = "import torch; torch.set_num_threads(2); import client_app.app; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_client_threads_pin_one_message_and_are_restored():
    ensure_task_identity()
    before = torch.get_num_threads()
    seen = []

    def handler(msg, context):
        seen.append(torch.get_num_threads())
        return msg

    message = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    for threads in (1, 0):
        context = Context(
            run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={"client-threads": threads}
        )
        pin_threads(message, context, handler)
        assert torch.get_num_threads() == before
    assert seen == [1, before]


def test_server_threads_follow_the_knob():
    before = torch.get_num_threads()
    try:
        use_server_threads(1)
        assert torch.get_num_threads() == 1
        use_server_threads(0)  # 0 keeps what the process has
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
