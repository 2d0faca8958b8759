"""The `fedmmkt` command (`main`) and what only it uses: `pretrain` (build the toy server models),
`compare` (strategies side by side), `deploy` (SuperLink and SuperNodes as real processes) and
`pki` (their certificates and node keys)."""
