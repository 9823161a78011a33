"""Policy and simulator generation.

- :mod:`~zerosearch.generation.kv`: ``KVDecoder``, batched multi-turn sampling with an in-place KV cache;
- :mod:`~zerosearch.generation.guard`: the noisy guard's decoding constraint (strings a row must not spell);
- :mod:`~zerosearch.generation.hf`: ``HFGenerator`` and ``load_policy``, the in-process policy generator;
- :mod:`~zerosearch.generation.trl_vllm`: generation through TRL's vLLM integration (GPU training);
- :mod:`~zerosearch.generation.endpoint`: a policy served behind an OpenAI ``/v1/completions`` server.
"""
