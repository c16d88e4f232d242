"""skein.data: binidx shards, tokenizers, `skein prepare`, and the resumable samplers."""
