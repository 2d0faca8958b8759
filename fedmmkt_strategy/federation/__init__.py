"""The Flower plumbing of a round, the same for every strategy: node sampling (`sampling`),
per-phase timeouts (`timeouts`), reply checks (`replies`, `validation`), bytes on the wire
(`accounting`), the SecAgg+ session (`secure_round`) and the checkpoint a resumed run starts
from (`checkpoint`)."""
