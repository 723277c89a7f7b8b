"""safealign: multi-objective GRPO alignment for safety and helpfulness."""

__version__ = "0.1.0"
