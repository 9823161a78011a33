"""Use zerosearch inside someone else's training stack (TRL today).

- :mod:`~zerosearch.integrations.trl_env`: a search environment for ``GRPOTrainer(environment_factory=...)``
  (tool-calling models; TRL masks the tool results out of the loss);
- :mod:`~zerosearch.integrations.trl_rollout`: our multi-turn ``<search>`` rollout as a
  ``rollout_func`` for a vanilla ``GRPOTrainer``.
"""
