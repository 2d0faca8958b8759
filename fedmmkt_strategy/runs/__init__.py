"""What drives one run: the ServerApp's round loop (`runner`, used by `server_app/` under
`flwr run`) and the same ServerApp and ClientApps in one process without Ray (`inprocess`, used by
`fedmmkt compare`, the experiments and the tests)."""
