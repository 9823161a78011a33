"""zerosearch: train LLMs to search with RL while a simulation LLM plays the search engine."""

__version__ = "0.1.0"
