"""Reward refresh rounds: the reward model re-learns from the policy's own replies between GRPO runs."""
