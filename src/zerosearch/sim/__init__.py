"""Simulation tuning: build a simulation LLM from a real engine and measure its fidelity."""
