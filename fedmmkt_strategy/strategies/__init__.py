"""The strategies a run can use, one module each: `fedmmkt` (the paper's method), the baselines
`local`, `fedavg`, `fedmd`, `creamfl`, `self_ft`, their shared `base`, and `factory`, which builds
one from a validated run config."""
