"""The offline auditor: replays a signed ledger on a CPU and trusts nothing the engine says."""
