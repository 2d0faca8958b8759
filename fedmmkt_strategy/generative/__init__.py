"""The server's generative stack: text-to-image model `G`, captioner `B`, the judge that rates `G`,
the synthetic set of each round, and the one-off pre-training of the toy world's models.

Modules: `t2i`, `captioner`, `judge`, `quality`, `synthesis`, `pretrain` (and `loading`, the
shared "local folder or hub id" error handling).
"""
